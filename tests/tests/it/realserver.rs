//! Realserver agents in network namespaces on the host, with a real
//! controller: they register, the services that select them adopt them as
//! backends, and each host gets the VIP on `lo` and the ARP sysctls while it
//! serves a DR service — and loses them, restored, when the service goes or
//! the agent stops. (TUN needs the ipip module, which only the VM has.)

use std::process::Command;
use std::time::Duration;

use lb_proto::pki::Role;
use lb_testkit::netns::{can_create_namespaces, Topology};
use lb_testkit::{agent_tls, bin, lbctl_ok, require, start_cluster_at, wait_for};

const VIP: &str = "10.81.0.100";

/// `lo`'s addresses and the ARP sysctls in namespace `ns`.
fn host_view(t: &Topology, ns: &str) -> (bool, String) {
    let lo = t.sh(ns, "ip -o addr show dev lo").unwrap_or_default();
    let sysctls = t
        .sh(
            ns,
            "for k in all/arp_ignore all/arp_announce eth0/arp_ignore eth0/arp_announce; do \
             printf '%s=%s ' $k $(cat /proc/sys/net/ipv4/conf/$k); done",
        )
        .unwrap_or_default();
    (
        lo.contains(&format!("{VIP}/32")),
        sysctls.trim().to_string(),
    )
}

const SET: &str = "all/arp_ignore=1 all/arp_announce=2 eth0/arp_ignore=1 eth0/arp_announce=2";
const UNSET: &str = "all/arp_ignore=0 all/arp_announce=0 eth0/arp_ignore=0 eth0/arp_announce=0";

