//! The director agent against a real kernel: services created with lbctl
//! appear in IPVS exactly, edits change only what they name, hand edits are
//! repaired within the resync period, foreign services are reported and left
//! alone, and a kill -9 / restart of the agent never empties the table.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ipvsadm, ipvsadm_save, sorted, Proc};
use lb_proto::pb;
use lb_testkit::{bin, lbctl_ok, wait_for, words, ControllerProc};

/// The lbfabric VIPs (10.10.1.x) on lo, as `ADDR/PREFIX`.
fn vips_on_lo() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with("10.10.1."))
        .map(String::from)
        .collect()
}

/// The agent process; killed (SIGKILL) when dropped, also when a test fails.
pub(super) fn start_director(controller: &str, log: &std::path::Path) -> Proc {
    // The test's own state (lease and services files) beside its log: the
    // tests run one after another in one VM, all as node dir-a.
    let state = log.with_file_name("state");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("director log");
    Proc(
        Command::new(bin("lb-director"))
            .args([
                "--controller",
                controller,
                "--node-id",
                "dir-a",
                "--resync-ms",
                "1000",
                "--heartbeat-ms",
                "100",
                "--interface",
                "lo",
            ])
            .arg("--state-dir")
            .arg(state)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting lb-director"),
    )
}

/// The lease these tests run the controller with.
const LEASE: [&str; 4] = ["--lease-ms", "600", "--lease-margin-ms", "200"];

/// An empty IPVS table and a single-node controller (in a temporary
/// directory, returned with it) that leads.
pub(super) async fn empty_kernel_and_controller(
) -> anyhow::Result<(tempfile::TempDir, ControllerProc)> {
    ipvsadm("-C");
    let dir = tempfile::tempdir()?;
    // Three times the default lease and margin (under emulation a round
    // trip can take longer than the default 200 ms lease), a single node.
    let node = ControllerProc::start(1, dir.path(), true, &LEASE)?;
    node.wait_leader().await?;
    Ok((dir, node))
}

async fn kernel_shows(want: &[&str], within: Duration, what: &str) -> Duration {
    let want = sorted(want);
    let t0 = Instant::now();
    let got = wait_for(within, what, || {
        let want = want.clone();
        async move { (ipvsadm_save() == want).then_some(()) }
    })
    .await;
    if let Err(e) = got {
        panic!("{e}: the kernel has {:#?}, want {want:#?}", ipvsadm_save());
    }
    t0.elapsed()
}

const FIRST: &[&str] = &[
    "-A -t 10.10.1.30:80 -s wlc -p 30",
    "-a -t 10.10.1.30:80 -r 192.168.10.11:8080 -m -w 2",
    "-a -t 10.10.1.30:80 -r 192.168.10.12:8080 -m -w 1",
    "-A -u 10.10.1.53:53 -s rr",
    "-a -u 10.10.1.53:53 -r 10.0.0.11:53 -g -w 1",
    "-a -u 10.10.1.53:53 -r 10.0.0.12:53 -g -w 1",
    "-A -f 80 -s sh -b sh-port",
    "-a -f 80 -r 10.0.0.21:0 -i -w 1 --tun-type ipip",
];

const EDITED: &[&str] = &[
    "-A -t 10.10.1.30:80 -s wlc -p 30",
    "-a -t 10.10.1.30:80 -r 192.168.10.11:8080 -m -w 5",
    "-a -t 10.10.1.30:80 -r 192.168.10.12:8080 -m -w 1",
    "-A -u 10.10.1.53:53 -s wrr",
    "-a -u 10.10.1.53:53 -r 10.0.0.11:53 -g -w 1",
    "-A -f 80 -s sh -b sh-port",
    "-a -f 80 -r 10.0.0.21:0 -i -w 1 --tun-type ipip",
];

