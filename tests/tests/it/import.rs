//! `lbctl import` and `lbctl export` against a real controller: an import
//! lands whole or not at all, and an export reads back to the same services.

use lb_proto::model::Service;
use lb_testkit::{lbctl, lbctl_ok, ControllerProc};

fn fixture(name: &str) -> String {
    format!(
        "{}/../ctl/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn listed(addr: &str) -> anyhow::Result<Vec<Service>> {
    let text = lbctl_ok(addr, &["service", "list", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for s in v["services"].as_array().cloned().unwrap_or_default() {
        let msg: lb_proto::pb::Service =
            lb_proto::json::from_json(&s.to_string(), "lb.v1.Service")?;
        let mut svc = Service::try_from(msg)?;
        (svc.create_revision, svc.mod_revision) = (0, 0);
        out.push(svc);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[tokio::test]
async fn import_is_all_or_nothing_and_export_reads_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = ControllerProc::start(1, dir.path(), true, &[])?;
    let addr = node.addr.clone();
    let a = addr.as_str();
    node.wait_leader().await?;
    let (lb1, lb2) = (fixture("keepalived.conf"), fixture("keepalived-lb2.conf"));

    // The dry run needs no controller and changes nothing.
    let dry = lbctl(
        "127.0.0.1:1",
        &["import", "keepalived", &lb1, &lb2, "--dry-run"],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&dry.stdout),
        String::from_utf8_lossy(&dry.stderr),
    );
    assert!(dry.status.success(), "{stderr}");
    assert!(stdout.starts_with("would create 8 services:"), "{stdout}");
    assert!(stdout.contains("preferred directors lb1,lb2"), "{stdout}");
    assert!(stderr.contains("keepalived.conf:49: alpha:"), "{stderr}");

    // A service already on the third VIP: the whole import is refused.
    lbctl_ok(
        a,
        &["service", "create", "mail", "--vip", "192.0.2.20:25/tcp"],
    )?;
    let out = lbctl(a, &["import", "keepalived", &lb1, &lb2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("AlreadyExists: services[2] (vs-192.0.2.20-25-tcp): virtual address 192.0.2.20:25/tcp (service mail) already exists"),
        "{err}"
    );
    assert_eq!(listed(a)?.len(), 1, "nothing of the import landed");

    lbctl_ok(a, &["service", "delete", "mail"])?;
    let out = lbctl_ok(a, &["import", "keepalived", &lb1, &lb2])?;
    assert!(out.starts_with("imported 8 services"), "{out}");
    let services = listed(a)?;
    assert_eq!(services.len(), 8);
    // One Raft entry made all eight: all eight survive a restart.
    node.restart()?;
    node.wait_leader().await?;
    assert_eq!(listed(a)?, services);
    // Importing again refuses every name; --replace replaces them.
    assert!(!lbctl(a, &["import", "keepalived", &lb1]).status.success());
    lbctl_ok(a, &["import", "keepalived", &lb1, &lb2, "--replace"])?;
    assert_eq!(listed(a)?, services);

    // Each director's export, imported together, is the same fabric.
    let mut parts = Vec::new();
    for d in ["lb1", "lb2"] {
        let text = lbctl_ok(a, &["export", "keepalived", "--director", d])?;
        parts.push(lbctl::import::parse(
            lbctl::import::Format::Keepalived,
            d,
            &text,
        )?);
    }
    let mut again = lbctl::import::merge(parts).validate()?;
    again.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(again, services);

    // And the ipvsadm export is the table the directors program.
    let table = lbctl_ok(a, &["export", "ipvsadm"])?;
    assert!(
        table.contains("-A -t 192.0.2.10:80 -s wlc -p 300 -M 255.255.255.0\n"),
        "{table}"
    );
    assert!(
        table.contains("-a -t 192.0.2.10:80 -r 198.51.100.1:8080 -m -w 3\n"),
        "{table}"
    );
    Ok(())
}
