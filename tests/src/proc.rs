//! Child processes a test owns: killed when dropped, also when the test
//! fails, and signalled by PID.

/// A child process killed (SIGKILL) when dropped, also when the test fails.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // A frozen process must be thawed to die promptly.
            signal(self.0.id(), "CONT");
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Sends `sig` (e.g. "STOP", "CONT") to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}
