//! Join tokens against a real controller over TLS: what an agent sees when
//! it joins with a good, expired, used-up, misdirected or foreign token,
//! renewal, and re-admission after a revocation. The agent side is the
//! library the agents run (`lb_proto::pki::enroll`); `netns::a_realserver_agent_joins_with_a_token`
//! runs the agent binary itself.

use std::path::Path;
use std::time::Duration;

use lb_proto::pb;
use lb_proto::pb::real_server_sync_client::RealServerSyncClient;
use lb_proto::pki::enroll::{self, EnrollError, Enrollee};
use lb_proto::pki::{JoinToken, Role};
use lb_testkit::{lbctl_ok, words, ControllerProc};
use tokio_stream::StreamExt;

fn rs(name: &str, ip: &str) -> Enrollee {
    Enrollee {
        role: Role::Realserver,
        node_id: name.into(),
        address: Some(ip.parse().expect("ip")),
    }
}

/// `lbctl token create` with `args`; the token it printed.
fn token(addr: &str, args: &[&str]) -> anyhow::Result<JoinToken> {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    Ok(lbctl_ok(addr, &all)?.trim().parse()?)
}

/// The refusal `join` ended with.
async fn refused(addr: &str, t: &JoinToken, who: &Enrollee, dir: &Path) -> (tonic::Code, String) {
    match enroll::join(&addr.parse().unwrap(), t, who, dir).await {
        Err(EnrollError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Opens a realserver stream with the credentials in `dir`; its first
/// answer, or the refusal.
async fn report(addr: &str, dir: &Path, node: &str, ip: &str) -> Result<(), tonic::Status> {
    let creds = enroll::load(dir).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let channel = lb_proto::client::channel(addr, Some(&creds.client_config()))?;
    let first = pb::RealServerReport {
        node_id: node.into(),
        address: ip.into(),
        heartbeat: 1,
        ..Default::default()
    };
    let mut answers = RealServerSyncClient::new(channel)
        .sync(tokio_stream::once(first))
        .await?
        .into_inner();
    match answers.next().await {
        Some(Ok(_)) => Ok(()),
        Some(Err(s)) => Err(s),
        None => Err(tonic::Status::aborted("the stream ended")),
    }
}

/// A realserver stream with the credentials in `dir` that reports every
/// 300 ms; it ends with the status the controller closed it with.
async fn long_stream(
    addr: &str,
    dir: &Path,
    node: &str,
    ip: &str,
) -> anyhow::Result<tokio::task::JoinHandle<Option<tonic::Status>>> {
    let creds = enroll::load(dir)?;
    let channel = lb_proto::client::channel(addr, Some(&creds.client_config()))?;
    let report = pb::RealServerReport {
        node_id: node.into(),
        address: ip.into(),
        heartbeat: 1,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(report.clone()).await?;
    let mut answers = RealServerSyncClient::new(channel)
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(300));
        let mut report = report;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    report.heartbeat += 1;
                    let _ = tx.send(report.clone()).await;
                }
                answer = answers.next() => match answer {
                    Some(Ok(_)) => {}
                    Some(Err(s)) => return Some(s),
                    None => return None,
                },
            }
        }
    }))
}

