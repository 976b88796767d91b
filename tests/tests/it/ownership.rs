//! VIP ownership as an operator sees it: `lbctl status` and `lbctl director
//! list` against a real three-controller cluster, with directors speaking the
//! real `DirectorSync` protocol over gRPC. (The kernel side — addresses,
//! IPVS, ARP — is the VM suite's; here the director is only its protocol, so
//! the controller's own failover time is measured at native speed with the
//! default timers.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_proto::client::{channel, leader_hint};
use lb_proto::pb;
use lb_proto::pb::director_sync_client::DirectorSyncClient;
use lb_testkit::{lbctl_ok, start_cluster, wait_for, words};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// What a protocol director has been told.
#[derive(Debug, Default)]
struct Heard {
    /// When the last heartbeat went out.
    last_sent: Option<Instant>,
    /// VIP → (epoch, when an acknowledged message first granted it).
    granted: BTreeMap<String, (u64, Instant)>,
    /// VIP → when a message last took it away.
    lost: BTreeMap<String, Instant>,
}

/// A director agent without a kernel: reports every `heartbeat`, follows
/// leader redirects, holds what acknowledged messages grant.
struct ProtoDirector {
    stop: watch::Sender<bool>,
    heard: Arc<Mutex<Heard>>,
}

impl ProtoDirector {
    fn start(controller: &str, name: &str, heartbeat: Duration) -> ProtoDirector {
        let (stop, stop_rx) = watch::channel(false);
        let heard = Arc::new(Mutex::new(Heard::default()));
        tokio::spawn(run(
            controller.to_string(),
            name.to_string(),
            heartbeat,
            heard.clone(),
            stop_rx,
        ));
        ProtoDirector { stop, heard }
    }

    /// Stops reporting at once, as a frozen host would.
    fn freeze(&self) -> Option<Instant> {
        let _ = self.stop.send(true);
        self.heard.lock().unwrap().last_sent
    }

    fn granted(&self, vip: &str) -> Option<(u64, Instant)> {
        self.heard.lock().unwrap().granted.get(vip).copied()
    }

    fn lost(&self, vip: &str) -> Option<Instant> {
        self.heard.lock().unwrap().lost.get(vip).copied()
    }
}

