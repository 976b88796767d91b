//! Generated tables for the scale tests and benchmarks (issue #16), and
//! the kernel read until it shows a change.

use std::collections::HashMap;
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
    /// The first read showed it already: `after` is then only an upper
    /// bound (the change came within the quiet start, see [`shown`]).
    pub at_first_read: bool,
}

/// Reads `key`'s destinations until `dest` has `weight`, from `since` (the
/// write) plus `quiet`; stops when `given_up` (the write failed).
///
/// `quiet`: no change reaches the kernel that fast (the caller passes half
/// the fastest it saw), so reading then would only take a CPU from the
/// processes being measured. Reading from the write on, the bench used as
/// much of the VM's CPU as the controller did (0.4 s in 0.65 s), and with
/// two vCPUs for the bench, the controller and the director, every change
/// waited for a CPU somewhere.
pub fn shown(
    kernel: &Ipvs,
    key: &ServiceKey,
    (dest, weight): (std::net::SocketAddr, u32),
    (since, quiet): (Instant, Duration),
    given_up: &AtomicBool,
) -> anyhow::Result<Shown> {
    let (mut polls, mut slowest_poll) = (0, Duration::ZERO);
    if let Some(wait) = (since + quiet).checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
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
                at_first_read: polls == 1,
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

/// Every task's CPU time so far (user + system) by PID, with its name,
/// kernel threads included: two readings around a measurement name who ran
/// during it — which a slow spell under the VM's emulated CPU otherwise
/// leaves unexplained.
pub struct Tasks(HashMap<u32, (String, Duration)>);

impl Tasks {
    /// Reads `/proc/<pid>/stat` of every task now.
    pub fn read() -> Tasks {
        let pids = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
        Tasks(
            pids.filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                Some((pid, task_cpu(&stat)?))
            })
            .collect(),
        )
    }

    /// The `n` tasks that used the most CPU from this reading to `later`,
    /// busiest first; a task started in between counts from zero. Kernel
    /// workers are named by their last work item, as `ps` shows them.
    pub fn busiest(&self, later: &Tasks, n: usize) -> Vec<(String, Duration)> {
        let mut used: Vec<(String, Duration)> = later
            .0
            .iter()
            .map(|(pid, (name, cpu))| {
                let before = self.0.get(pid).map_or(Duration::ZERO, |(_, c)| *c);
                (name.clone(), cpu.saturating_sub(before))
            })
            .filter(|(_, d)| !d.is_zero())
            .collect();
        used.sort_by_key(|u| std::cmp::Reverse(u.1));
        used.truncate(n);
        used
    }
}

/// CPU time `pid` has used so far (user + system); zero when it is gone.
pub fn cpu_of(pid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| task_cpu(&stat))
        .map_or(Duration::ZERO, |(_, cpu)| cpu)
}

/// A task's name and CPU time from its `/proc/<pid>/stat` line. The name
/// sits in parentheses and may hold spaces; utime and stime are fields 14
/// and 15, in clock ticks of 10 ms on Linux.
fn task_cpu(stat: &str) -> Option<(String, Duration)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // Fields 14 and 15 of the line are 11 and 12 after the name.
    Some((name, Duration::from_millis((ticks(11)? + ticks(12)?) * 10)))
}

/// A process's resident memory in MiB (0 when it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The `p` quantile of `sorted` (nearest rank: p99 of 50 is the largest).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// "p50 …, p99 … (n = …)" of `d`.
pub fn summary(mut d: Vec<Duration>) -> String {
    d.sort();
    format!(
        "p50 {:?}, p99 {:?} (n = {})",
        percentile(&d, 0.5),
        percentile(&d, 0.99),
        d.len()
    )
}

/// How many IPVS estimator kthreads (`ipvs-e:<net>:<n>`) run. A namespace
/// whose services have rate estimation has at least one, until the kernel
/// has torn the namespace down after `ip netns del` — its services and
/// destinations flushed first.
fn ipvs_estimators() -> usize {
    let tasks = Tasks::read().0;
    tasks
        .values()
        .filter(|(name, _)| name.starts_with("ipvs-e:"))
        .count()
}

/// Deletes `namespaces` (`None`: there were none) and waits until the
/// kernel has torn them down — no IPVS estimator left — for ten minutes
/// at most (`Err`: still there then).
pub fn delete_namespaces(namespaces: &mut Vec<String>) -> Option<Result<Duration, Duration>> {
    if namespaces.is_empty() {
        return None;
    }
    for ns in namespaces.drain(..) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status();
    }
    let t = Instant::now();
    while ipvs_estimators() > 0 {
        if t.elapsed() > Duration::from_secs(600) {
            return Some(Err(t.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Ok(t.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_s_name_may_hold_spaces_and_parentheses() {
        let stat = "42 (tokio (rt) worker) S 1 42 42 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 4 0";
        let (name, cpu) = task_cpu(stat).expect("parsed");
        assert_eq!(name, "tokio (rt) worker");
        assert_eq!(cpu, Duration::from_millis(420));
        assert_eq!(task_cpu("42 (cut short) S 1"), None);
    }

    #[test]
    fn this_process_shows_among_the_busiest_after_spinning() {
        let me = std::process::id();
        let before = Tasks::read();
        // Spin until this process has used 200 ms of CPU (however busy the
        // machine), or give up after 30 s of wall time.
        let (start, t) = (cpu_of(me), Instant::now());
        let mut x = 0u64;
        while cpu_of(me) < start + Duration::from_millis(200)
            && t.elapsed() < Duration::from_secs(30)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let busiest = before.busiest(&Tasks::read(), usize::MAX);
        let name = std::fs::read_to_string("/proc/self/comm").expect("comm");
        assert!(
            busiest
                .iter()
                .any(|(n, cpu)| n == name.trim() && *cpu >= Duration::from_millis(200)),
            "{busiest:?}"
        );
        assert!(busiest.windows(2).all(|w| w[0].1 >= w[1].1), "{busiest:?}");
    }
}