#[tokio::test]
async fn agents_join_with_tokens_and_renew() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(
        1,
        dir.path(),
        true,
        &["--tls", "--agent-cert-lifetime", "6s"],
    )?;
    node.wait_leader().await?;
    let a = node.addr.clone();
    let pki = node.pki.clone().expect("TLS");
    let rs1 = dir.path().join("rs1");

    // A token whose pinned CA is not the fabric's: the agent does not even
    // send its request to a controller it cannot trust.
    let good = token(&a, &["--role", "realserver"])?;
    let mut foreign = good.clone();
    foreign.ca_sha256 = lb_proto::pki::sha256_hex(b"another CA");
    match enroll::join(&a.parse()?, &foreign, &rs("rs1", "10.1.0.11"), &rs1).await {
        Err(e @ EnrollError::Pin { .. }) => {
            assert!(
                e.to_string()
                    .contains("does not present the CA the join token pins"),
                "{e}"
            )
        }
        other => panic!("expected a pinning failure, got {other:?}"),
    }

    // An expired token.
    let short = token(&a, &["--role", "realserver", "--ttl", "1s"])?;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (code, msg) = refused(&a, &short, &rs("rs1", "10.1.0.11"), &rs1).await;
    assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
    assert!(
        msg.contains(&format!("join token {} expired", short.id)),
        "{msg}"
    );

    // A director token for a realserver, and a wrong secret.
    let director = token(&a, &["--role", "director"])?;
    let (code, msg) = refused(&a, &director, &rs("rs1", "10.1.0.11"), &rs1).await;
    assert_eq!(code, tonic::Code::PermissionDenied, "{msg}");
    assert!(
        msg.contains("is for director agents, not realserver agents"),
        "{msg}"
    );
    let mut guessed = good.clone();
    guessed.secret = "0".repeat(32);
    let (code, msg) = refused(&a, &guessed, &rs("rs1", "10.1.0.11"), &rs1).await;
    assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
    assert!(msg.contains("the secret does not match"), "{msg}");

    // Nothing changed: no certificate, the tokens unused.
    assert!(!rs1.join("node.pem").exists());
    let list: serde_json::Value =
        serde_json::from_str(&lbctl_ok(&a, &words("token list -o json"))?)?;
    println!("{list:#}");
    for t in [&good, &short, &director] {
        let info = list["tokens"]
            .as_array()
            .and_then(|ts| ts.iter().find(|i| i["id"] == t.id.as_str()))
            .unwrap_or(&serde_json::Value::Null);
        assert_eq!(info["usesLeft"], 1, "{info}");
    }

    // The good token: a certificate for rs1 and its address, which the
    // realserver stream accepts; the CA the agent keeps is the fabric's.
    enroll::join(&a.parse()?, &good, &rs("rs1", "10.1.0.11"), &rs1).await?;
    assert_eq!(
        std::fs::read_to_string(rs1.join("ca.pem"))?,
        std::fs::read_to_string(pki.join("ca.pem"))?
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rs1.join("node.pem"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the key is in node.pem");
    report(&a, &rs1, "rs1", "10.1.0.11").await?;
    let e = report(&a, &rs1, "rs1", "10.1.0.12")
        .await
        .expect_err("another address");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // Used up; and rs2 may not join with a token once used by rs1.
    let rs2 = dir.path().join("rs2");
    let (code, msg) = refused(&a, &good, &rs("rs2", "10.1.0.12"), &rs2).await;
    assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
    assert!(msg.contains("is used up (joined: rs1)"), "{msg}");
    // A token for several agents cannot take over a joined node id.
    let fleet = token(&a, &["--role", "realserver", "--uses", "5"])?;
    let (code, msg) = refused(&a, &fleet, &rs("rs1", "10.1.0.11"), &dir.path().join("x")).await;
    assert_eq!(code, tonic::Code::PermissionDenied, "{msg}");
    assert!(msg.contains("rs1 has joined before"), "{msg}");
    enroll::join(&a.parse()?, &fleet, &rs("rs2", "10.1.0.12"), &rs2).await?;
    report(&a, &rs2, "rs2", "10.1.0.12").await?;
    // A stream opened with rs2's 6 s certificate, never renewed: cut off
    // when the certificate expires, though the connection was made before.
    let rs2_stream = long_stream(&a, &rs2, "rs2", "10.1.0.12").await?;

    // Renewal: a new key and certificate, accepted as the old one was.
    let before = std::fs::read_to_string(rs1.join("node.pem"))?;
    enroll::renew(&a.parse()?, &rs1).await?;
    let after = std::fs::read_to_string(rs1.join("node.pem"))?;
    assert_ne!(before, after);
    report(&a, &rs1, "rs1", "10.1.0.11").await?;
    // The 6 s certificate from before the renewal expires; the renewed one
    // (issued later) still works after that.
    std::fs::write(dir.path().join("old.pem"), &before)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    enroll::renew(&a.parse()?, &rs1).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    report(&a, &rs1, "rs1", "10.1.0.11").await?;
    let old = dir.path().join("old");
    std::fs::create_dir_all(&old)?;
    std::fs::copy(rs1.join("ca.pem"), old.join("ca.pem"))?;
    std::fs::write(old.join("node.pem"), &before)?;
    let e = report(&a, &old, "rs1", "10.1.0.11")
        .await
        .expect_err("expired");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("xpired"), "{e:?}");
    let ended = tokio::time::timeout(Duration::from_secs(3), rs2_stream).await??;
    let ended = ended.expect("ended with a status");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(
        ended
            .message()
            .starts_with("the certificate of realserver rs2 expired"),
        "{ended:?}"
    );

    // Revoked: refused; a token for any node cannot bring it back, one for
    // rs1 alone can, with a new certificate, while the old ones stay refused.
    lbctl_ok(&a, &["node", "revoke", "rs1"])?;
    let revoked_copy = dir.path().join("revoked");
    std::fs::create_dir_all(&revoked_copy)?;
    std::fs::copy(rs1.join("ca.pem"), revoked_copy.join("ca.pem"))?;
    std::fs::copy(rs1.join("node.pem"), revoked_copy.join("node.pem"))?;
    let e = report(&a, &rs1, "rs1", "10.1.0.11")
        .await
        .expect_err("revoked");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let (code, msg) = refused(&a, &fleet, &rs("rs1", "10.1.0.11"), &rs1).await;
    assert_eq!(code, tonic::Code::PermissionDenied, "{msg}");
    assert!(msg.contains("--node rs1"), "{msg}");
    let again = token(&a, &["--role", "realserver", "--node", "rs1"])?;
    std::fs::remove_file(rs1.join("node.pem"))?;
    enroll::join(&a.parse()?, &again, &rs("rs1", "10.1.0.11"), &rs1).await?;
    report(&a, &rs1, "rs1", "10.1.0.11").await?;
    let e = report(&a, &revoked_copy, "rs1", "10.1.0.11")
        .await
        .expect_err("still revoked");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // Deleted tokens are gone.
    lbctl_ok(&a, &["token", "delete", &fleet.id])?;
    let (code, msg) = refused(&a, &fleet, &rs("rs3", "10.1.0.13"), &dir.path().join("rs3")).await;
    assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
    assert!(msg.contains("unknown or deleted"), "{msg}");
    Ok(())
}

