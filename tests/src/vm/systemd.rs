//! systemd as the guest's PID 1, for tests of lbfabric's own units
//! (`Restart=always`, `Type=notify`, `RuntimeDirectory=`, the sandboxing)
//! under a real service manager. The host's systemd boots from the
//! read-only 9p root; only what the test unit pulls in starts (no
//! default.target, so no getty, udev or journald). The writable places the
//! units need are tmpfs: /run (the units, the runtime directory) and /tmp
//! from the init script, and /var/lib here (`StateDirectory=`).
//!
//! `lb-vm guest` (PID 1) writes `lb-vm-run.service`, whose command is
//! `lb-vm guest-run RUN_DIR` (the same runner as without systemd: the
//! request, its status, power off), and execs systemd with it as the unit
//! to start.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// Where tests put units: systemd's runtime unit directory.
pub const UNIT_DIR: &str = "/run/systemd/system";

/// Replaces PID 1 with systemd; returns only on failure.
pub fn boot(run_dir: &Path) -> anyhow::Error {
    match prepare(run_dir) {
        Ok(()) => Command::new("/lib/systemd/systemd")
            .args([
                "--unit=lb-vm-run.service",
                "--show-status=no",
                "--log-target=console",
                "--log-level=warning",
            ])
            .exec()
            .into(),
        Err(e) => e,
    }
}

fn prepare(run_dir: &Path) -> anyhow::Result<()> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", "/var/lib"])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .status()
        .context("mount")?
        .success();
    anyhow::ensure!(ok, "mounting a tmpfs on /var/lib");
    let guest = std::env::current_exe().context("locating lb-vm")?;
    std::fs::create_dir_all(UNIT_DIR).with_context(|| format!("creating {UNIT_DIR}"))?;
    let unit = format!(
        "[Unit]\nDescription=lb-vm: the test command\n\n\
         [Service]\nType=exec\nExecStart={} guest-run {}\n",
        guest.display(),
        run_dir.display()
    );
    std::fs::write(Path::new(UNIT_DIR).join("lb-vm-run.service"), unit)
        .context("writing lb-vm-run.service")
}

/// True when systemd is PID 1 (the test bed booted with `--systemd`).
pub fn is_pid1() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// `systemctl ARGS`: its output, or an error with what it said.
pub fn systemctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("running systemctl")?;
    anyhow::ensure!(
        out.status.success(),
        "systemctl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One property of `unit` (`systemctl show -p NAME --value`).
pub fn property(unit: &str, name: &str) -> anyhow::Result<String> {
    Ok(systemctl(&["show", unit, "-p", name, "--value"])?
        .trim()
        .to_string())
}

/// The unit's main process, while it has one.
pub fn main_pid(unit: &str) -> Option<u32> {
    property(unit, "MainPID")
        .ok()
        .and_then(|p| p.parse().ok())
        .filter(|&p| p != 0)
}

/// What the journal holds of `unit` (journald runs on demand: the units
/// log to it, which pulls in its socket).
pub fn journal(unit: &str) -> String {
    Command::new("journalctl")
        .args(["-u", unit, "--no-pager", "-o", "short-monotonic"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("journalctl: {e}"))
}

/// Installs the package's `unit` (from the scratch root `root`, see
/// `lb_testkit::package`) as it would be installed in /lib/systemd/system,
/// with a drop-in that points ExecStart at the scratch root's `program`
/// and adds `settings` (`[Service]` lines), then reloads systemd.
pub fn install_unit(
    root: &Path,
    unit: &str,
    program: &str,
    settings: &[String],
) -> anyhow::Result<()> {
    let packaged = root.join("lib/systemd/system").join(unit);
    let text = std::fs::read_to_string(&packaged)
        .with_context(|| format!("reading {}", packaged.display()))?;
    let exec = format!("ExecStart=/usr/bin/{program}\n");
    anyhow::ensure!(text.contains(&exec), "{unit} does not start {program}");
    std::fs::write(Path::new(UNIT_DIR).join(unit), &text)?;
    let dropins = Path::new(UNIT_DIR).join(format!("{unit}.d"));
    std::fs::create_dir_all(&dropins)?;
    let mut dropin = format!(
        "[Service]\nExecStart=\nExecStart={}\n",
        root.join("usr/bin").join(program).display()
    );
    for line in settings {
        dropin.push_str(line);
        dropin.push('\n');
    }
    std::fs::write(dropins.join("test.conf"), dropin)?;
    systemctl(&["daemon-reload"]).map(drop)
}