async fn run(
    mut target: String,
    name: String,
    heartbeat: Duration,
    heard: Arc<Mutex<Heard>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seq = 0u64;
    let mut held: Vec<pb::VipLease> = Vec::new();
    loop {
        let (tx, rx) = mpsc::channel(8);
        let report = |seq: u64, held: &[pb::VipLease]| pb::DirectorReport {
            node_id: name.clone(),
            heartbeat: seq,
            held: held.to_vec(),
            ..Default::default()
        };
        seq += 1;
        let _ = tx.send(report(seq, &held)).await;
        heard.lock().unwrap().last_sent = Some(Instant::now());
        let Ok(ch) = channel(&target, None) else {
            return;
        };
        let mut inbound = match DirectorSyncClient::new(ch)
            .sync(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                if let Some(leader) = leader_hint(&status) {
                    target = leader;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut ticker = tokio::time::interval(heartbeat);
        loop {
            tokio::select! {
                // Drop the non-Send watch::Ref before any arm awaits.
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                _ = ticker.tick() => {
                    seq += 1;
                    if tx.send(report(seq, &held)).await.is_err() { break }
                    heard.lock().unwrap().last_sent = Some(Instant::now());
                }
                msg = inbound.message() => match msg {
                    Ok(Some(d)) if d.heartbeat_ack > 0 => {
                        let mut h = heard.lock().unwrap();
                        for l in &d.leases {
                            let now = Instant::now();
                            let entry = h.granted.entry(l.vip.clone()).or_insert((l.epoch, now));
                            if entry.0 != l.epoch {
                                *entry = (l.epoch, now);
                            }
                        }
                        let gone: Vec<String> = h
                            .granted
                            .keys()
                            .filter(|vip| !d.leases.iter().any(|l| &l.vip == *vip))
                            .cloned()
                            .collect();
                        for vip in gone {
                            h.granted.remove(&vip);
                            h.lost.insert(vip, Instant::now());
                        }
                        held = d.leases.clone();
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                },
            }
        }
    }
}

fn status_json(addr: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&lbctl_ok(
        addr,
        &["status", "-o", "json"],
    )?)?)
}

/// (owner, epoch, held) of `vip` in `lbctl status -o json`.
fn owner_of(v: &serde_json::Value, vip: &str) -> Option<(String, u64, bool)> {
    let e = v["vips"].as_array()?.iter().find(|e| e["vip"] == vip)?;
    Some((
        e["owner"].as_str().unwrap_or_default().to_string(),
        // proto3 JSON writes 64-bit integers as strings.
        e["epoch"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| e["epoch"].as_u64())?,
        e["held"].as_bool().unwrap_or(false),
    ))
}

// Two workers: lbctl runs block one, the directors' heartbeats use the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_owners_and_a_silent_owner_is_replaced() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = start_cluster(3, dir.path(), &[]).await?;
    let a = nodes[0].addr.clone();
    lbctl_ok(
        &a,
        &["service", "create", "web", "--vip", "10.1.0.1:80/tcp"],
    )?;
    lbctl_ok(
        &a,
        &["service", "create", "dns", "--vip", "10.1.0.2:53/udp"],
    )?;
    lbctl_ok(
        &a,
        &["service", "create", "web-tls", "--vip", "10.1.0.1:443/tcp"],
    )?;

    let hb = Duration::from_millis(50); // lb-director's default
    let da = ProtoDirector::start(&a, "da", hb);
    let db = ProtoDirector::start(&a, "db", hb);
    // Both VIPs assigned and reported held; spread one per director.
    let v = wait_for(Duration::from_secs(10), "both VIPs held", || async {
        let v = status_json(&a).ok()?;
        let one = owner_of(&v, "10.1.0.1")?;
        let two = owner_of(&v, "10.1.0.2")?;
        (one.2 && two.2).then_some(v)
    })
    .await?;
    let (web_owner, web_epoch, _) = owner_of(&v, "10.1.0.1").unwrap();
    let (dns_owner, _, _) = owner_of(&v, "10.1.0.2").unwrap();
    assert_ne!(web_owner, dns_owner, "two VIPs, two directors: spread");

    let text = lbctl_ok(&a, &["status"])?;
    println!("{text}");
    let web_line = text
        .lines()
        .find(|l| l.starts_with("10.1.0.1 "))
        .expect("a line for 10.1.0.1");
    for word in [web_owner.as_str(), "held", "web,web-tls"] {
        assert!(web_line.contains(word), "{word:?} missing in {web_line:?}");
    }
    assert!(text.contains("2 of 2 directors live"), "{text}");
    let list = lbctl_ok(&a, &["director", "list"])?;
    println!("{list}");
    let owner_line = list
        .lines()
        .find(|l| l.starts_with(&web_owner))
        .expect("the owner in director list");
    assert!(
        owner_line.contains("live") && owner_line.contains(&format!("10.1.0.1@{web_epoch}")),
        "{owner_line:?}"
    );

    // The owner of 10.1.0.1 goes silent; the other director is given it.
    let (owner, standby) = if web_owner == "da" {
        (&da, &db)
    } else {
        (&db, &da)
    };
    let last = owner.freeze().expect("the owner sent heartbeats");
    let (epoch, at) = wait_for(
        Duration::from_secs(5),
        "the standby granted 10.1.0.1",
        || async { standby.granted("10.1.0.1") },
    )
    .await?;
    assert_eq!(epoch, web_epoch + 1, "a new owner, a new epoch");
    println!(
        "control-plane failover at the default timers (lease 200 ms, margin 50 ms, director heartbeat 50 ms): \
         standby granted the VIP {:?} after the owner's last heartbeat",
        at.duration_since(last)
    );
    let v = wait_for(
        Duration::from_secs(5),
        "status to show the new owner",
        || async {
            let v = status_json(&a).ok()?;
            owner_of(&v, "10.1.0.1").filter(|o| o.2).map(|_| v)
        },
    )
    .await?;
    let (new_owner, new_epoch, _) = owner_of(&v, "10.1.0.1").unwrap();
    assert_ne!(new_owner, web_owner);
    assert_eq!(new_epoch, web_epoch + 1);
    let list = lbctl_ok(&a, &["director", "list"])?;
    println!("{list}");
    let dead = list
        .lines()
        .find(|l| l.starts_with(&web_owner))
        .expect("the silent director is still listed");
    assert!(dead.contains("dead"), "{dead:?}");
    let text = lbctl_ok(&a, &["status"])?;
    assert!(text.contains("1 of 2 directors live"), "{text}");
    da.freeze();
    db.freeze();
    Ok(())
}