/// Starts the realserver agent `node` (in the namespace of that name) for
/// `rip`, with its record under `state` and `extra` flags; returns its PID.
fn start_agent(
    t: &mut Topology,
    controller: &str,
    state: &str,
    (node, rip): (&str, &str),
    extra: &[&str],
) -> anyhow::Result<u32> {
    let agent = bin("lb-realserver");
    let agent = agent.to_str().unwrap_or_default().to_string();
    let mut args = vec![
        agent.as_str(),
        "--state-dir",
        state,
        "--controller",
        controller,
        "--node-id",
        node,
        "--address",
        rip,
    ];
    args.extend_from_slice(extra);
    let tls = agent_tls(controller, Role::Realserver, node, &[rip.parse()?])?;
    args.extend(tls.iter().map(String::as_str));
    Ok(t.spawn(node, &args)?.id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_prepare_the_host_and_undo_it() -> anyhow::Result<()> {
    if !require(can_create_namespaces(), "root and network namespaces") {
        return Ok(());
    }
    let mut t = Topology::new();
    t.add_bridge("lan")?;
    t.plug_caller("lan", "lbr0", "10.81.0.1/24")?;
    for (ns, ip) in [("rs1", "10.81.0.21/24"), ("rs2", "10.81.0.22/24")] {
        t.add_ns(ns)?;
        t.plug(ns, "lan", "eth0", ip)?;
    }
    let dir = tempfile::tempdir()?;
    let controllers =
        start_cluster_at("10.81.0.1", 1, dir.path(), &["--agent-grace-ms", "1000"]).await?;
    let a = controllers[0].addr.clone();
    let agent = bin("lb-realserver");
    let agent = agent.to_str().unwrap_or_default().to_string();
    // The agents' records of what they changed (one per node id).
    let state = dir.path().join("agents").to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for (ns, rip) in [("rs1", "10.81.0.21"), ("rs2", "10.81.0.22")] {
        // Reports well inside the controller's 1 s grace.
        let flags = [
            "--labels",
            "pool=web",
            "--resync-ms",
            "300",
            "--heartbeat-ms",
            "200",
        ];
        pids.push(start_agent(&mut t, &a, &state, (ns, rip), &flags)?);
    }
    assert_eq!(host_view(&t, "rs1"), (false, UNSET.to_string()));

    let create = [
        "service",
        "create",
        "web",
        "--vip",
        "10.81.0.100:80/tcp",
        "--mode",
        "dr",
        "--selector",
        "pool=web",
        "--default-weight",
        "2",
    ];
    lbctl_ok(&a, &create)?;
    // Both agents are backends, by selector, with the service's default weight.
    let list = wait_for(
        Duration::from_secs(10),
        "both agents as backends",
        || async {
            let l = lbctl_ok(&a, &["realserver", "list", "web"]).ok()?;
            (l.contains("agent rs1") && l.contains("agent rs2")).then_some(l)
        },
    )
    .await?;
    println!("{list}");
    for rip in ["10.81.0.21:80", "10.81.0.22:80"] {
        let line = list.lines().find(|l| l.contains(rip)).unwrap_or_default();
        assert!(line.contains(" 2 ") && line.contains("active"), "{line}");
    }
    // Another agent claiming rs1's address is refused, naming the field.
    let out = t.exec(
        "rs1",
        &[
            "timeout",
            "2",
            &agent,
            "--state-dir",
            &state,
            "--controller",
            &a,
            "--node-id",
            "impostor",
            "--address",
            "10.81.0.21",
        ]
        .into_iter()
        .chain(
            agent_tls(&a, Role::Realserver, "impostor", &["10.81.0.21".parse()?])?
                .iter()
                .map(String::as_str),
        )
        .collect::<Vec<_>>(),
    )?;
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("address: 10.81.0.21 is already registered by realserver agent rs1"),
        "{log}"
    );
    // Drained by the operator: weight 0 (STATE draining) until enabled.
    let said = lbctl_ok(&a, &["realserver", "drain", "rs1"])?;
    assert!(said.contains("realserver agent rs1 draining"), "{said}");
    let list = lbctl_ok(&a, &["realserver", "list", "web"])?;
    let line = list
        .lines()
        .find(|l| l.contains("10.81.0.21"))
        .unwrap_or_default();
    assert!(line.contains("draining"), "{list}");
    // Without connections to wait for, rs1 leaves service at once...
    wait_for(Duration::from_secs(10), "rs1 out of service", || async {
        (host_view(&t, "rs1") == (false, UNSET.to_string())).then_some(())
    })
    .await?;
    // ...and comes back when enabled.
    lbctl_ok(&a, &["realserver", "enable", "rs1"])?;
    wait_for(Duration::from_secs(10), "rs1 back in service", || async {
        (host_view(&t, "rs1") == (true, SET.to_string())).then_some(())
    })
    .await?;
    let list = lbctl_ok(&a, &["realserver", "list", "web"])?;
    let line = list
        .lines()
        .find(|l| l.contains("10.81.0.21"))
        .unwrap_or_default();
    assert!(line.contains("active"), "{list}");
    let unknown = lb_testkit::lbctl(&a, &["realserver", "drain", "nobody"]);
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() && err.contains("realserver agent nobody not found"),
        "{err}"
    );
    // Each host is prepared for DR.
    for ns in ["rs1", "rs2"] {
        wait_for(
            Duration::from_secs(10),
            "the host prepared for DR",
            || async { (host_view(&t, ns) == (true, SET.to_string())).then_some(()) },
        )
        .await?;
    }
    // A hand edit is repaired.
    t.sh("rs1", &format!("ip addr del {VIP}/32 dev lo"))?;
    wait_for(Duration::from_secs(5), "the VIP back on lo", || async {
        host_view(&t, "rs1").0.then_some(())
    })
    .await?;

    // The service deleted: the VIP goes and the sysctls are restored.
    lbctl_ok(&a, &["service", "delete", "web"])?;
    for ns in ["rs1", "rs2"] {
        wait_for(Duration::from_secs(10), "the host restored", || async {
            (host_view(&t, ns) == (false, UNSET.to_string())).then_some(())
        })
        .await?;
    }

    // Back again; then the agent stops cleanly and undoes it all.
    lbctl_ok(&a, &create)?;
    wait_for(
        Duration::from_secs(10),
        "the host prepared again",
        || async { (host_view(&t, "rs1") == (true, SET.to_string())).then_some(()) },
    )
    .await?;
    let ok = Command::new("kill")
        .args(["-TERM", &pids[0].to_string()])
        .status()?
        .success();
    assert!(ok, "kill -TERM");
    wait_for(
        Duration::from_secs(10),
        "rs1 restored after SIGTERM",
        || async { (host_view(&t, "rs1") == (false, UNSET.to_string())).then_some(()) },
    )
    .await?;
    // The stopped agent stays a backend: agent loss is not service loss.
    let list = lbctl_ok(&a, &["realserver", "list", "web"])?;
    assert!(list.contains("agent rs1"), "{list}");
    assert_eq!(host_view(&t, "rs2"), (true, SET.to_string()));

    // rs2's agent dies without a word: its backend stays as it is for the
    // grace period, then drains (weight 0) until the agent is back.
    let admin_state = |rip: &str| {
        entry(&a, "web", rip)
            .and_then(|e| e["realserver"]["adminState"].as_str().map(String::from))
            .unwrap_or_default()
    };
    assert!(Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()?
        .success());
    let killed = std::time::Instant::now();
    assert_eq!(
        admin_state("10.81.0.22"),
        "active",
        "drained before the grace period"
    );
    wait_for(
        Duration::from_secs(10),
        "rs2 drained after the grace period",
        || async { (admin_state("10.81.0.22") == "draining").then_some(()) },
    )
    .await?;
    println!(
        "silent agent drained {:?} after it died (grace 1 s)",
        killed.elapsed()
    );
    start_agent(
        &mut t,
        &a,
        &state,
        ("rs2", "10.81.0.22"),
        &["--labels", "pool=web", "--heartbeat-ms", "200"],
    )?;
    wait_for(Duration::from_secs(10), "rs2 active again", || async {
        (admin_state("10.81.0.22") == "active").then_some(())
    })
    .await?;
    // The restarted agent continued the killed one's record: deleting the
    // service undoes what the first process did.
    lbctl_ok(&a, &["service", "delete", "web"])?;
    wait_for(
        Duration::from_secs(10),
        "rs2 restored after a kill -9 and a restart",
        || async { (host_view(&t, "rs2") == (false, UNSET.to_string())).then_some(()) },
    )
    .await?;
    Ok(())
}

