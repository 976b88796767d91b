//! Generated tables for the scale tests and benchmarks (issue #16), and
//! the kernel read until it shows a change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use lb_director::ipvs::{Ipvs, ServiceKey};

/// An `ipvsadm -Sn` table, one line per entry: `n` TCP services, ten per
/// VIP (ports 8000–8009), each with `realservers` direct-routing
/// realservers of weight 1. `lbctl import ipvsadm` names the first service
/// `vs-10.100.0.0-8000-tcp`.
pub fn ipvsadm_table(n: usize, realservers: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n * (1 + realservers));
    for i in 0..n {
        let (vaddr, rs) = (service_address(i), |r| realserver_address(i, r));
        out.push(format!("-A -t {vaddr} -s wlc"));
        out.extend((0..realservers).map(|r| format!("-a -t {vaddr} -r {} -g -w 1", rs(r))));
    }
    out
}

/// The `VIP:port` of the table's `i`-th service.
pub fn service_address(i: usize) -> String {
    let vip = format!(
        "10.{}.{}.{}",
        100 + i / 10 / 65_536,
        i / 10 / 256 % 256,
        i / 10 % 256
    );
    format!("{vip}:{}", 8000 + i % 10)
}

/// The `address:port` of the `i`-th service's `r`-th realserver.
pub fn realserver_address(i: usize, r: usize) -> String {
    format!("192.168.{r}.{}:{}", 1 + i % 250, 8000 + i % 10)
}

/// Each realserver's weight as the changes left it (the table's are 1).
pub type Weights = std::collections::HashMap<(String, String), u32>;

/// The weight the next change gives realserver `rs` of service `name`:
/// always another than it has (2 to 9, round), so that every change is
/// one in the kernel too. With 10 services the changes come back to the
/// same realservers every 10; a weight cycle of 5 would then set, from
/// the eleventh on, the weight each already had: the kernel showed it
/// before the director did anything, and N = 10 timed the API alone.
pub fn next_weight(weights: &mut Weights, name: &str, rs: &str) -> u32 {
    let w = weights
        .entry((name.to_string(), rs.to_string()))
        .or_insert(1);
    *w = if *w >= 9 { 2 } else { *w + 1 };
    *w
}

/// The service (its lbfabric name, its `VIP:port`) and realserver the
/// `i`-th change updates: spread over the table.
pub fn target(i: usize, n: usize) -> (String, String, String) {
    let j = (i * 7919) % n;
    let (vaddr, rs) = (service_address(j), realserver_address(j, i % 10));
    let (vip, port) = vaddr.split_once(':').unwrap_or((&vaddr, ""));
    (format!("vs-{vip}-{port}-tcp"), vaddr.clone(), rs)
}

/// Between two reads of the kernel table while a change is awaited: the
/// bench sees a change at most this and one read after the kernel has it.
const POLL_PAUSE: Duration = Duration::from_micros(500);

/// When the kernel showed a change, and what reading it cost.
pub struct Shown {
    /// From the write.
    pub after: Duration,
    pub polls: u32,
    pub slowest_poll: Duration,
}

/// Reads `key`'s destinations until `dest` has `weight`, from `since` (the
/// write); stops when `given_up` (the write failed).
pub fn shown(
    kernel: &Ipvs,
    key: &ServiceKey,
    (dest, weight): (std::net::SocketAddr, u32),
    since: Instant,
    given_up: &AtomicBool,
) -> anyhow::Result<Shown> {
    let (mut polls, mut slowest_poll) = (0, Duration::ZERO);
    loop {
        let read = Instant::now();
        let now = kernel.dests(key)?;
        polls += 1;
        slowest_poll = slowest_poll.max(read.elapsed());
        if now
            .iter()
            .any(|d| d.spec.key() == (dest.ip(), dest.port()) && d.spec.weight == weight)
        {
            return Ok(Shown {
                after: since.elapsed(),
                polls,
                slowest_poll,
            });
        }
        if given_up.load(Ordering::Relaxed) {
            bail!("the write of {dest}'s weight failed");
        }
        if since.elapsed() > Duration::from_secs(300) {
            bail!("{dest}'s weight {weight} did not reach the kernel in 5 minutes");
        }
        // A short pause, and a blocking one: tokio's timer counts whole
        // milliseconds. A read costs ≈ 0.6 ms of the VM's CPU; with
        // 2 ms pauses the bench saw a change up to 5 ms after the
        // kernel had it, noise as large as what it measures. The daemons
        // run at nice -10, this process at 0: the reads give way to them.
        std::thread::sleep(POLL_PAUSE);
    }
}