/// Control-plane failover, measured: the owner of one VIP goes silent, three
/// times in a row, at the default timers and at tuned ones. The figure is
/// from the owner's last heartbeat to the standby's acknowledged grant; the
/// director then adds the address and announces it (milliseconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_figures_at_default_and_tuned_timers() -> anyhow::Result<()> {
    let sets: [(&str, &[&str], Duration); 2] = [
        ("defaults (lease 200 ms, margin 50 ms, heartbeat 50 ms)", &[], Duration::from_millis(50)),
        (
            "tuned (lease 120 ms, margin 30 ms, heartbeat 30 ms, Raft heartbeat 20 ms, election 60 ms)",
            &words("--lease-ms 120 --lease-margin-ms 30 --raft-heartbeat-ms 20 --raft-election-ms 60"),
            Duration::from_millis(30),
        ),
    ];
    for (what, flags, hb) in sets {
        let dir = tempfile::tempdir()?;
        let nodes = start_cluster(3, dir.path(), flags).await?;
        let a = nodes[0].addr.clone();
        lbctl_ok(
            &a,
            &["service", "create", "web", "--vip", "10.1.0.1:80/tcp"],
        )?;
        let mut directors = vec![ProtoDirector::start(&a, "d0", hb)];
        let mut gaps = Vec::new();
        for round in 1..=3 {
            directors.push(ProtoDirector::start(&a, &format!("d{round}"), hb));
            let (owner, epoch) = wait_for(Duration::from_secs(10), "an owner", || async {
                let v = status_json(&a).ok()?;
                owner_of(&v, "10.1.0.1").filter(|o| o.2).map(|o| (o.0, o.1))
            })
            .await?;
            // Let the newcomer be heard before the owner goes silent.
            tokio::time::sleep(hb * 3).await;
            let i: usize = owner.trim_start_matches('d').parse()?;
            let last = directors[i].freeze().expect("heartbeats sent");
            let standby = directors
                .iter()
                .enumerate()
                .rfind(|(j, _)| *j != i)
                .map(|(j, _)| j)
                .expect("a standby");
            let (got, at) = wait_for(
                Duration::from_secs(5),
                "the standby granted the VIP",
                || async {
                    directors[standby]
                        .granted("10.1.0.1")
                        .filter(|g| g.0 > epoch)
                },
            )
            .await?;
            assert_eq!(got, epoch + 1);
            gaps.push(at.duration_since(last));
        }
        gaps.sort();
        println!(
            "control-plane failover, {what}: {gaps:?}, p50 {:?}",
            gaps[1]
        );
        for d in &directors {
            d.freeze();
        }
    }
    Ok(())
}

/// A preferred director that comes back takes its VIP back after the
/// hold-down, in one move, and is granted it only once the interim owner
/// has been told to let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_director_takes_its_vip_back_after_the_hold_down() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = start_cluster(3, dir.path(), &["--preempt-hold-down-ms", "1500"]).await?;
    let a = nodes[0].addr.clone();
    lbctl_ok(
        &a,
        &words("service create web --vip 10.1.0.1:80/tcp --prefer-director da"),
    )?;
    let hb = Duration::from_millis(50);
    let db = ProtoDirector::start(&a, "db", hb);
    wait_for(Duration::from_secs(10), "db granted the VIP", || async {
        db.granted("10.1.0.1")
    })
    .await?;
    let back = Instant::now();
    let da = ProtoDirector::start(&a, "da", hb);
    let (epoch, granted) = wait_for(Duration::from_secs(10), "da granted the VIP", || async {
        da.granted("10.1.0.1")
    })
    .await?;
    let lost = db.lost("10.1.0.1").expect("db was told to let go");
    println!(
        "preferred director back: db let go {:?} and da got the VIP {:?} after da returned (hold-down 1.5 s), epoch {epoch}",
        lost.duration_since(back),
        granted.duration_since(back)
    );
    assert!(
        lost.duration_since(back) >= Duration::from_millis(1500),
        "preempted before the hold-down"
    );
    assert!(granted > lost, "da granted before db let go");
    assert_eq!(epoch, 2, "assigned to db (1), then in one write to da (2)");
    let v = status_json(&a)?;
    assert_eq!(
        owner_of(&v, "10.1.0.1").map(|o| o.0),
        Some("da".to_string())
    );
    da.freeze();
    db.freeze();
    Ok(())
}

