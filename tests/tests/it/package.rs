//! The Debian package: `packaging/build-deb.sh` builds it with cargo-deb
//! (from this build's binaries), dpkg installs it into a scratch root (the
//! machine's own /usr stays untouched), and what it installed works: the
//! four programs, their manual pages, lbctl's completions, the units and
//! their /etc/default files — the controller started with the installed
//! defaults serves, and the installed lbctl reaches it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use lb_testkit::{require, wait_for, which};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `KEY=VALUE` lines of an /etc/default file.
fn defaults(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deb_installs_the_fabric_and_its_controller_serves() {
    if !require(
        which("cargo-deb").is_some() && which("dpkg").is_some(),
        "cargo-deb (cargo install --locked cargo-deb) and dpkg",
    ) {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = run(Command::new(repo.join("packaging/build-deb.sh")).arg("dev"));
    let deb = repo.join(built.trim());
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/lb-controller",
        "./usr/bin/lb-director",
        "./usr/bin/lb-realserver",
        "./usr/bin/lbctl",
        "./lib/systemd/system/lbfabric-controller.service",
        "./lib/systemd/system/lbfabric-director.service",
        "./lib/systemd/system/lbfabric-realserver.service",
        "./etc/default/lbfabric-controller",
        "./etc/default/lbfabric-director",
        "./etc/default/lbfabric-realserver",
        "./usr/share/man/man1/lb-controller.1.gz",
        "./usr/share/man/man1/lb-director.1.gz",
        "./usr/share/man/man1/lb-realserver.1.gz",
        "./usr/share/man/man1/lbctl.1.gz",
        "./usr/share/bash-completion/completions/lbctl",
        "./usr/share/zsh/vendor-completions/_lbctl",
        "./usr/share/fish/vendor_completions.d/lbctl.fish",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} not in the package:\n{listing}"
        );
    }
    let name = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Package"));
    assert_eq!(name.trim(), "lbfabric");

    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    lb_testkit::package::install(&deb, r).unwrap();
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .args(["-s", "lbfabric"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    // The /etc/default files are conffiles: an upgrade keeps the operator's.
    let conf = std::fs::read_to_string(r.join("var/lib/dpkg/info/lbfabric.conffiles")).unwrap();
    assert!(conf.contains("/etc/default/lbfabric-controller"), "{conf}");

    for program in ["lb-controller", "lb-director", "lb-realserver", "lbctl"] {
        let version = run(Command::new(r.join("usr/bin").join(program)).arg("--version"));
        assert!(version.starts_with(program), "{version}");
        let man = run(Command::new("sh").arg("-c").arg(format!(
            "zcat {}/usr/share/man/man1/{program}.1.gz",
            r.display()
        )));
        assert!(
            man.contains(".SH OPTIONS"),
            "{program}'s manual page:\n{man}"
        );
    }
    let unit =
        std::fs::read_to_string(r.join("lib/systemd/system/lbfabric-controller.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/lb-controller"), "{unit}");
    assert!(
        unit.contains("EnvironmentFile=-/etc/default/lbfabric-controller"),
        "{unit}"
    );

    // The installed controller with the installed defaults, as the unit
    // starts it (its data and ports moved into the test's directory).
    let data = root.path().join("lbfabric");
    let addr_file = root.path().join("addr");
    let mut controller = lb_testkit::proc::Proc(
        Command::new(r.join("usr/bin/lb-controller"))
            .envs(defaults(&r.join("etc/default/lbfabric-controller")))
            .env("LB_DATA_DIR", &data)
            .env("LB_LISTEN", "127.0.0.1:0")
            .env("LB_METRICS_LISTEN", "127.0.0.1:0")
            .env("LB_ADDR_FILE", &addr_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = wait_for(
        Duration::from_secs(30),
        "the installed controller",
        || async { std::fs::read_to_string(&addr_file).ok() },
    )
    .await
    .unwrap();
    let lbctl = r.join("usr/bin/lbctl");
    let answer = wait_for(Duration::from_secs(30), "lbctl status", || async {
        let out = Command::new(&lbctl)
            .args(["--controller", addr.trim(), "status"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .unwrap();
    assert!(answer.contains("revision"), "{answer}");
    assert!(
        matches!(controller.0.try_wait(), Ok(None)),
        "the controller exited"
    );
}
