//! lb-failover-bench: the client's gap when a director host is lost, at the
//! shipped timers and at tuned ones. A benchmark, not a test: it prints the
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

use lb_testkit::fabric::{host_loss_gaps, Fabric};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        lb_testkit::vm::in_vm(),
        "this needs IPVS: run scripts/failover-bench.sh, which uses the VM test bed"
    );
    let mut results = Vec::new();
    for (timers, controller, director) in RUNS {
        let (f, d1, d2) = Fabric::running_with(1, controller, director).await?;
        let mut gaps = host_loss_gaps(&f, ("d1", d1), ("d2", d2), (5, 6, 20)).await?;
        gaps.sort();
        println!("host-loss failover gaps ({timers}): {gaps:?}");
        results.push((timers, gaps));
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
