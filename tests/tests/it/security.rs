//! mTLS and who may do what: refusals a caller sees, and that nothing changes.

use std::path::Path;

use lb_proto::pb;
use lb_proto::pb::real_server_sync_client::RealServerSyncClient;
use lb_proto::pb::service_admin_client::ServiceAdminClient;
use lb_proto::pki::{Ca, Credentials, Identity, Role};
use lb_testkit::{lbctl_ok, wait_for, words, ControllerProc};
use tokio_stream::StreamExt;

/// lbctl with explicit TLS flags (not the admin credentials the helpers use).
fn lbctl_as(addr: &str, tls: &[&str], args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(lb_testkit::bin("lbctl"))
        .args(["--controller", addr, "--timeout", "5"])
        .args(tls)
        .args(args)
        .output()
        .expect("lbctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// lbctl presenting `<dir>/<name>.pem` (and its key), trusting `ca`.
fn lbctl_with_cert(addr: &str, ca: &Path, dir: &Path, name: &str, args: &[&str]) -> (bool, String) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    lbctl_as(
        addr,
        &["--ca", path(ca), "--cert", path(&cert), "--key", path(&key)],
        args,
    )
}

/// Credentials of realserver agent rs1 (address 10.1.0.11), issued under `dir`.
fn realserver_rs1(ca: &Ca, dir: &Path) -> anyhow::Result<Credentials> {
    let out = dir.join("rs1");
    let id = Identity::new(Role::Realserver, "rs1");
    ca.ensure(&out, "rs1", &id, &["10.1.0.11".parse()?])?;
    Ok(Credentials::from_dir(&out, "rs1")?)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A gRPC channel over TLS presenting `creds`.
async fn channel(addr: &str, creds: &Credentials) -> anyhow::Result<tonic::transport::Channel> {
    Ok(lb_proto::client::channel(
        addr,
        Some(&creds.client_config()),
    )?)
}

#[tokio::test]
async fn only_the_fabrics_identities_get_in() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &["--tls"])?;
    let a = node.addr.clone();
    let pki = node.pki.clone().expect("a TLS controller");
    node.wait_leader().await?;
    // The admin credentials the controller bootstrapped work (lbctl_ok uses them).
    lbctl_ok(
        &a,
        &["service", "create", "web", "--vip", "10.10.1.30:80/tcp"],
    )?;
    let ca_pem = pki.join("ca.pem");

    // No client certificate.
    let (ok, err) = lbctl_as(&a, &["--ca", path(&ca_pem)], &["service", "delete", "web"]);
    assert!(
        !ok && err.contains("Unauthenticated: no client certificate"),
        "{err}"
    );
    assert!(
        err.contains("hint: lbctl needs the admin credentials"),
        "{err}"
    );

    // A certificate from another CA.
    let other = dir.path().join("other-ca");
    let rogue = Ca::open(&other, true)?;
    rogue.ensure(&other, "admin", &Identity::new(Role::Admin, "admin"), &[])?;
    let (ok, err) = lbctl_with_cert(&a, &ca_pem, &other, "admin", &["service", "delete", "web"]);
    assert!(
        !ok && err.contains("Unauthenticated: client certificate not accepted"),
        "{err}"
    );

    // An expired certificate from the right CA.
    let expired = dir.path().join("expired");
    lbctl_ok(
        &a,
        &[
            "pki",
            "issue",
            "--ca-dir",
            path(&pki),
            "--role",
            "admin",
            "--name",
            "old",
            "--days",
            "0",
            "--out",
            path(&expired),
        ],
    )?;
    // Valid until the second it was made (certificate times have seconds).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (ok, err) = lbctl_with_cert(&a, &ca_pem, &expired, "old", &["service", "delete", "web"]);
    assert!(
        !ok && err.contains("Unauthenticated") && err.contains("xpired"),
        "{err}"
    );

    // A director's certificate may not change the configuration, nor speak Raft.
    let ca = Ca::open(&pki, false)?;
    let d1 = dir.path().join("d1");
    ca.ensure(&d1, "d1", &Identity::new(Role::Director, "d1"), &[])?;
    let (ok, err) = lbctl_with_cert(&a, &ca_pem, &d1, "d1", &["service", "delete", "web"]);
    assert!(
        !ok && err.contains(
            "PermissionDenied: director d1 may not call /lb.v1.ServiceAdmin/DeleteService"
        ),
        "{err}"
    );
    let admin = Credentials::from_dir(&pki, "admin")?;
    let mut raft = pb::raft_client::RaftClient::new(channel(&a, &admin).await?);
    let e = raft
        .vote(pb::RaftPayload { json: Vec::new() })
        .await
        .expect_err("an admin may not vote");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // A realserver agent may speak only for its own node id and address.
    let rs1_creds = realserver_rs1(&ca, dir.path())?;
    for (node_id, address, want) in [
        (
            "rs2",
            "10.1.0.12",
            "node_id: realserver rs1 may not register as realserver rs2",
        ),
        (
            "rs1",
            "10.1.0.99",
            "address: realserver rs1 may not register address 10.1.0.99",
        ),
    ] {
        let mut client = RealServerSyncClient::new(channel(&a, &rs1_creds).await?);
        let report = pb::RealServerReport {
            node_id: node_id.into(),
            address: address.into(),
            heartbeat: 1,
            ..Default::default()
        };
        let result = client.sync(tokio_stream::once(report)).await;
        let status = match result {
            Err(s) => s,
            Ok(r) => r
                .into_inner()
                .next()
                .await
                .and_then(Result::err)
                .expect("refused"),
        };
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().starts_with(want), "{status:?}");
    }

    // Nothing changed: the service is there, no agent registered.
    let mut admin_api = ServiceAdminClient::new(channel(&a, &admin).await?);
    let services = admin_api
        .list_services(pb::ListServicesRequest {
            stale: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(services.services.len(), 1);
    assert_eq!(services.revision, 1);
    let rs = admin_api
        .list_real_servers(pb::ListRealServersRequest::default())
        .await?
        .into_inner();
    assert!(rs.realservers.is_empty(), "{rs:?}");

    // Health and reflection answer anyone (grpcurl -cacert without a certificate).
    let open = Credentials {
        ca_pem: std::fs::read_to_string(&ca_pem)?,
        cert_pem: None,
        key_pem: None,
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&a, &open).await?);
    let served = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(served.status, 1, "SERVING");

    // A plaintext client gets nowhere on a TLS port, and is told what to pass.
    let (ok, err) = lbctl_as(&a, &[], &["service", "list"]);
    assert!(!ok && err.contains("--credentials DIR"), "{err}");
    let (ok, err) = lbctl_as(&a, &["--credentials", "/nonexistent"], &["service", "list"]);
    assert!(
        !ok && err.contains("--credentials /nonexistent: /nonexistent/ca.pem: No such file"),
        "{err}"
    );
    Ok(())
}

