//! lb-failover-bench: the client's gap when a director host is lost, when
//! the owner is cut off from the controllers, and when it is stopped
//! (SIGTERM), at the shipped timers and at tuned ones, and — in the same
//! place, topology and client — with keepalived 2.2 on both directors
//! (VRRPv2 with advert_int 1, VRRPv3 with advert_int 0.1; see
//! [`keepalived`] for its versions of the faults). A benchmark, not a test: it prints the
//! figures (each failover's gap, the p50 per timer set) and fails only when
//! the fabric does not fail over at all. Two places
//! (`scripts/failover-bench.sh` runs both):
//!
//! - **in the VM test bed**, with IPVS (DR to two realservers), at the
//!   timers given below;
//! - **natively on the host**, in network namespaces, at the real timers:
//!   the directors run `--no-ipvs` and a proxy on each answers on the VIP
//!   (keepalived runs VRRP alone, as for a floating VIP). Three
//!   controllers; the client asks every 10 ms. `LB_BENCH_SETS=text` runs
//!   the sets whose label contains it (`SIGTERM`, `defaults:`, `VRRPv3`).
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

mod keepalived;

use keepalived::Keepalived;

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
        // Timers the emulated CPU cannot hold may not even get the fabric
        // running: said, and the other sets still run.
        let gaps = match Fabric::running_with(1, controller, director).await {
            Ok((f, d1, d2)) => host_loss_gaps(&f, ("d1", d1), ("d2", d2), (5, 10, 20)).await,
            Err(e) => Err(e.context("the fabric did not come up")),
        };
        record(results, &format!("host loss, {timers}"), gaps);
    }
    for (what, version, advert) in keepalived::SETS {
        if !what.contains(only) {
            continue;
        }
        let probe = if version == 2 { 12 } else { 6 };
        let f = Fabric::with_controllers(1, &[]).await?;
        f.create_services()?;
        f.realservers_ready().await?;
        let mut k = Keepalived::start(&f, (version, advert)).await?;
        let gaps = k.host_loss((5, probe, 20)).await;
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
/// `only` picks sets by a part of their label ("SIGTERM", "defaults:",
/// "keepalived").
async fn native(only: &str, results: &mut Vec<(String, Vec<Duration>)>) -> anyhow::Result<()> {
    for (timers, controller, director) in RUNS {
        let label = |what: &str| format!("native, {what}, {timers}");
        if label("host loss").contains(only) {
            // One fabric at a time: they share the LAN's addresses.
            let (f, d1, d2) = Fabric::floating(controller, director, &[]).await?;
            let gaps = host_loss_gaps(&f, ("d1", d1), ("d2", d2), (7, 8, 10)).await;
            record(results, &label("host loss"), gaps);
        }
        let (partition, sigterm) = (label("partition"), label("SIGTERM"));
        if !partition.contains(only) && !sigterm.contains(only) {
            continue;
        }
        let (f, d1, d2) = Fabric::floating(controller, director, &[]).await?;
        if partition.contains(only) {
            record(results, &partition, partition_gaps(&f, 5).await);
        }
        if sigterm.contains(only) {
            record(
                results,
                &sigterm,
                sigterm_gaps(&f, (d1, d2), director, 5).await,
            );
        }
    }
    for (what, version, advert) in keepalived::SETS {
        let label = |scenario: &str| format!("native, {scenario}, {what}");
        if !["host loss", "partition", "SIGTERM"]
            .iter()
            .any(|s| label(s).contains(only))
        {
            continue;
        }
        // VRRPv2 takes over after three missed adverts of a second.
        let probe = if version == 2 { 10 } else { 6 };
        let f = Fabric::floating_hosts(&[]).await?;
        let mut k = Keepalived::start(&f, (version, advert)).await?;
        if label("host loss").contains(only) {
            record(
                results,
                &label("host loss"),
                k.host_loss((7, probe, 10)).await,
            );
        }
        if label("partition").contains(only) {
            record(results, &label("partition"), k.partition(5, probe).await);
        }
        if label("SIGTERM").contains(only) {
            record(results, &label("SIGTERM"), k.sigterm(5, 4).await);
        }
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