#[tokio::test]
async fn director_programs_repairs_and_survives_restart() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "0")?;
    let (dir, node) = empty_kernel_and_controller().await?;
    let a = node.addr.clone();
    lbctl_ok(
        &a,
        &words("service create web --vip 10.10.1.30:80/tcp --scheduler wlc --mode nat --persistence 30"),
    )?;
    lbctl_ok(
        &a,
        &words("realserver add web 192.168.10.11:8080 --weight 2"),
    )?;
    lbctl_ok(&a, &["realserver", "add", "web", "192.168.10.12:8080"])?;
    lbctl_ok(
        &a,
        &words("service create dns --vip 10.10.1.53:53/udp --scheduler rr --mode dr --realserver 10.0.0.11 --realserver 10.0.0.12"),
    )?;
    lbctl_ok(
        &a,
        &words("service create shop --fwmark 80 --scheduler sh --scheduler-flag sh-port --mode tun --realserver 10.0.0.21"),
    )?;

    let log = dir.path().join("director.log");
    let director = start_director(&a, &log);
    kernel_shows(FIRST, Duration::from_secs(20), "the services in the kernel").await;
    // The only director owns both VIPs and holds their addresses.
    wait_for(
        Duration::from_secs(10),
        "the VIPs on the director's interface",
        || async {
            let v = vips_on_lo();
            (v.contains(&"10.10.1.30/32".to_string()) && v.contains(&"10.10.1.53/32".to_string()))
                .then_some(())
        },
    )
    .await?;
    // A NAT service is configured, so the director forwards.
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
    assert_eq!(
        forward.trim(),
        "1",
        "ip_forward after a NAT service was programmed"
    );

    // Edits reach the kernel and touch only what they name.
    lbctl_ok(
        &a,
        &words("realserver update web 192.168.10.11:8080 --weight 5"),
    )?;
    lbctl_ok(&a, &["service", "update", "dns", "--scheduler", "wrr"])?;
    lbctl_ok(&a, &["realserver", "remove", "dns", "10.0.0.12"])?;
    let took = kernel_shows(EDITED, Duration::from_secs(10), "the edits in the kernel").await;
    println!("configuration edits reached the kernel in {took:?}");

    // Hand edits are repaired within the resync period (1 s here); a foreign service stays.
    ipvsadm("-D -u 10.10.1.53:53");
    ipvsadm("-e -t 10.10.1.30:80 -r 192.168.10.12:8080 -m -w 9");
    ipvsadm("-A -t 10.99.0.1:80 -s rr");
    let mut with_foreign = EDITED.to_vec();
    with_foreign.push("-A -t 10.99.0.1:80 -s rr");
    let took = kernel_shows(&with_foreign, Duration::from_secs(5), "drift repaired").await;
    println!("hand edits repaired in {took:?}");
    assert!(
        took < Duration::from_millis(2500),
        "repair took {took:?} with a 1 s resync"
    );
    let listed = wait_for(
        Duration::from_secs(5),
        "the foreign service in lbctl director list",
        || async {
            lbctl_ok(&a, &["director", "list"])
                .ok()
                .filter(|out| out.contains("TCP 10.99.0.1:80") && out.contains("connected"))
        },
    )
    .await?;
    println!("{listed}");

    // kill -9: the kernel keeps its table, during the outage and across the restart.
    drop(director);
    let want = sorted(&with_foreign);
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            ipvsadm_save(),
            want,
            "the table changed while the agent was dead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let director = start_director(&a, &log);
    let restarted = Instant::now();
    while restarted.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            ipvsadm_save(),
            want,
            "the table changed while the agent restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The restarted agent reconnected and reports the current revision as applied.
    wait_for(
        Duration::from_secs(10),
        "the restarted agent to report",
        || async {
            let out = lbctl_ok(&a, &["director", "list", "-o", "json"]).ok()?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let d = &v["directors"][0];
            (d["connected"] == true && d["appliedRevision"] == v["revision"]).then_some(())
        },
    )
    .await?;
    // Cut off from every controller, the director drops its VIPs when its
    // lease ends, and keeps the IPVS table.
    let mut node = node;
    node.kill();
    let cut = Instant::now();
    wait_for(Duration::from_secs(5), "the VIPs to be dropped", || async {
        vips_on_lo().is_empty().then_some(())
    })
    .await?;
    let dropped = cut.elapsed();
    println!("controller gone: VIPs dropped after {dropped:?} (lease 600 ms)");
    // The lease ends at most 600 ms after the kill. The address goes at
    // the VIP loop's next step, which under emulation may be behind one
    // `nft` refresh of the fence (measured 536 ms to 1.23 s in all); the
    // fence's own timeouts stop the kernel answering at the lease end
    // whatever the loop does (failover::a_stalled_then_killed_agent...).
    assert!(
        dropped < Duration::from_millis(1600),
        "VIPs held {dropped:?} after the controller went away"
    );
    assert_eq!(
        ipvsadm_save(),
        want,
        "the table changed when the controller went away"
    );

    // A restarted agent continues its node's lease, no further: with the
    // controller back the VIPs return; then the agent is killed, the
    // controller too, and a new agent process, which cannot reach anyone,
    // still removes the addresses the old one held when that lease ends.
    node.restart()?;
    wait_for(Duration::from_secs(20), "the VIPs back", || async {
        (vips_on_lo().len() == 2).then_some(())
    })
    .await?;
    drop(director);
    node.kill();
    let log_before = std::fs::read_to_string(&log)?.len();
    let director = start_director(&a, &log);
    let restarted = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "the restarted agent to drop the VIPs",
        || async { vips_on_lo().is_empty().then_some(()) },
    )
    .await?;
    let dropped = restarted.elapsed();
    println!("agent restarted without controllers: inherited VIPs dropped after {dropped:?}");
    // The lease (600 ms) was nearly over at the restart; what remains is
    // the agent's own start-up, slow in the emulated VM.
    assert!(
        dropped < Duration::from_millis(2000),
        "the restarted agent kept its VIPs {dropped:?} on a lease of 600 ms"
    );
    let said = std::fs::read_to_string(&log)?;
    assert!(
        said[log_before..].contains("continuing the previous process's lease"),
        "the restarted agent did not read the lease file:\n{}",
        &said[log_before..]
    );
    assert_eq!(
        ipvsadm_save(),
        want,
        "the table changed when the agent restarted alone"
    );
    drop(director);
    ipvsadm("-C");
    Ok(())
}

