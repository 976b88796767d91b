//! The Debian package in tests: installed with dpkg into a scratch root, so
//! the machine's (or the VM's read-only) /usr stays untouched and the
//! installed files are used where they landed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Installs `deb` into the scratch root `root` (created if needed).
pub fn install(deb: &Path, root: &Path) -> anyhow::Result<()> {
    for d in ["var/lib/dpkg/updates", "var/lib/dpkg/info", "var/log"] {
        std::fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "")?;
    // --force-depends: the scratch root has no libc or nftables package.
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--force-script-chrootless", "-i"])
        .arg(deb)
        .output()
        .context("running dpkg")?;
    anyhow::ensure!(
        out.status.success(),
        "dpkg -i {}: {}{}",
        deb.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The package `scripts/vm-test.sh` built for the VM (`LB_DEB`), if any.
pub fn built() -> Option<PathBuf> {
    std::env::var_os("LB_DEB")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}