/// Three controllers over mTLS (their addresses, comma-separated) with a
/// service `web` committed.
async fn three_tls_controllers_with_web(
    dir: &Path,
) -> anyhow::Result<(Vec<ControllerProc>, String)> {
    let nodes = lb_testkit::start_cluster(3, dir, &["--tls"]).await?;
    let all = lb_testkit::addresses(&nodes);
    lbctl_ok(
        &all,
        &["service", "create", "web", "--vip", "10.10.1.30:80/tcp"],
    )?;
    Ok((nodes, all))
}

/// Three controllers talk Raft over mTLS: a change commits, a leader's death
/// elects another, and the change is still there.
#[tokio::test]
async fn three_controllers_over_mtls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut nodes, all) = three_tls_controllers_with_web(dir.path()).await?;
    let status = lbctl_ok(&all, &["cluster", "status"])?;
    assert!(
        status.contains("voter") && status.matches("voter").count() == 3,
        "{status}"
    );
    nodes[0].kill();
    let rest = lb_testkit::addresses(&nodes[1..]);
    let list = lbctl_ok(&rest, &["service", "list"]);
    let logs: String = nodes.iter().map(|n| n.log_text()).collect();
    let list = list.map_err(|e| anyhow::anyhow!("{e}\n{logs}"))?;
    assert!(list.contains("web"), "{list}");

    // The new leader never had ca.key on disk, yet signs a joining agent's
    // certificate: the CA came to it through the log.
    let token: lb_proto::pki::JoinToken =
        lbctl_ok(&rest, &["token", "create", "--role", "director"])?
            .trim()
            .parse()?;
    let d1 = dir.path().join("d1-pki");
    let who = lb_proto::pki::enroll::Enrollee {
        role: Role::Director,
        node_id: "d1".into(),
        address: None,
    };
    lb_proto::pki::enroll::join(&rest.parse()?, &token, &who, &d1).await?;
    let creds = lb_proto::pki::enroll::load(&d1)?;
    let (issued, _) = lb_proto::pki::lifetime(creds.cert_pem.as_deref().unwrap_or(""))?;
    assert!(issued.elapsed()? < std::time::Duration::from_secs(60));
    Ok(())
}

