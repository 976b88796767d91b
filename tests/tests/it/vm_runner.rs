//! The VM runner from the host: a command's exit status and output come back
//! intact, a failing test inside the VM fails the run, and a guest kernel
//! panic boots a fresh VM, a bounded number of times.

use std::path::PathBuf;
use std::process::Command;

use lb_testkit::{bin, require, vm};

fn vm_ready() -> bool {
    let missing = vm::missing_prerequisites();
    require(
        missing.is_empty(),
        &format!("the VM test bed ({})", missing.join(", ")),
    )
}

fn run_in_vm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("lb-vm"))
        .args(["run", "--timeout", "300", "--"])
        .args(args)
        .output()
        .expect("running lb-vm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The newest build of the `vm` integration test binary.
fn vm_test_binary() -> PathBuf {
    let deps = bin("lb-vm").parent().expect("target dir").join("deps");
    std::fs::read_dir(&deps)
        .expect("target/<profile>/deps")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("vm-") && !name.contains('.')
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("the vm test binary (cargo test --no-run -p lb-testkit --test vm)")
}

#[test]
fn exit_status_and_output_come_back_intact() {
    if !vm_ready() {
        return;
    }
    let (code, out, err) = run_in_vm(&[
        "/bin/sh",
        "-c",
        "echo out-marker $(uname -r); echo err-marker >&2; exit 7",
    ]);
    assert_eq!(code, 7, "stdout: {out}\nstderr: {err}");
    let kernel = vm::find_kernel().expect("kernel");
    assert_eq!(out.trim(), format!("out-marker {kernel}"));
    assert!(err.contains("err-marker"), "{err}");
}

#[test]
fn a_failing_test_inside_the_vm_fails_the_run() {
    if !vm_ready() {
        return;
    }
    let test = vm_test_binary();
    let test = test.to_str().expect("path");
    let (code, out, err) = run_in_vm(&[test, "--ignored", "--exact", "meta::fails_on_purpose"]);
    assert_eq!(code, 101, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("test meta::fails_on_purpose ... FAILED"),
        "{out}"
    );
    assert!(out.contains("stdout from inside the VM"), "{out}");
    assert!(
        out.contains("deliberate failure inside the VM")
            || err.contains("deliberate failure inside the VM"),
        "{out}\n{err}"
    );
    assert!(out.contains("test result: FAILED"), "{out}");
}

/// A scratch directory on the workspace share, which the guest writes through.
fn shared_scratch(name: &str) -> PathBuf {
    let dir = bin("lb-vm")
        .parent()
        .expect("target dir")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn a_guest_kernel_panic_runs_the_command_again_in_a_fresh_vm() {
    if !vm_ready() {
        return;
    }
    // The first boot crashes its kernel (sysrq "c") after leaving a mark on
    // the share; the second finds the mark and exits normally.
    let dir = shared_scratch("vm-panic-once");
    let mark = dir.join("first-boot");
    let script = format!(
        "if [ -e {m} ]; then echo second-boot; exit 7; fi; touch {m}; sync; \
         echo c > /proc/sysrq-trigger; sleep 60",
        m = mark.display()
    );
    let (code, out, err) = run_in_vm(&["/bin/sh", "-c", &script]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 7, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "second-boot", "{err}");
    assert!(
        err.contains("the guest kernel panicked (attempt 1 of 3)") && err.contains("sysrq"),
        "{err}"
    );
}

#[test]
fn a_kernel_that_panics_every_time_fails_the_run_after_three_boots() {
    if !vm_ready() {
        return;
    }
    // Each boot leaves a file of its own: appending to one file from
    // successive guests lost a line to the 9p share's cached size (CI).
    let dir = shared_scratch("vm-panic-always");
    let script = format!(
        "touch {d}/boot-$(cat /proc/sys/kernel/random/uuid); sync; \
         echo c > /proc/sysrq-trigger; sleep 60",
        d = dir.display()
    );
    let (code, out, err) = run_in_vm(&["/bin/sh", "-c", &script]);
    let booted = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 125, "stdout: {out}\nstderr: {err}");
    assert_eq!(booted, 3, "{err}");
    assert!(err.contains("panicked in all 3 attempts"), "{err}");
}