/// `rip`'s entry in `lbctl realserver list SERVICE -o json`.
fn entry(a: &str, service: &str, rip: &str) -> Option<serde_json::Value> {
    let list = lbctl_ok(a, &["realserver", "list", service, "-o", "json"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&list).ok()?;
    v["realservers"]
        .as_array()?
        .iter()
        .find(|e| e["realserver"]["address"] == rip)
        .cloned()
}

/// `rip`'s health in `lbctl realserver list SERVICE -o json`.
fn health_of(a: &str, service: &str, rip: &str) -> Option<String> {
    entry(a, service, rip)?["health"].as_str().map(String::from)
}

/// Polls every 10 ms until `rip`'s health reads `want`; returns how long it took.
async fn time_until(a: &str, rip: &str, want: &str) -> anyhow::Result<Duration> {
    let start = std::time::Instant::now();
    wait_for(
        Duration::from_secs(10),
        &format!("{rip} {want}"),
        || async {
            let h = health_of(a, "web", rip)?;
            if h == want {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        },
    )
    .await
}

/// An HTTP check run by the agents: a stopped backend goes down after
/// `fall` failed checks and comes back after `rise` passes; the figures are
/// printed against interval × fall and interval × rise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_goes_down_and_comes_back() -> anyhow::Result<()> {
    if !require(can_create_namespaces(), "root and network namespaces") {
        return Ok(());
    }
    let mut t = Topology::new();
    t.add_bridge("lan")?;
    t.plug_caller("lan", "lbr2", "10.83.0.1/24")?;
    let dir = tempfile::tempdir()?;
    let controllers = start_cluster_at("10.83.0.1", 1, dir.path(), &[]).await?;
    let a = controllers[0].addr.clone();
    // The agents' records of what they changed (one per node id).
    let state = dir.path().join("agents").to_string_lossy().into_owned();
    let http = bin("lb-http");
    let http = http.to_str().unwrap_or_default().to_string();
    let mut backend = None;
    for (ns, rip) in [("rs1", "10.83.0.21"), ("rs2", "10.83.0.22")] {
        t.add_ns(ns)?;
        t.plug(ns, "lan", "eth0", &format!("{rip}/24"))?;
        let b = t.spawn(ns, &[&http, "serve", ns, "0.0.0.0:80"])?.id();
        backend.get_or_insert(b);
        start_agent(&mut t, &a, &state, (ns, rip), &["--labels", "pool=web"])?;
    }
    let (interval, rise, fall) = (200u64, 2u64, 3u64);
    lbctl_ok(
        &a,
        &[
            "service",
            "create",
            "web",
            "--vip",
            "10.83.0.100:80/tcp",
            "--mode",
            "dr",
            "--selector",
            "pool=web",
            "--check",
            "http",
            "--check-interval",
            &format!("{interval}ms"),
            "--check-timeout",
            "100ms",
            "--check-rise",
            &rise.to_string(),
            "--check-fall",
            &fall.to_string(),
        ],
    )?;
    for rip in ["10.83.0.21", "10.83.0.22"] {
        time_until(&a, rip, "up").await?;
    }
    // Stop rs1's HTTP server: down after `fall` failed checks.
    let pid = backend.unwrap_or_default().to_string();
    assert!(Command::new("kill").args(["-9", &pid]).status()?.success());
    let down = time_until(&a, "10.83.0.21", "down").await?;
    assert_eq!(health_of(&a, "web", "10.83.0.22").as_deref(), Some("up"));
    // Serve again: up after `rise` passes.
    t.spawn("rs1", &[&http, "serve", "rs1", "0.0.0.0:80"])?;
    let up = time_until(&a, "10.83.0.21", "up").await?;
    println!(
        "health check (interval {interval} ms, fall {fall}, rise {rise}): down {down:?} after the \
         backend stopped (interval x fall = {} ms), up {up:?} after it came back (interval x rise = {} ms)",
        interval * fall,
        interval * rise
    );
    Ok(())
}
