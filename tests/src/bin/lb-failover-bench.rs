//! lb-failover-bench: the client's gap when a director host is lost, at the
//! shipped timers and at tuned ones, and — in the same place, topology and
//! client — with keepalived 2.2 on both directors (VRRPv2 with advert_int 1,
//! VRRPv3 with advert_int 0.1). A benchmark, not a test: it prints the
//! figures (each failover's gap, the p50 per timer set) and fails only when
//! the fabric does not fail over at all. Two places
//! (`scripts/failover-bench.sh` runs both):
//!
//! - **in the VM test bed**, with IPVS (DR to two realservers), at the
//!   timers given below;
//! - **natively on the host**, in network namespaces, at the real timers:
//!   the directors run `--no-ipvs` and a proxy on each answers on the VIP
//!   (keepalived runs VRRP alone, as for a floating VIP). Three
//!   controllers; the client asks every 10 ms.
//!
//! `lb-failover-bench soak SECONDS` (natively) runs the default timers for
//! that long with both CPUs kept busy, and counts what must not happen:
//! VIP moves, lapses on the owner, failed requests.
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
const RUNS: [(&str, &[&str], &[&str]); 3] = [
    (
        "defaults: lease 200 ms, margin 50 ms, heartbeat 50 ms",
        &[],
        &[],
    ),
    (
        "the defaults before: lease 600 ms, margin 200 ms, heartbeat 200 ms",
        &["--lease-ms", "600", "--lease-margin-ms", "200"],
        &["--heartbeat-ms", "200"],
    ),
    (
        "tuned: lease 120 ms, margin 30 ms, heartbeat 30 ms",
        &["--lease-ms", "120", "--lease-margin-ms", "30"],
        &["--heartbeat-ms", "30"],
    ),
];

/// keepalived's VRRP timers to compare with: (what, vrrp_version, advert_int).
const KEEPALIVED: [(&str, u8, &str); 2] = [
    ("keepalived 2.2, VRRPv2, advert_int 1", 2, "1"),
    ("keepalived 2.2, VRRPv3, advert_int 0.1", 3, "0.1"),
];