/// A `DirectorSync` hop between the director and the controller that, once
/// armed, gives service `web` a scheduler this director does not know: a
/// controller whose rules differ from the director's (a newer release, say).
#[derive(Clone)]
struct Skew {
    upstream: String,
    /// Its own address: it names itself as the cluster's only member, so
    /// the director does not go round it to the controller.
    hop: String,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[tonic::async_trait]
impl pb::director_sync_server::DirectorSync for Skew {
    type SyncStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::DirectorDesired, tonic::Status>> + Send>,
    >;

    async fn sync(
        &self,
        req: tonic::Request<tonic::Streaming<pb::DirectorReport>>,
    ) -> Result<tonic::Response<Self::SyncStream>, tonic::Status> {
        use tokio_stream::StreamExt;
        let reports = req.into_inner().filter_map(Result::ok);
        let mut upstream = pb::director_sync_client::DirectorSyncClient::connect(format!(
            "http://{}",
            self.upstream
        ))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let desired = upstream.sync(reports).await?.into_inner();
        let armed = self.armed.clone();
        let hop = self.hop.clone();
        let skewed = desired.map(move |msg| {
            msg.map(|mut d| {
                d.controllers = vec![hop.clone()];
                if armed.load(std::sync::atomic::Ordering::SeqCst) {
                    for s in d.update.iter_mut().flat_map(|c| c.services.iter_mut()) {
                        if s.name == "web" {
                            s.scheduler = "nonesuch".into();
                        }
                    }
                }
                d
            })
        });
        Ok(tonic::Response::new(Box::pin(skewed)))
    }
}

/// A service the director cannot take is not applied and not silent: the
/// director reports why (`lbctl director list -o json`, `lbctl status`),
/// keeps that service as it was, and applies the rest of the change.
#[tokio::test]
async fn a_refused_service_is_reported_and_the_rest_applies() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let (dir, node) = empty_kernel_and_controller().await?;
    let a = node.addr.clone();
    lbctl_ok(
        &a,
        &words("service create web --vip 10.10.1.30:80/tcp --scheduler rr --mode nat"),
    )?;
    lbctl_ok(&a, &words("realserver add web 192.168.10.11:8080"))?;
    lbctl_ok(
        &a,
        &words("service create dns --vip 10.10.1.53:53/udp --scheduler rr --mode dr"),
    )?;
    lbctl_ok(&a, &words("realserver add dns 10.0.0.11"))?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hop = listener.local_addr()?.to_string();
    let skew = Skew {
        upstream: a.clone(),
        hop: hop.clone(),
        armed: Default::default(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::director_sync_server::DirectorSyncServer::new(
                skew.clone(),
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let _director = start_director(&hop, &dir.path().join("director.log"));
    let before = [
        "-A -t 10.10.1.30:80 -s rr",
        "-a -t 10.10.1.30:80 -r 192.168.10.11:8080 -m -w 1",
        "-A -u 10.10.1.53:53 -s rr",
        "-a -u 10.10.1.53:53 -r 10.0.0.11:53 -g -w 1",
    ];
    kernel_shows(&before, Duration::from_secs(20), "both services").await;

    // From now on every configuration names a scheduler the director
    // refuses for web; a change to both services is sent.
    skew.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    lbctl_ok(&a, &words("realserver add web 192.168.10.12:8080"))?;
    lbctl_ok(&a, &words("realserver add dns 10.0.0.12"))?;
    let after = [
        "-A -t 10.10.1.30:80 -s rr",
        "-a -t 10.10.1.30:80 -r 192.168.10.11:8080 -m -w 1",
        "-A -u 10.10.1.53:53 -s rr",
        "-a -u 10.10.1.53:53 -r 10.0.0.11:53 -g -w 1",
        "-a -u 10.10.1.53:53 -r 10.0.0.12:53 -g -w 1",
    ];
    kernel_shows(
        &after,
        Duration::from_secs(20),
        "dns changed, web as it was",
    )
    .await;
    let errors = wait_for(
        Duration::from_secs(10),
        "the refusal in lbctl director list -o json",
        || async {
            let out = lbctl_ok(&a, &words("director list -o json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let d = &v["directors"][0];
            let errors: Vec<String> = d["errors"]
                .as_array()?
                .iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect();
            (d["nodeId"] == "dir-a" && !errors.is_empty()).then_some((errors, v))
        },
    )
    .await?;
    println!("{:#}", errors.1);
    assert_eq!(
        errors.0,
        [
            "service web refused: service.scheduler: unknown value \"nonesuch\"; \
             expected one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh, fo, ovf, twos"
        ],
        "the director's errors"
    );
    // Not applied: the revision the director reports stays behind.
    let d = &errors.1["directors"][0];
    let applied: u64 = d["appliedRevision"].as_str().unwrap_or("0").parse()?;
    let revision: u64 = errors.1["revision"].as_str().unwrap_or("0").parse()?;
    assert!(applied < revision, "applied {applied} of {revision}: {d}");
    let status = lbctl_ok(&a, &["status"])?;
    println!("{status}");
    assert!(
        status.contains("director dir-a: service web refused: service.scheduler"),
        "lbctl status shows the refusal:\n{status}"
    );
    // The same controller's rules again: the next change to web (a delta
    // carries only the services that changed) brings the director back.
    skew.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    lbctl_ok(&a, &words("realserver update dns 10.0.0.12 --weight 3"))?;
    lbctl_ok(
        &a,
        &words("realserver update web 192.168.10.12:8080 --weight 2"),
    )?;
    let caught_up = [
        "-A -t 10.10.1.30:80 -s rr",
        "-a -t 10.10.1.30:80 -r 192.168.10.11:8080 -m -w 1",
        "-a -t 10.10.1.30:80 -r 192.168.10.12:8080 -m -w 2",
        "-A -u 10.10.1.53:53 -s rr",
        "-a -u 10.10.1.53:53 -r 10.0.0.11:53 -g -w 1",
        "-a -u 10.10.1.53:53 -r 10.0.0.12:53 -g -w 3",
    ];
    kernel_shows(&caught_up, Duration::from_secs(20), "everything applied").await;
    wait_for(Duration::from_secs(10), "no errors reported", || async {
        let out = lbctl_ok(&a, &words("director list -o json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let errors = v["directors"][0]["errors"].as_array().map_or(0, Vec::len);
        (errors == 0).then_some(())
    })
    .await?;
    ipvsadm("-C");
    Ok(())
}