/// The realserver agent binary joins with `--join-token` alone (no CA file:
/// the token pins it), renews its certificate in the background before it
/// expires and reconnects with the new one, and after a restart uses the
/// certificate it keeps in --pki-dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realserver_agent_joins_with_a_token_and_renews() -> anyhow::Result<()> {
    use lb_testkit::netns::{can_create_namespaces, Topology};
    use lb_testkit::{bin, require, start_cluster_at, wait_for};
    if !require(can_create_namespaces(), "root and network namespaces") {
        return Ok(());
    }
    let mut t = Topology::new();
    t.add_bridge("lan")?;
    t.plug_caller("lan", "lbr3", "10.85.0.1/24")?;
    t.add_ns("rs1")?;
    t.plug("rs1", "lan", "eth0", "10.85.0.21/24")?;
    let dir = tempfile::tempdir()?;
    // Not loopback, so TLS is on by itself.
    let controllers =
        start_cluster_at("10.85.0.1", 1, dir.path(), &["--agent-cert-lifetime", "9s"]).await?;
    let a = controllers[0].addr.clone();
    lbctl_ok(
        &a,
        &words("service create web --vip 10.85.0.100:80/tcp --mode dr --selector pool=web"),
    )?;
    let token = lbctl_ok(&a, &["token", "create", "--role", "realserver"])?;
    let agent = bin("lb-realserver").to_string_lossy().into_owned();
    let state = dir.path().join("state").to_string_lossy().into_owned();
    let pki = dir.path().join("rs1-pki");
    let pki_flag = pki.to_string_lossy().into_owned();
    let start = |t: &mut Topology, join: Option<&str>| -> anyhow::Result<u32> {
        let mut args = vec![
            agent.as_str(),
            "--state-dir",
            &state,
            "--pki-dir",
            &pki_flag,
            "--controller",
            &a,
            "--node-id",
            "rs1",
            "--address",
            "10.85.0.21",
            "--labels",
            "pool=web",
            "--heartbeat-ms",
            "200",
            "--drain-timeout-ms",
            "0",
        ];
        if let Some(token) = join {
            args.extend(["--join-token", token]);
        }
        Ok(t.spawn("rs1", &args)?.id())
    };
    let registered = || {
        controllers[0]
            .log_text()
            .matches("realserver agent registered realserver=rs1")
            .count()
    };
    let pid = start(&mut t, Some(token.trim()))?;
    wait_for(
        Duration::from_secs(15),
        "rs1 joined and registered",
        || async {
            let l = lbctl_ok(&a, &["realserver", "list", "web"]).ok()?;
            l.lines()
                .any(|l| {
                    l.contains("10.85.0.21:80") && l.contains("agent rs1") && l.contains("active")
                })
                .then_some(())
        },
    )
    .await?;
    let first = std::fs::read_to_string(pki.join("node.pem"))?;
    let connections = registered();

    // Renewed at two thirds of 9 s; the agent reconnects with it.
    wait_for(Duration::from_secs(15), "a renewed certificate", || async {
        let now = std::fs::read_to_string(pki.join("node.pem")).ok()?;
        (now != first && registered() > connections).then_some(())
    })
    .await?;
    assert!(controllers[0]
        .log_text()
        .contains("agent certificate renewed identity=realserver rs1"));
    // Past the first certificate's expiry, rs1 is still a live backend.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let l = lbctl_ok(&a, &["realserver", "list", "web"])?;
    let line = l
        .lines()
        .find(|l| l.contains("10.85.0.21:80"))
        .unwrap_or_default();
    assert!(line.contains("active") && !line.contains("lost"), "{l}");

    // Restarted without the token (used up anyway): the kept certificate.
    std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = registered();
    start(&mut t, None)?;
    wait_for(
        Duration::from_secs(10),
        "rs1 back with its kept certificate",
        || async { (registered() > before).then_some(()) },
    )
    .await?;
    println!("{}", lbctl_ok(&a, &["token", "list"])?);
    Ok(())
}

/// A plaintext controller (loopback, the quickstart) has nothing to join:
/// it says so instead of minting a token agents could not use.
#[tokio::test]
async fn a_plaintext_controller_mints_no_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &[])?;
    node.wait_leader().await?;
    let out = lb_testkit::lbctl(&node.addr, &["token", "create", "--role", "director"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("FailedPrecondition: this controller serves plaintext"),
        "{err}"
    );
    let bad = lb_testkit::lbctl(
        &node.addr,
        &["token", "create", "--role", "director", "--ttl", "90d"],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("InvalidArgument: ttl: must be a positive duration of at most 30 days"),
        "{err}"
    );
    Ok(())
}