/// A raw director stream to `a` as director `da` (reading `leases_same` or
/// not), reporting until an answer grants it `10.1.0.1`.
struct RawDirector {
    tx: mpsc::Sender<pb::DirectorReport>,
    inbound: tonic::Streaming<pb::DirectorDesired>,
    seq: u64,
    knows_same: bool,
}

fn report(seq: u64, knows_leases_same: bool) -> pb::DirectorReport {
    pb::DirectorReport {
        node_id: "da".into(),
        heartbeat: seq,
        knows_leases_same,
        ..Default::default()
    }
}

fn grants_vip(d: &pb::DirectorDesired) -> bool {
    d.leases.iter().any(|l| l.vip == "10.1.0.1")
}

impl RawDirector {
    async fn until_granted(a: &str, knows_same: bool) -> anyhow::Result<RawDirector> {
        let (tx, rx) = mpsc::channel(8);
        // The stream opens with a report: the controller answers the call
        // only then.
        tx.send(report(1, knows_same)).await?;
        let mut raw = RawDirector {
            tx,
            inbound: DirectorSyncClient::new(channel(a, None)?)
                .sync(ReceiverStream::new(rx))
                .await?
                .into_inner(),
            seq: 1,
            knows_same,
        };
        // Reports until an answer grants the VIP (placement, then the
        // controller's quiet time after its start).
        let t = Instant::now();
        loop {
            if let Ok(msg) =
                tokio::time::timeout(Duration::from_millis(200), raw.inbound.message()).await
            {
                let d = msg?.ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
                if grants_vip(&d) {
                    assert!(!d.continued && !d.leases_same, "{d:?}");
                    return Ok(raw);
                }
                continue;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(20), "no grant in 20 s");
            raw.report().await?;
        }
    }

    async fn report(&mut self) -> anyhow::Result<()> {
        self.report_with(|_| {}).await
    }

    /// A report `with` whatever else it should say.
    async fn report_with(
        &mut self,
        with: impl FnOnce(&mut pb::DirectorReport),
    ) -> anyhow::Result<()> {
        self.seq += 1;
        let mut r = report(self.seq, self.knows_same);
        with(&mut r);
        self.tx.send(r).await?;
        Ok(())
    }

    /// Reports (`with` what else it says) and waits for the answer, which
    /// comes once the controller has taken the report in.
    async fn answered(
        &mut self,
        with: impl FnOnce(&mut pb::DirectorReport),
    ) -> anyhow::Result<pb::DirectorDesired> {
        self.report_with(with).await?;
        let seq = self.seq;
        self.next(|d| !d.continued && d.heartbeat_ack == seq).await
    }

    /// The next message `keep` accepts (within 10 s).
    async fn next(
        &mut self,
        keep: impl Fn(&pb::DirectorDesired) -> bool,
    ) -> anyhow::Result<pb::DirectorDesired> {
        let inbound = &mut self.inbound;
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let d = inbound
                    .message()
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("ended"))?;
                if keep(&d) {
                    return anyhow::Ok(d);
                }
            }
        })
        .await?
    }
}

async fn controller_with_web(dir: &std::path::Path) -> anyhow::Result<lb_testkit::ControllerProc> {
    let node = lb_testkit::ControllerProc::start(1, dir, true, &[])?;
    node.wait_leader().await?;
    lbctl_ok(
        &node.addr,
        &words("service create web --vip 10.1.0.1:80/tcp"),
    )?;
    Ok(node)
}

