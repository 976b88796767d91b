//! A controller's certificate replaced on disk is served without a restart:
//! `openssl s_client` sees the new serial within a few seconds (the files
//! are looked at every 2 s), lbctl keeps working across the change, and a
//! broken file leaves the certificate served before in place. An agent
//! started with an operator's `--ca/--cert/--key` picks up replaced files
//! the same way and reconnects with them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lb_testkit::{lbctl_ok, wait_for, words, ControllerProc};

/// The serial of the certificate the controller at `addr` presents.
fn served_serial(addr: &str) -> Option<String> {
    let script = format!(
        "openssl s_client -connect {addr} -servername controller.lbfabric </dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().strip_prefix("serial=").map(str::to_string)
}

fn file_serial(path: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_string()
}

#[tokio::test]
async fn a_replaced_controller_certificate_is_served_without_a_restart() -> anyhow::Result<()> {
    if !lb_testkit::require(lb_testkit::which("openssl").is_some(), "openssl") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &["--tls"])?;
    node.wait_leader().await?;
    let a = node.addr.clone();
    let pki = node.data_dir.join("pki");
    let pid = node.pid();
    let before = served_serial(&a).expect("a served certificate");
    assert_eq!(before, file_serial(&pki.join("controller.pem")));

    // A new certificate for the same identity, as a renewal writes it:
    // each file replaced by a rename.
    let fresh = dir.path().join("fresh");
    lbctl_ok(
        &a,
        &[
            "pki",
            "issue",
            "--ca-dir",
            pki.to_str().unwrap(),
            "--role",
            "controller",
            "--name",
            "1",
            "--ip",
            "127.0.0.1",
            "--days",
            "10",
            "--out",
            fresh.to_str().unwrap(),
        ],
    )?;
    let new = file_serial(&fresh.join("controller.pem"));
    assert_ne!(new, before);
    for f in ["controller.key", "controller.pem"] {
        std::fs::copy(fresh.join(f), pki.join(format!("{f}.new")))?;
        std::fs::rename(pki.join(format!("{f}.new")), pki.join(f))?;
    }
    let replaced = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "the new certificate served",
        || async { (served_serial(&a).as_deref() == Some(new.as_str())).then_some(()) },
    )
    .await?;
    println!(
        "serial {before} → {new}: served {:?} after the files were replaced",
        replaced.elapsed()
    );
    lbctl_ok(&a, &words("service create web --vip 10.0.0.1:80/tcp"))?;
    assert_eq!(node.pid(), pid, "the controller restarted");

    // A broken certificate file: the one before stays.
    std::fs::write(
        pki.join("controller.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )?;
    wait_for(
        Duration::from_secs(15),
        "the broken file noticed",
        || async { node.log_text().contains("does not load").then_some(()) },
    )
    .await?;
    assert_eq!(served_serial(&a).as_deref(), Some(new.as_str()));
    lbctl_ok(&a, &words("service list"))?;
    Ok(())
}

#[tokio::test]
async fn an_agent_reloads_its_replaced_certificate_files() -> anyhow::Result<()> {
    use lb_proto::pki::enroll::{self, AgentTlsFlags, Enrollee};
    use lb_proto::pki::{Ca, Identity, Role};
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &["--tls"])?;
    node.wait_leader().await?;
    let ca = Ca::open(&node.data_dir.join("pki"), false)?;
    let me = Identity::new(Role::Director, "d1");
    let files = dir.path().join("d1");
    ca.ensure(&files, "d1", &me, &[])?;
    let flags = AgentTlsFlags {
        files: lb_proto::process::TlsFlags {
            ca: Some(files.join("ca.pem")),
            cert: Some(files.join("d1.pem")),
            key: Some(files.join("d1.key")),
        },
        join_token: None,
        pki_dir: dir.path().join("unused"),
    };
    let who = Enrollee {
        role: Role::Director,
        node_id: "d1".into(),
        address: None,
    };
    let tls = enroll::setup(&flags, &node.addr.parse()?, &who).await?;
    let mut changed = tls.changed();
    // The operator's tooling renews: a new certificate and key, renamed in.
    let renewed = dir.path().join("renewed");
    ca.ensure(&renewed, "d1", &me, &[])?;
    for f in ["d1.key", "d1.pem"] {
        std::fs::copy(renewed.join(f), files.join(format!("{f}.new")))?;
        std::fs::rename(files.join(format!("{f}.new")), files.join(f))?;
    }
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), changed.changed()).await??;
    println!(
        "the agent took the replaced files {:?} after they changed",
        t.elapsed()
    );
    // Files that do not load: nothing changes.
    std::fs::write(files.join("ca.pem"), "not a certificate")?;
    let quiet = tokio::time::timeout(
        enroll::RELOAD_EVERY * 2 + Duration::from_secs(1),
        changed.changed(),
    )
    .await;
    assert!(quiet.is_err(), "a broken CA file was taken");
    Ok(())
}