/// A controller whose certificate was made elsewhere (it has no `ca.key`)
/// renews it at start with the CA the cluster replicated to it, and then
/// serves Raft with it.
#[tokio::test]
async fn a_controller_renews_its_certificate_with_the_replicated_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut nodes, all) = three_tls_controllers_with_web(dir.path()).await?;
    let pki = nodes[0].pki.clone().expect("TLS");
    let own = nodes[1].data_dir.join("pki");
    assert!(!own.join("ca.key").exists(), "node 2 has no CA key on disk");

    // Node 2 stops; its certificate has expired by the time it starts again.
    nodes[1].kill();
    let ca = Ca::open(&pki, false)?;
    let me = Identity::new(Role::Controller, "2");
    let short = ca.issue(
        &me,
        &["127.0.0.1".parse()?],
        std::time::Duration::from_secs(1),
    )?;
    lb_proto::pki::write_pem(&own.join("controller.pem"), &short.cert_pem, false)?;
    lb_proto::pki::write_pem(&own.join("controller.key"), &short.key_pem, true)?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nodes[1].restart()?;

    let renewed = lb_proto::pki::read(&own.join("controller.pem"))?;
    assert_ne!(renewed, short.cert_pem, "renewed at start");
    let (_, until) = lb_proto::pki::lifetime(&renewed)?;
    assert!(until > std::time::SystemTime::now() + std::time::Duration::from_secs(300 * 24 * 3600));
    // The leader replicates to node 2 over TLS, verifying the new certificate.
    lbctl_ok(
        &all,
        &["service", "create", "dns", "--vip", "10.10.1.53:53/udp"],
    )?;
    let seen = lb_testkit::wait_for(
        std::time::Duration::from_secs(10),
        "node 2 to catch up",
        || async {
            let list = lbctl_ok(&nodes[1].addr, &["service", "list", "--stale"]).ok()?;
            list.contains("dns").then_some(list)
        },
    )
    .await;
    let logs: String = nodes.iter().map(|n| n.log_text()).collect();
    seen.map_err(|e| anyhow::anyhow!("{e}\n{logs}"))?;
    Ok(())
}

