//! An operator's day one: CRUD through lbctl on a single-node controller, and
//! nothing lost across a hard restart.

use std::time::Duration;

use lb_testkit::{lbctl, lbctl_ok, words, ControllerProc};
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("lbctl printed invalid JSON ({e}):\n{text}"))
}

#[tokio::test]
async fn lbctl_crud_survives_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = ControllerProc::start(1, dir.path(), true, &[])?;
    let a = node.addr.clone();

    // The example from the issue, exactly as an operator types it.
    let out = lbctl_ok(
        &a,
        &words("service create web --vip 10.10.1.30:80/tcp --scheduler wlc --mode nat --persistence 30"),
    )?;
    assert!(out.contains("10.10.1.30:80/tcp wlc persistent 30"), "{out}");
    lbctl_ok(
        &a,
        &words("service create dns --vip 10.10.1.53:53/udp --scheduler rr --mode dr --realserver 10.0.0.11 --realserver 10.0.0.12"),
    )?;
    lbctl_ok(
        &a,
        &["service", "create", "tmp", "--fwmark", "7", "--mode", "tun"],
    )?;
    // A fwmark service that names its traffic, and a VIP that would be shadowed by it.
    let tls = lbctl_ok(
        &a,
        &words("service create tls --fwmark 1 --mark-address 10.10.1.40 --mark-ports 443,80"),
    )?;
    assert!(
        tls.contains("fwmark 1/inet (10.10.1.40 tcp 80,443)"),
        "{tls}"
    );
    let shadowed = lb_testkit::lbctl(
        &a,
        &["service", "create", "web2", "--vip", "10.10.1.40:443/tcp"],
    );
    let err = String::from_utf8_lossy(&shadowed.stderr);
    assert!(
        !shadowed.status.success()
            && err.contains("service.endpoint: 10.10.1.40:443/tcp is marked (10.10.1.40 tcp 80,443) for fwmark service tls"),
        "{err}"
    );
    lbctl_ok(&a, &["service", "delete", "tls"])?;
    lbctl_ok(
        &a,
        &words("realserver add web 192.168.10.11:8080 --weight 2"),
    )?;
    lbctl_ok(&a, &["realserver", "add", "web", "192.168.10.12:8080"])?;
    lbctl_ok(
        &a,
        &words("realserver update web 192.168.10.12:8080 --weight 5 --state draining"),
    )?;
    lbctl_ok(
        &a,
        &words("service update web --scheduler rr --persistence 60 --netmask 255.255.255.0"),
    )?;
    lbctl_ok(&a, &["realserver", "remove", "dns", "10.0.0.12"])?;
    lbctl_ok(&a, &["service", "delete", "tmp"])?;

    let get = lbctl_ok(&a, &["service", "get", "web"])?;
    assert!(
        get.contains("10.10.1.30:80/tcp rr persistent 60 mask 255.255.255.0"),
        "{get}"
    );
    assert!(
        get.contains("192.168.10.12:8080") && get.contains("draining"),
        "{get}"
    );

    let before = json(&lbctl_ok(&a, &["service", "list", "-o", "json"])?);
    let services = before["services"].as_array().expect("services array");
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["dns", "web"]);
    let web = &services[1];
    assert_eq!(web["scheduler"], "rr");
    assert_eq!(web["persistence"]["timeoutSeconds"], 60);
    assert_eq!(web["realservers"][0]["weight"], 2);
    assert_eq!(web["realservers"][1]["weight"], 5);
    assert_eq!(web["realservers"][1]["adminState"], "draining");
    let dns = &services[0];
    assert_eq!(dns["realservers"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        dns["realservers"][0]["port"], 53,
        "port 0 takes the VIP port"
    );
    let rs_before = lbctl_ok(&a, &["realserver", "list"])?;

    // A hard kill, not a clean shutdown: only what was fsynced survives.
    node.restart()?;
    let addr = node.addr.clone();
    node.wait_leader().await?;
    let after = json(&lbctl_ok(&addr, &["service", "list", "-o", "json"])?);
    assert_eq!(before, after, "configuration changed across a restart");
    assert_eq!(rs_before, lbctl_ok(&addr, &["realserver", "list"])?);

    // Errors reach the operator with the field named and a failing exit code.
    let bad = lbctl(
        &addr,
        &words("realserver add web 192.168.10.13:8080 --weight 70000"),
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("realserver.weight"),
        "{err}"
    );
    Ok(())
}

/// Agent-registered backends and an operator's drain survive a hard restart
/// of the controller: the directors must not be told a service has no
/// backends while the agents reconnect.
#[tokio::test]
async fn agent_backends_and_drains_survive_restart() -> anyhow::Result<()> {
    use lb_proto::pb;
    use lb_proto::pb::real_server_sync_client::RealServerSyncClient;
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir()?;
    // Snapshots and purges early, so the restart starts from the stored
    // state rather than replaying the whole log.
    let compact = ["--snapshot-every", "2", "--keep-logs", "0"];
    let mut node = ControllerProc::start(1, dir.path(), true, &compact)?;
    node.wait_leader().await?;
    let a = node.addr.clone();
    lbctl_ok(
        &a,
        &words("service create web --vip 10.1.0.100:80/tcp --selector pool=web"),
    )?;
    let report = pb::RealServerReport {
        node_id: "rs1".into(),
        address: "10.1.0.11".into(),
        labels: [("pool".to_string(), "web".to_string())].into(),
        heartbeat: 1,
        ..Default::default()
    };
    let mut stream = RealServerSyncClient::new(lb_testkit::channel(&a).await?)
        .sync(tokio_stream::once(report))
        .await?
        .into_inner();
    stream.next().await.expect("an answer")?;
    drop(stream);
    // Let the client close its connection (the lbctl calls below block this
    // runtime), so the graceful restart does not wait for it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    lbctl_ok(&a, &["realserver", "drain", "rs1"])?;
    // Later writes make the earlier ones durable, as in any running fabric.
    for (name, vip) in [("dns", "10.1.0.53:53/udp"), ("ntp", "10.1.0.123:123/udp")] {
        lbctl_ok(&a, &["service", "create", name, "--vip", vip])?;
    }
    let before = lbctl_ok(&a, &["realserver", "list", "web"])?;
    assert!(
        before.contains("10.1.0.11:80") && before.contains("agent rs1"),
        "{before}"
    );

    for graceful in [false, true] {
        if graceful {
            node.restart_gracefully()?;
        } else {
            node.restart()?;
        }
        node.wait_leader().await?;
        let after = lbctl_ok(&node.addr, &["realserver", "list", "web"])?;
        assert_eq!(
            before, after,
            "backends changed across a restart (graceful: {graceful})"
        );
    }
    let json = json(&lbctl_ok(
        &node.addr,
        &["realserver", "list", "web", "-o", "json"],
    )?);
    let rs = &json["realservers"][0];
    assert_eq!(rs["agent"], "rs1", "{json}");
    assert_eq!(
        rs["realserver"]["adminState"], "draining",
        "still drained: {json}"
    );
    Ok(())
}

/// The controller opts out of transparent huge pages, whatever the host's
/// setting (`THP_enabled: 1` for any other process): khugepaged's collapses
/// of its heap stalled changes at 10,000 services
/// (`lb_proto::process::no_huge_pages`).
#[tokio::test]
async fn the_controller_runs_without_transparent_huge_pages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &[])?;
    let pid = node.pid().expect("the controller runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let thp = status.lines().find_map(|l| l.strip_prefix("THP_enabled:"));
    assert_eq!(thp.map(str::trim), Some("0"), "{status}");
    Ok(())
}
