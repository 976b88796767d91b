//! lb-failover-bench: the client's gap when a director host is lost, at the
//! shipped timers and at tuned ones, and — in the same VM, topology and
//! client — with keepalived 2.2 on both directors (VRRPv2 with advert_int 1,
//! VRRPv3 with advert_int 0.1). A benchmark, not a test: it prints the
//! figures (each failover's gap, the p50 per timer set) and fails only when
//! the fabric does not fail over at all. It needs IPVS, so it runs in the
//! VM test bed: `scripts/failover-bench.sh`.
//!
//! One controller: under software emulation the three-node cluster's
//! quorum round trips are what force the VM tests' timers up, and a single
//! node confirms its own leadership, so the director timers can be the real
//! ones. The directors, the kernel and the client are those of the VM
//! fabric tests; the client asks every 20 ms (a thread per request: at
//! 10 ms the emulated CPU starves the agents and their leases lapse).

use std::time::Duration;

use lb_testkit::fabric::{host_loss_gaps, Fabric, DR_VIP};
use lb_testkit::proc::Proc;

/// (what, controller flags, director flags)
const RUNS: [(&str, &[&str], &[&str]); 2] = [
    (
        "defaults: lease 600 ms, margin 200 ms, heartbeat 200 ms",
        &[],
        &[],
    ),
    (
        "tuned: lease 200 ms, margin 50 ms, heartbeat 50 ms",
        &["--lease-ms", "200", "--lease-margin-ms", "50"],
        &["--heartbeat-ms", "50"],
    ),
];

/// keepalived's VRRP timers to compare with: (what, vrrp_version, advert_int).
const KEEPALIVED: [(&str, u8, &str); 2] = [
    ("keepalived 2.2, VRRPv2, advert_int 1", 2, "1"),
    ("keepalived 2.2, VRRPv3, advert_int 0.1", 3, "0.1"),
];

/// A keepalived.conf for director `name` (the same DR service on VIP
/// 10.0.0.100 as the fabric's, the same realservers): both start BACKUP
/// with nopreempt, `name` with `priority`.
fn keepalived_conf(name: &str, priority: u8, version: u8, advert: &str) -> String {
    let rs = |ip: &str| {
        format!(
            "  real_server {ip} 80 {{\n    weight 1\n    TCP_CHECK {{\n      connect_timeout 1\n    }}\n  }}\n"
        )
    };
    format!(
        "global_defs {{\n  router_id {name}\n  vrrp_version {version}\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {DR_VIP}/32 dev eth0\n  }}\n}}\n\
         virtual_server {DR_VIP} 80 {{\n  delay_loop 1\n  lb_algo rr\n  lb_kind DR\n  protocol TCP\n{}{}}}\n",
        rs("10.0.0.21"),
        rs("10.0.0.22")
    )
}

/// SIGSTOP / SIGCONT to keepalived's whole process group (it forks a VRRP
/// and a checker child).
fn signal_group(pgid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pgid}")])
        .status();
}

/// The same host loss, `rounds` times, with keepalived on both directors:
/// the client's gap each time.
async fn keepalived_gaps(
    version: u8,
    advert: &str,
    rounds: usize,
    probe_secs: u64,
) -> anyhow::Result<Vec<Duration>> {
    use std::os::unix::process::CommandExt;
    let keepalived = lb_testkit::which("keepalived")
        .ok_or_else(|| anyhow::anyhow!("keepalived is not installed (scripts/setup.sh)"))?;
    let f = Fabric::with_controllers(1, &[]).await?;
    f.create_services()?;
    f.realservers_ready().await?;
    let mut procs = Vec::new();
    for (name, priority) in [("d1", 150), ("d2", 100)] {
        let dir = f.dir.path().join(format!("keepalived-{name}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, keepalived_conf(name, priority, version, advert))?;
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let child =
            f.t.command(name, &keepalived)?
                .args(["-n", "-l", "-f", &path("keepalived.conf")])
                .args([
                    "-p",
                    &path("k.pid"),
                    "-r",
                    &path("v.pid"),
                    "-c",
                    &path("c.pid"),
                ])
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
        procs.push((name, child.id(), Proc(child)));
        // d1 first, so that it is the master.
        if name == "d1" {
            f.wait_held("d1", &[DR_VIP], Duration::from_secs(30))
                .await?;
        }
    }
    let pgid = |name: &str| procs.iter().find(|p| p.0 == name).map_or(0, |p| p.1);
    let mut gaps = Vec::new();
    for round in 1..=rounds {
        // Served through the master, the backup in place.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let master = if f.held("d1").contains(&DR_VIP) {
            "d1"
        } else {
            "d2"
        };
        let backup = if master == "d1" { "d2" } else { "d1" };
        let probe = f.probe(&format!("http://{DR_VIP}/"), probe_secs, 20)?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // Two masters (adverts lost under load) would make a failover look
        // free: say so.
        if f.held(backup).contains(&DR_VIP) {
            println!("keepalived round {round}: {backup} also held {DR_VIP} before the fault (two masters)");
        }
        f.t.sh(master, "ip link set eth0 down")?;
        signal_group(pgid(master), "STOP");
        f.wait_held(backup, &[DR_VIP], Duration::from_secs(probe_secs - 2))
            .await?;
        let seen = probe.finish();
        println!(
            "keepalived failover {round} ({master} -> {backup}): {}",
            seen.summary()
        );
        anyhow::ensure!(seen.recovered(), "keepalived: clients not served again");
        gaps.push(seen.gap());
        signal_group(pgid(master), "CONT");
        f.t.sh(master, "ip link set eth0 up")?;
    }
    for (_, pgid, _) in &procs {
        signal_group(*pgid, "KILL");
    }
    Ok(gaps)
}

/// Prints one set's gaps and keeps them for the summary; a set that did
/// not recover is reported, and the rest still run.
fn record(
    results: &mut Vec<(String, Vec<Duration>)>,
    what: &str,
    gaps: anyhow::Result<Vec<Duration>>,
) {
    match gaps {
        Ok(mut gaps) => {
            gaps.sort();
            println!("host-loss failover gaps ({what}): {gaps:?}");
            results.push((what.to_string(), gaps));
        }
        Err(e) => println!("{what}: {e}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        lb_testkit::vm::in_vm(),
        "this needs IPVS: run scripts/failover-bench.sh, which uses the VM test bed"
    );
    // LB_BENCH_SETS=text runs only the sets whose name contains it.
    let only = std::env::var("LB_BENCH_SETS").unwrap_or_default();
    let mut results = Vec::new();
    for (timers, controller, director) in RUNS {
        if !timers.contains(&only) {
            continue;
        }
        let (f, d1, d2) = Fabric::running_with(1, controller, director).await?;
        let gaps = host_loss_gaps(&f, ("d1", d1), ("d2", d2), (5, 10, 20)).await;
        record(&mut results, timers, gaps);
    }
    // The peer, in the same VM, topology and client.
    for (what, version, advert) in KEEPALIVED {
        if !what.contains(&only) {
            continue;
        }
        let probe = if version == 2 { 12 } else { 6 };
        record(
            &mut results,
            what,
            keepalived_gaps(version, advert, 5, probe).await,
        );
    }
    println!();
    for (timers, gaps) in results {
        let ms = |d: &Duration| d.as_millis();
        println!(
            "{timers}: p50 {} ms, max {} ms over {} failovers",
            ms(&gaps[gaps.len() / 2]),
            gaps.last().map_or(0, ms),
            gaps.len()
        );
    }
    Ok(())
}