/// A realserver agent that flips its health on every report cannot flood
/// the Raft log: its writes are capped (a burst of 10, then 5 per second),
/// and the last state still lands.
#[tokio::test]
async fn a_flapping_agent_cannot_flood_the_log() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &[])?;
    node.wait_leader().await?;
    lbctl_ok(
        &node.addr,
        &words("service create web --vip 10.1.0.100:80/tcp --selector pool=web --check tcp"),
    )?;
    let log_index = || async {
        node.status()
            .await
            .map(|s| s.last_log_index)
            .ok_or_else(|| anyhow::anyhow!("no status"))
    };
    let before = log_index().await?;
    let report = |i: u64| pb::RealServerReport {
        node_id: "rs1".into(),
        address: "10.1.0.11".into(),
        labels: [("pool".to_string(), "web".to_string())].into(),
        heartbeat: i,
        unhealthy: if i.is_multiple_of(2) {
            vec!["web".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(report(1)).await?;
    let mut client = RealServerSyncClient::new(lb_testkit::channel(&node.addr).await?);
    let _inbound = client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let started = Instant::now();
    let reports = 400u64;
    for i in 2..=reports {
        tx.send(report(i)).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = log_index().await? - before;
    println!(
        "{reports} reports flipping health in {elapsed:?}: {written} log entries (cap: 1 + 10 + 5/s)"
    );
    let cap = 1 + 10 + (5.0 * (elapsed.as_secs_f64() + 0.3)).ceil() as u64;
    assert!(written <= cap, "{written} entries, cap {cap}");
    assert!(written >= 5, "health changes still land: {written}");
    Ok(())
}

/// A director that flips its health verdict for an agentless backend on
/// every report is held to the same budget as a realserver agent.
#[tokio::test]
async fn a_flapping_director_cannot_flood_the_log() -> anyhow::Result<()> {
    use lb_proto::pb::director_sync_client::DirectorSyncClient;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &[])?;
    node.wait_leader().await?;
    let a = node.addr.clone();
    lbctl_ok(
        &a,
        &words("service create web --vip 10.1.0.100:80/tcp --check tcp"),
    )?;
    lbctl_ok(&a, &["realserver", "add", "web", "10.1.0.11:80"])?;
    let report = |i: u64, down: bool| pb::DirectorReport {
        node_id: "d1".into(),
        heartbeat: i,
        unhealthy: if down {
            vec![pb::BackendRef {
                service: "web".into(),
                address: "10.1.0.11".into(),
                port: 80,
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(report(1, false)).await?;
    let mut inbound = DirectorSyncClient::new(lb_testkit::channel(&a).await?)
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tokio::spawn(async move { while let Some(Ok(_)) = inbound.next().await {} });
    // Live and heartbeating until it owns the VIP.
    let mut i = 1;
    let started = Instant::now();
    loop {
        i += 1;
        tx.send(report(i, false)).await?;
        let status = lbctl_ok(&a, &["status"])?;
        if status.contains("d1@") {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "d1 never owned the VIP:\n{status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = node.status().await.map(|s| s.last_log_index).unwrap_or(0);
    let started = Instant::now();
    let reports = 400u64;
    for n in 0..reports {
        i += 1;
        tx.send(report(i, n % 2 == 0)).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let written = node.status().await.map(|s| s.last_log_index).unwrap_or(0) - before;
    println!("{reports} director reports flipping a verdict in {elapsed:?}: {written} log entries (cap: 10 + 5/s)");
    let cap = 10 + (5.0 * (elapsed.as_secs_f64() + 0.3)).ceil() as u64;
    assert!(written <= cap, "{written} entries, cap {cap}");
    assert!(written >= 5, "verdicts still land: {written}");
    // Nothing is lost: with the heartbeats that follow, the last verdict
    // lands. Down, then up again.
    for down in [true, false] {
        let health = wait_for(Duration::from_secs(5), "the last verdict", || {
            i += 1;
            let sent = tx.try_send(report(i, down));
            let list = lbctl_ok(&a, &["realserver", "list", "web"]);
            async move {
                sent.ok()?;
                let list = list.ok()?;
                let line = list
                    .lines()
                    .find(|l| l.contains("10.1.0.11:80"))?
                    .to_string();
                line.contains(if down { " down " } else { " up " })
                    .then_some(line)
            }
        })
        .await?;
        println!("{health}");
    }
    Ok(())
}

/// `lbctl node revoke`: the node's open stream ends at once, it cannot
/// connect again, and that survives a controller restart.
#[tokio::test]
async fn a_revoked_node_is_cut_off() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = ControllerProc::start(1, dir.path(), true, &["--tls"])?;
    node.wait_leader().await?;
    let a = node.addr.clone();
    let pki = node.pki.clone().expect("TLS");
    let ca = Ca::open(&pki, false)?;
    let creds = realserver_rs1(&ca, dir.path())?;
    let report = pb::RealServerReport {
        node_id: "rs1".into(),
        address: "10.1.0.11".into(),
        heartbeat: 1,
        ..Default::default()
    };
    let connect = || async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(report.clone()).await?;
        let stream = RealServerSyncClient::new(channel(&a, &creds).await?)
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        anyhow::Ok((tx, stream))
    };
    let (_tx, mut stream) = connect().await?;
    stream.next().await.expect("a first answer")?;

    let said = lbctl_ok(&a, &["node", "revoke", "rs1"])?;
    assert!(said.starts_with("node rs1 revoked"), "{said}");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(s)) => return Some(s),
                None => return None,
            }
        }
    })
    .await?;
    let ended = ended.expect("the stream ends with a status");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert_eq!(
        ended.message(),
        "the certificate of realserver rs1 is revoked"
    );

    for _ in 0..2 {
        let refused = match connect().await {
            Err(e) => e.downcast::<tonic::Status>()?,
            Ok((_tx, mut s)) => s.next().await.and_then(Result::err).expect("refused"),
        };
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("revoked"), "{refused:?}");
        // Still revoked after a restart.
        node.restart()?;
        node.wait_leader().await?;
    }
    Ok(())
}
