//! The Debian package under a real systemd: the VM test bed booted with
//! systemd as PID 1 (`lb-vm run --systemd`, the second pass of
//! scripts/vm-test.sh, which also builds the package and names it in
//! LB_DEB). The package is installed with dpkg into a scratch root under
//! /run (the VM's root is the host's, read-only), and its own unit files
//! and /etc/default files are what systemd starts; a drop-in only points
//! ExecStart at the scratch root and adds the test's settings.
//!
//! Run anywhere else, each test skips — or fails under
//! LB_REQUIRE_PRIVILEGED_TESTS=1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lb_testkit::fabric::unit::DIRECTOR_UNIT;
use lb_testkit::fabric::*;
use lb_testkit::proc::signal;
use lb_testkit::vm::systemd::{install_unit, is_pid1, journal, main_pid, property, systemctl};
use lb_testkit::{require, wait_for};

/// The installed package's scratch root, or None when the test may not run.
fn installed(name: &str) -> Option<PathBuf> {
    let deb = lb_testkit::package::built();
    if !require(
        lb_testkit::vm::in_vm() && is_pid1() && deb.is_some(),
        "the VM booted with systemd and LB_DEB (run through scripts/vm-test.sh)",
    ) {
        return None;
    }
    // Not under /tmp: the units have a private one.
    let root = Path::new("/run/lbfabric-pkg").join(name);
    lb_testkit::package::install(&deb?, &root).expect("dpkg -i");
    Some(root)
}

/// Waits until `unit` is active again under a main process other than `old`.
async fn restarted(unit: &str, old: u32, within: Duration) -> anyhow::Result<u32> {
    wait_for(within, &format!("{unit} restarted"), || async {
        let pid = main_pid(unit).filter(|&p| p != old)?;
        (property(unit, "ActiveState").ok()? == "active").then_some(pid)
    })
    .await
}

/// `dpkg -i` then `systemctl start lbfabric-controller`: the single-node
/// quickstart serves lbctl (systemctl returns once the controller has told
/// systemd it serves), logs to the journal, and comes back after kill -9.
#[tokio::test(flavor = "multi_thread")]
async fn the_package_starts_the_quickstart_controller_under_systemd() -> anyhow::Result<()> {
    let Some(root) = installed("quickstart") else {
        return Ok(());
    };
    let unit = "lbfabric-controller.service";
    // The package's defaults as they stand: API on 127.0.0.1:7070, store in
    // /var/lib/lbfabric (StateDirectory=, a tmpfs in the VM).
    install_unit(
        &root,
        unit,
        "lb-controller",
        &[format!(
            "EnvironmentFile={}",
            root.join("etc/default/lbfabric-controller").display()
        )],
    )?;
    let started = Instant::now();
    systemctl(&["start", unit]).map_err(|e| e.context(journal(unit)))?;
    println!(
        "systemctl start {unit}: ready after {:?}",
        started.elapsed()
    );
    let lbctl = root.join("usr/bin/lbctl");
    let status = |what: &str| {
        let out = Command::new(&lbctl).arg("status").output().expect("lbctl");
        assert!(
            out.status.success(),
            "lbctl status {what}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            journal(unit)
        );
    };
    status("after start");
    let log = journal(unit);
    assert!(
        log.contains("serving"),
        "the journal lacks the controller:\n{log}"
    );
    assert!(
        Path::new("/var/lib/lbfabric/controller").is_dir(),
        "no store in the StateDirectory"
    );

    let pid = main_pid(unit).expect("the controller's main PID");
    signal(pid, "KILL");
    let killed = Instant::now();
    let new = restarted(unit, pid, Duration::from_secs(30)).await?;
    println!(
        "controller killed: pid {pid} → {new}, ready again {:?} later",
        killed.elapsed()
    );
    status("after the restart");
    systemctl(&["stop", unit]).map(drop)
}

/// The owner director runs as the packaged unit; kill -9 it. Restart=always
/// starts it again (RestartSec=1), it continues the lease from
/// /run/lbfabric (RuntimeDirectoryPreserve=) and renews it before it ends:
/// its VIP never moves to the standby d2, the client's requests all succeed
/// and the address never leaves d1, over a window past lease + margin + an
/// election after the kill (VM timers: lease 6 s, margin 2 s).
#[tokio::test(flavor = "multi_thread")]
async fn restart_always_brings_a_killed_director_back_within_its_lease() -> anyhow::Result<()> {
    let Some(root) = installed("director") else {
        return Ok(());
    };
    let f = Fabric::new(&VM_CONTROLLER_TIMERS).await?;
    f.create_services()?;
    let started = Instant::now();
    f.start_director_unit(&root, "d1")
        .map_err(|e| e.context(journal(DIRECTOR_UNIT)))?;
    println!(
        "systemctl start {DIRECTOR_UNIT}: ready after {:?}",
        started.elapsed()
    );
    f.wait_held("d1", &VIPS, Duration::from_secs(30)).await?;
    let _d2 = f.start_director("d2", &VM_DIRECTOR_HEARTBEAT)?;
    f.realservers_ready().await?;
    f.director_live("d2").await?;
    let owners = f.owners()?;
    let lease_files = std::fs::read_dir("/run/lbfabric")?.count();
    assert!(lease_files > 0, "no lease file in /run/lbfabric");

    for attempt in 1..=2 {
        // The kill at 1.5 s, then 20.5 s: lease (6) + margin (2) + an
        // election (3) with the restart's time to spare.
        let w1 = f.vipwatch("d1", DR_VIP, 22)?;
        let w2 = f.vipwatch("d2", DR_VIP, 22)?;
        let probe = f.probe(&format!("http://{DR_VIP}/"), 22, 20)?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pid = main_pid(DIRECTOR_UNIT).expect("the director's main PID");
        signal(pid, "KILL");
        let killed = Instant::now();
        let new = restarted(DIRECTOR_UNIT, pid, Duration::from_secs(20))
            .await
            .map_err(|e| e.context(journal(DIRECTOR_UNIT)))?;
        let back = killed.elapsed();
        let seen = probe.finish();
        let (h1, h2) = (w1.finish_all(), w2.finish_all());
        println!(
            "director killed: pid {pid} → {new}, ready again (answered by the controllers) {back:?} later; \
             {}; d1 held {:?}, d2 held {:?}, the VM stalled {:?}",
            seen.summary(),
            h1.held,
            h2.held,
            h1.stalls
        );
        if f.void_if_frozen(attempt, &h1).await? {
            continue;
        }
        let log = journal(DIRECTOR_UNIT);
        assert!(
            back < Duration::from_secs(6),
            "not back within the lease (6 s): {back:?}\n{log}"
        );
        assert!(
            seen.failed().is_empty(),
            "requests failed: {:?}\n{log}",
            seen.failed()
        );
        assert_eq!(h1.held.len(), 1, "d1 let go of the VIP: {h1:?}\n{log}");
        assert!(h2.held.is_empty(), "d2 took the VIP: {h2:?}");
        assert_eq!(f.owners()?, owners, "a VIP moved");
        break;
    }
    systemctl(&["kill", "--signal=KILL", DIRECTOR_UNIT])?;
    systemctl(&["stop", DIRECTOR_UNIT]).map(drop)
}