/// A keepalived.conf for director `name` (the same DR service on VIP
/// 10.0.0.100 as the fabric's, the same realservers; VRRP alone when
/// `ipvs` is false): both start BACKUP with nopreempt, `name` with
/// `priority`.
fn keepalived_conf(name: &str, priority: u8, version: u8, advert: &str, ipvs: bool) -> String {
    let rs = |ip: &str| {
        format!(
            "  real_server {ip} 80 {{\n    weight 1\n    TCP_CHECK {{\n      connect_timeout 1\n    }}\n  }}\n"
        )
    };
    let vrrp = format!(
        "global_defs {{\n  router_id {name}\n  vrrp_version {version}\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {DR_VIP}/32 dev eth0\n  }}\n}}\n"
    );
    if !ipvs {
        return vrrp;
    }
    format!(
        "{vrrp}virtual_server {DR_VIP} 80 {{\n  delay_loop 1\n  lb_algo rr\n  lb_kind DR\n  protocol TCP\n{}{}}}\n",
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
    f: Fabric,
    (version, advert): (u8, &str),
    (rounds, probe_secs, every_ms): (usize, u64, u64),
) -> anyhow::Result<Vec<Duration>> {
    use std::os::unix::process::CommandExt;
    let keepalived = lb_testkit::which("keepalived")
        .ok_or_else(|| anyhow::anyhow!("keepalived is not installed (scripts/setup.sh)"))?;
    let mut procs = Vec::new();
    for (name, priority) in [("d1", 150), ("d2", 100)] {
        let dir = f.dir.path().join(format!("keepalived-{name}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("keepalived.conf");
        std::fs::write(
            &conf,
            keepalived_conf(name, priority, version, advert, f.ipvs),
        )?;
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
        let probe = f.probe(&format!("http://{DR_VIP}/"), probe_secs, every_ms)?;
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
            println!("failover gaps ({what}): {gaps:?}");
            results.push((what.to_string(), gaps));
        }
        Err(e) => println!("{what}: {e}"),
    }
}

/// The VM's sets: IPVS, one controller, the client every 20 ms.
async fn in_vm(only: &str, results: &mut Vec<(String, Vec<Duration>)>) -> anyhow::Result<()> {
    for (timers, controller, director) in RUNS {
        if !timers.contains(only) {
            continue;
        }
        let (f, d1, d2) = Fabric::running_with(1, controller, director).await?;
        let gaps = host_loss_gaps(&f, ("d1", d1), ("d2", d2), (5, 10, 20)).await;
        record(results, &format!("host loss, {timers}"), gaps);
    }
    for (what, version, advert) in KEEPALIVED {
        if !what.contains(only) {
            continue;
        }
        let probe = if version == 2 { 12 } else { 6 };
        let f = Fabric::with_controllers(1, &[]).await?;
        f.create_services()?;
        f.realservers_ready().await?;
        let gaps = keepalived_gaps(f, (version, advert), (5, probe, 20)).await;
        record(results, &format!("host loss, {what}"), gaps);
    }
    Ok(())
}

/// The owner cut off from the controllers (nftables, both ways), `rounds`
/// times alternating between the directors: the client's gap each time,
/// and that nothing was held twice.
async fn partition_gaps(f: &Fabric, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let mut gaps = Vec::new();
    let (mut owner, mut standby) = ("d1", "d2");
    for round in 1..=rounds {
        f.director_live(owner).await?;
        f.director_live(standby).await?;
        f.prepare_cut(owner)?;
        let (w1, w2) = (
            f.vipwatch(owner, DR_VIP, 5)?,
            f.vipwatch(standby, DR_VIP, 5)?,
        );
        let probe = f.probe(&format!("http://{DR_VIP}/"), 5, 10)?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        f.cut(owner)?;
        f.wait_held(standby, &[DR_VIP], Duration::from_secs(4))
            .await?;
        let (seen, h1, h2) =
            tokio::task::spawn_blocking(move || (probe.finish(), w1.finish(), w2.finish())).await?;
        f.heal(owner)?;
        let both = lb_testkit::fabric::observe::overlaps(&h1, &h2);
        println!(
            "partition {round} ({owner} cut): {}; held twice: {both:?}",
            seen.summary()
        );
        anyhow::ensure!(both.is_empty() && seen.recovered(), "partition {round}");
        gaps.push(seen.gap());
        std::mem::swap(&mut owner, &mut standby);
    }
    Ok(gaps)
}

/// SIGTERM of the owner with the other director live, `rounds` times
/// alternating (the stopped one started again each time): the client's gap.
async fn sigterm_gaps(
    f: &Fabric,
    (d1, d2): (Proc, Proc),
    director: &[&str],
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut gaps = Vec::new();
    let (mut owner, mut standby) = (("d1", d1), ("d2", d2));
    for round in 1..=rounds {
        f.director_live(standby.0).await?;
        let probe = f.probe(&format!("http://{DR_VIP}/"), 4, 10)?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        lb_testkit::proc::signal(owner.1 .0.id(), "TERM");
        let mut stopping = owner.1;
        tokio::task::spawn_blocking(move || stopping.0.wait()).await??;
        let seen = tokio::task::spawn_blocking(move || probe.finish()).await?;
        println!(
            "SIGTERM {round} ({} -> {}): {}",
            owner.0,
            standby.0,
            seen.summary()
        );
        anyhow::ensure!(
            seen.recovered(),
            "SIGTERM {round}: clients not served again"
        );
        gaps.push(seen.gap());
        owner.1 = f.start_director(owner.0, director)?;
        std::mem::swap(&mut owner, &mut standby);
    }
    Ok(gaps)
}

/// The host's sets: no IPVS, three controllers, the client every 10 ms.
async fn native(only: &str, results: &mut Vec<(String, Vec<Duration>)>) -> anyhow::Result<()> {
    for (timers, controller, director) in RUNS {
        if !timers.contains(only) {
            continue;
        }
        {
            // One fabric at a time: they share the LAN's addresses.
            let (f, d1, d2) = Fabric::floating(controller, director, &[]).await?;
            let gaps = host_loss_gaps(&f, ("d1", d1), ("d2", d2), (7, 8, 10)).await;
            record(results, &format!("native, host loss, {timers}"), gaps);
        }
        let (f, d1, d2) = Fabric::floating(controller, director, &[]).await?;
        let gaps = partition_gaps(&f, 5).await;
        record(results, &format!("native, partition, {timers}"), gaps);
        let gaps = sigterm_gaps(&f, (d1, d2), director, 5).await;
        record(results, &format!("native, SIGTERM, {timers}"), gaps);
    }
    for (what, version, advert) in KEEPALIVED {
        if !what.contains(only) {
            continue;
        }
        let probe = if version == 2 { 10 } else { 6 };
        let f = Fabric::floating_hosts(&[]).await?;
        let gaps = keepalived_gaps(f, (version, advert), (7, probe, 10)).await;
        record(results, &format!("native, host loss, {what}"), gaps);
    }
    Ok(())
}

/// `seconds` at the default timers with both CPUs busy: the owner must keep
/// the VIP throughout (sampled every 10 ms), its epoch must not change and
/// the standby must never hold it. Failed requests are counted too (a
/// request unanswered for 300 ms on a starved machine need not be the
/// VIP's doing).
async fn soak(seconds: u64) -> anyhow::Result<()> {
    let (f, _d1, _d2) = Fabric::floating(&[], &[], &[]).await?;
    let before = f.owners()?;
    let busy: Vec<Proc> = (0..2)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .map(Proc)
        })
        .collect::<Result<_, _>>()?;
    let d1 = f.vipwatch("d1", DR_VIP, seconds)?;
    let d2 = f.vipwatch("d2", DR_VIP, seconds)?;
    let probe = f.probe(&format!("http://{DR_VIP}/"), seconds, 20)?;
    let (d1, d2, seen) =
        tokio::task::spawn_blocking(move || (d1.finish(), d2.finish(), probe.finish())).await?;
    drop(busy);
    let after = f.owners()?;
    let lapses = d1.len().saturating_sub(1);
    println!(
        "soak {seconds} s at the default timers, both CPUs busy: owners before {before:?}, after {after:?}"
    );
    println!(
        "soak: d1 held the VIP over {} interval(s) ({lapses} lapse(s)): {d1:?}; d2 held it {d2:?}; client: {}",
        d1.len(),
        seen.summary()
    );
    let steady = before == after && lapses == 0 && d2.is_empty();
    // The logs show why (the fabric prints them when dropped).
    f.failed.set(!steady);
    anyhow::ensure!(steady, "the soak saw a VIP move or lapse");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, seconds] = args.as_slice() {
        anyhow::ensure!(cmd == "soak", "usage: lb-failover-bench [soak SECONDS]");
        return soak(seconds.parse()?).await;
    }
    // LB_BENCH_SETS=text runs only the sets whose name contains it.
    let only = std::env::var("LB_BENCH_SETS").unwrap_or_default();
    let mut results = Vec::new();
    match lb_testkit::vm::in_vm() {
        true => in_vm(&only, &mut results).await?,
        false => native(&only, &mut results).await?,
    }
    println!();
    for (timers, gaps) in results {
        let ms = |d: &Duration| d.as_millis();
        println!(
            "{timers}: p50 {} ms, p90 {} ms, max {} ms over {} failovers",
            ms(&gaps[gaps.len() / 2]),
            ms(&gaps[(gaps.len() * 9 / 10).min(gaps.len() - 1)]),
            gaps.last().map_or(0, ms),
            gaps.len()
        );
    }
    Ok(())
}