/// A configuration change between two reports reaches the director at
/// once, in a message that carries the update and nothing else (no grants,
/// no acknowledgement: `continued`), so that a change costs the change
/// whatever the number of VIPs; the grants of the last answer stand, and
/// the next report's answer grants again (in full: this director does not
/// read `leases_same`, as directors before it did not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_between_reports_comes_without_grants() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = controller_with_web(dir.path()).await?;
    let mut raw = RawDirector::until_granted(&node.addr, false).await?;

    // No report from here on: the change is the only news.
    lbctl_ok(&node.addr, &words("realserver add web 10.2.0.7:80"))?;
    let d = raw
        .next(|d| {
            d.update.as_ref().is_some_and(|u| {
                u.services
                    .iter()
                    .any(|s| s.realservers.iter().any(|r| r.address == "10.2.0.7"))
            })
        })
        .await?;
    assert!(d.continued, "the change came as an answer: {d:?}");
    assert_eq!(d.heartbeat_ack, 0, "{d:?}");
    assert!(d.leases.is_empty(), "grants repeated with a change: {d:?}");
    let u = d.update.as_ref().unwrap();
    assert_ne!(u.base_revision, 0, "a delta, not a snapshot: {u:?}");
    assert_eq!(u.services.len(), 1, "only the changed service: {u:?}");

    // The next report's answer grants the VIP again.
    raw.report().await?;
    let seq = raw.seq;
    let d = raw.next(|d| !d.continued && d.heartbeat_ack == seq).await?;
    assert!(grants_vip(&d) && !d.leases_same, "{d:?}");
    Ok(())
}

/// To a director that reads `leases_same`, an answer whose grants are the
/// previous answer's says so instead of listing them; a changed grant is
/// listed in full again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_grants_are_answered_as_the_same() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = controller_with_web(dir.path()).await?;
    let mut raw = RawDirector::until_granted(&node.addr, true).await?;
    raw.report().await?;
    let seq = raw.seq;
    let d = raw.next(|d| !d.continued && d.heartbeat_ack == seq).await?;
    assert!(d.leases_same && d.leases.is_empty(), "{d:?}");

    // A second VIP for this director (reporting on, as a live director
    // does): the grants differ, listed in full.
    lbctl_ok(
        &node.addr,
        &words("service create api --vip 10.1.0.2:80/tcp"),
    )?;
    let t = Instant::now();
    loop {
        raw.report().await?;
        let d = raw.next(|d| !d.continued).await?;
        if d.leases.iter().any(|l| l.vip == "10.1.0.2") {
            assert!(!d.leases_same && grants_vip(&d), "{d:?}");
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(20),
            "no grant of 10.1.0.2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A report may say `held_same` instead of listing the same leases again
/// (a director with 1,000 VIPs, every heartbeat): `lbctl status` goes on
/// showing the VIP held, and a report that lists nothing lets it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_may_say_it_holds_what_it_held() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = controller_with_web(dir.path()).await?;
    let mut raw = RawDirector::until_granted(&node.addr, true).await?;
    let held = |addr: &str| -> anyhow::Result<bool> {
        let (owner, _, held) = owner_of(&status_json(addr)?, "10.1.0.1")
            .ok_or_else(|| anyhow::anyhow!("10.1.0.1 not in the status"))?;
        anyhow::ensure!(owner == "da", "owned by {owner}");
        Ok(held)
    };
    let (_, epoch, _) = owner_of(&status_json(&node.addr)?, "10.1.0.1")
        .ok_or_else(|| anyhow::anyhow!("10.1.0.1 not in the status"))?;
    assert!(!held(&node.addr)?, "nothing reported held yet");

    let lease = pb::VipLease {
        vip: "10.1.0.1".into(),
        epoch,
    };
    let d = raw.answered(|r| r.held = vec![lease]).await?;
    assert!(d.knows_held_same, "{d:?}");
    assert!(held(&node.addr)?, "reported held");
    for _ in 0..3 {
        raw.answered(|r| r.held_same = true).await?;
    }
    assert!(
        held(&node.addr)?,
        "held_same keeps what the report before said"
    );
    raw.answered(|_| {}).await?;
    assert!(
        !held(&node.addr)?,
        "a report that lists nothing holds nothing"
    );
    Ok(())
}
