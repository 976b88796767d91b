//! lb-scale-bench: lbfabric at 10 to 10,000 services × 10 realservers
//! (issue #16). A benchmark, not a test: it prints figures and fails only
//! when something does not work at all.
//!
//! - **In the VM test bed** (a kernel with IPVS), for each N: the time to
//!   program the table from empty with `ipvsadm -R` and with `lb-director`
//!   (the same table, imported into one controller), in the same kernel; a
//!   configuration change (one realserver's weight) until the kernel shows
//!   it (written by a gRPC client, read by netlink from half the fastest
//!   change's time after the write on), p50/p99 over 50 changes after 5
//!   unmeasured ones, and the slowest five (and when the API answered, and
//!   when both it had and the kernel showed the change, p50/p99); the
//!   largest message the director's stream carried; the controller's and
//!   the director's RSS; the tasks that used the most CPU meanwhile.
//! - **On the host** (`--host`): the controller alone at N — the import,
//!   50 changes by lbctl (p50/p99), `service list -o json`, `status`,
//!   `realserver list`, its RSS; then a snapshot of the N services built
//!   by one controller and installed by a second added as a learner.
//!
//! ```sh
//! cargo build --workspace --bins
//! target/debug/lb-vm prepare
//! target/debug/lb-vm run -- $PWD/target/debug/lb-scale-bench --services 10,1000,10000
//! target/debug/lb-scale-bench --host --services 10000
//! ```
//!
//! `LB_SCALE_BENCH_LOGS=DIR` keeps, for each N, the controller's and the
//! director's logs and each change's timeline (`changes-N.tsv`: start
//! time, API answer, in the kernel), to line a slow change up with what
//! the processes did meanwhile (`RUST_LOG=info,lb_director=debug` for the
//! director's rounds, `LB_CONTROLLER_LOG=info,lb_controller=debug` for
//! each write's phases in the controller).
//!
//! Under the VM's emulated CPU everything is tens of times slower than
//! natively; compare the figures of one run with each other.
//!
//! The kernel's IPVS rate estimator costs a measurement at this scale.
//! Up to Linux 6.1 one timer walks every service and destination of a
//! namespace every 2 s, folding their per-CPU counters: ≈ 55 ms of the
//! VM's emulated CPU at 110,000 entries, which stalled whichever process of
//! the measurement it met (a change then took 60–80 ms instead of 20).
//! Since 6.2 kthreads spread that walk over the 2 s; the test bed boots
//! Debian's 6.12 (`scripts/setup.sh`), and the run prints the kernel it
//! ran on. The table `ipvsadm -R` made is kept until the end of the run,
//! but its namespace's estimator is stopped once the restore is timed
//! (`net.ipv4.vs.run_estimation=0`): it would only add work to the
//! fabric's measurement. The fabric's own namespace keeps its estimator,
//! as a director must (without it the kernel's counters stop too).
//!
//! Every change gives its realserver a weight it does not have (see
//! [`lb_testkit::scale::next_weight`]): a change the kernel already
//! shows is no measurement of the director.
//!
//! Each VM measurement runs in a network namespace of its own (IPVS keeps
//! its tables per namespace), created for it and deleted once its N is
//! measured; the next N waits until the kernel has torn it down: a kernel
//! never flushed, and no N measured beside the tables of the one before.
//! The kernel keeps deleted destinations in a per-namespace trash for
//! minutes, and every destination added walks it,
//! so programming 100,000 destinations right after `ipvsadm -C` of as many
//! is several times slower, for `ipvsadm -R` and lbfabric alike — a
//! measurement after another's flush would time the trash.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lb_director::ipvs::wire::IPPROTO_TCP;
use lb_director::ipvs::{Ipvs, ServiceKey};
use lb_proto::pb;
use lb_testkit::fabric::{VM_CONTROLLER_TIMERS, VM_DIRECTOR_HEARTBEAT};
use lb_testkit::proc::Proc;
use lb_testkit::scale::{
    cpu_of, delete_namespaces, ipvsadm_table, next_weight, rss_mib, shown, summary, target, Tasks,
    Weights,
};
use lb_testkit::{bin, lbctl_ok, ControllerProc};

#[derive(Debug, Parser)]
struct Args {
    /// Numbers of services (each with 10 realservers), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    services: Vec<usize>,
    /// The controller part only, on this host (no IPVS needed).
    #[arg(long)]
    host: bool,
    /// Changes measured per N.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Internal: one VM measurement, run by the benchmark itself inside
    /// the namespace made for it.
    #[arg(long, hide = true)]
    inside: Option<Inside>,
    /// Internal: what `ipvsadm -R` took at this N, for the fabric's line.
    #[arg(long, hide = true, default_value_t = 0.0)]
    ipvsadm_secs: f64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Inside {
    Ipvsadm,
    Fabric,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // As the daemons do (see `no_huge_pages`): at 10,000 services this
    // process holds the table too, and khugepaged collapsing its heap
    // took CPU from the changes it measures.
    lb_proto::process::no_huge_pages();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(inside) = args.inside {
        let n = args.services.first().copied().unwrap_or(10);
        let dir = tempfile::tempdir()?;
        return match inside {
            Inside::Ipvsadm => {
                let took = restore(n, dir.path())?;
                println!("ipvsadm_secs={}", took.as_secs_f64());
                Ok(())
            }
            Inside::Fabric => rt.block_on(vm(n, args.changes, args.ipvsadm_secs, dir.path())),
        };
    }
    if !args.host {
        // The figures depend on it (see the module doc on the estimator).
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        println!("VM kernel: Linux {}", release.trim());
    }
    let mut namespaces = Vec::new();
    for &n in &args.services {
        let dir = tempfile::tempdir()?;
        let figures = if args.host {
            rt.block_on(host(n, args.changes, dir.path()))
        } else {
            in_namespaces(n, args.changes, &mut namespaces)
        };
        if let Err(e) = figures {
            println!("N = {n}: {e:#}");
        }
        // Each N in a kernel as clean as the first had: the namespaces of
        // the N before, left up, kept their estimator kthreads and tables,
        // and whichever N came later (10,000, in the usual order) was
        // measured in a busier kernel (two runs of 10000,10 showed it).
        // Deleted once measured, and waited for: tearing down 100,000
        // destinations is kernel work that must not overlap the next
        // `ipvsadm -R` or measurement.
        match delete_namespaces(&mut namespaces) {
            Some(Ok(took)) => println!("(namespaces torn down in {:.1} s)", took.as_secs_f64()),
            Some(Err(waited)) => {
                println!("(IPVS estimators still ran {waited:?} after `ip netns del`)")
            }
            None => {}
        }
    }
    Ok(())
}

/// Runs this benchmark again as `--inside what` in a new namespace, which
/// is recorded in `namespaces`; returns its standard output.
fn inside(
    what: &str,
    n: usize,
    extra: &[String],
    namespaces: &mut Vec<String>,
) -> anyhow::Result<String> {
    let ns = format!("lbbench-{what}-{n}-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &ns]).status()?;
    if !made.success() {
        bail!("ip netns add {ns} failed");
    }
    namespaces.push(ns.clone());
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe()?)
        .args(["--inside", what, "--services", &n.to_string()])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{what} at N = {n}: {}", text.trim());
    }
    Ok(text)
}

/// `ipvsadm -R` in a fresh namespace, then lbfabric in another.
fn in_namespaces(n: usize, changes: usize, namespaces: &mut Vec<String>) -> anyhow::Result<()> {
    if !lb_testkit::vm::in_vm() {
        bail!("run in the VM test bed (lb-vm run -- …), or with --host");
    }
    let restored = inside("ipvsadm", n, &[], namespaces)?;
    let secs = restored
        .lines()
        .find_map(|l| l.strip_prefix("ipvsadm_secs="))
        .context("ipvsadm -R: no time printed")?
        .trim()
        .to_string();
    let extra = [
        "--changes".to_string(),
        changes.to_string(),
        "--ipvsadm-secs".to_string(),
        secs,
    ];
    print!("{}", inside("fabric", n, &extra, namespaces)?);
    std::io::stdout().flush()?;
    Ok(())
}

/// A new namespace's loopback is down, and until an interface is up it
/// has no routing table: the kernel then refuses every destination
/// ("address not unicast").
fn loopback_up() -> anyhow::Result<()> {
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    if !up.success() {
        bail!("ip link set lo up failed");
    }
    Ok(())
}

/// Programs the table of `n` services with `ipvsadm -R` from empty, checks
/// it, and returns how long the restore took.
fn restore(n: usize, dir: &Path) -> anyhow::Result<Duration> {
    loopback_up()?;
    let table = ipvsadm_table(n, 10);
    let mut want = table.clone();
    want.sort();
    let rules = dir.join("restore");
    std::fs::write(&rules, table.join("\n") + "\n")?;
    let t = Instant::now();
    let restored = Command::new("ipvsadm")
        .arg("-R")
        .stdin(std::fs::File::open(&rules)?)
        .status()?;
    let took = t.elapsed();
    if !restored.success() || saved()? != want {
        bail!("ipvsadm -R did not program the table");
    }
    // Measured: this table only waits for the end of the run now.
    std::fs::write("/proc/sys/net/ipv4/vs/run_estimation", "0")
        .context("stopping the kernel's estimator: net.ipv4.vs.run_estimation")?;
    Ok(took)
}

/// Starts a one-node controller with the table of `n` services imported;
/// returns it and how long the import took.
fn controller_with(
    n: usize,
    dir: &Path,
    flags: &[&str],
) -> anyhow::Result<(ControllerProc, Duration)> {
    let node = ControllerProc::start(1, dir, true, flags)?;
    let file = dir.join("rules");
    std::fs::write(&file, ipvsadm_table(n, 10).join("\n") + "\n")?;
    let t = Instant::now();
    lbctl_ok(&node.addr, &["import", "ipvsadm", &file.to_string_lossy()])?;
    Ok((node, t.elapsed()))
}

async fn host(n: usize, changes: usize, dir: &Path) -> anyhow::Result<()> {
    let (node, imported) = controller_with(n, dir, &[])?;
    node.wait_leader().await?;
    let a = node.addr.clone();
    let mut writes = Vec::new();
    let mut weights = Weights::new();
    for i in 0..changes {
        let (name, _, rs) = target(i, n);
        let w = next_weight(&mut weights, &name, &rs).to_string();
        let t = Instant::now();
        lbctl_ok(&a, &["realserver", "update", &name, &rs, "--weight", &w])?;
        writes.push(t.elapsed());
    }
    let timed = |args: &[&str]| -> anyhow::Result<Duration> {
        let t = Instant::now();
        lbctl_ok(&a, args)?;
        Ok(t.elapsed())
    };
    // Memory in the steady state, before the listings' transient answers.
    let steady = node.pid().map_or(0.0, rss_mib);
    let list = timed(&["service", "list", "-o", "json"])?;
    let status = timed(&["status"])?;
    let realservers = timed(&["realserver", "list"])?;
    let rss = node.pid().map_or(0.0, rss_mib);
    drop(node);
    let snapshot = snapshot_figures(n, &dir.join("snapshot")).await?;
    println!(
        "host, N = {n} services × 10 realservers: import {imported:?}; one change by lbctl: {}; \
         service list -o json {list:?}; status {status:?}; realserver list {realservers:?}; \
         controller RSS {steady:.0} MiB ({:.0} bytes per realserver), {rss:.0} MiB after the \
         listings; {snapshot}",
        summary(writes),
        steady * 1024.0 * 1024.0 / (n * 10) as f64
    );
    Ok(())
}

/// The value of `key=` in the first line of `log` that says `what`.
fn logged<'a>(log: &'a str, what: &str, key: &str) -> Option<&'a str> {
    let line = log.lines().find(|l| l.contains(what))?;
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// A snapshot of the table of `n` services: built by a controller that
/// snapshots after every entry and keeps no log behind it, then shipped
/// to and installed by a second node added as a learner (which can only
/// catch up from it). Returns the line of figures.
async fn snapshot_figures(n: usize, dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let every = ["--snapshot-every", "1", "--keep-logs", "0"];
    let (first, _) = controller_with(n, dir, &every)?;
    // The snapshot taken after the import (earlier ones hold nothing).
    let big = |line: &str| {
        line.contains("snapshot built")
            && line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bytes="))
                .and_then(|b| b.parse::<usize>().ok())
                .is_some_and(|b| b > 100 * n)
    };
    let t = Instant::now();
    let built_line = loop {
        if let Some(l) = first.log_text().lines().find(|l| big(l)) {
            break l.to_string();
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("no snapshot of the imported services in 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let built = logged(&built_line, "snapshot built", "took_ms=").unwrap_or("?");
    let bytes = logged(&built_line, "snapshot built", "bytes=").unwrap_or("?");
    let second = ControllerProc::start(2, dir, false, &every)?;
    let t = Instant::now();
    lbctl_ok(&first.addr, &["cluster", "add-learner", "2", &second.addr])?;
    let installed = wait_logged(&second, "snapshot installed", "took_ms=").await?;
    let caught_up = t.elapsed();
    let log = second.log_text();
    let shipped = logged(&log, "snapshot installed", "bytes=").unwrap_or("?");
    // What a node restored from a snapshot holds (no import went through it).
    let learner = second.pid().map_or(0.0, rss_mib);
    Ok(format!(
        "snapshot {bytes} bytes, built in {built} ms; {shipped} bytes installed in {installed} ms \
         by a new learner (caught up {caught_up:?} after add-learner; its RSS {learner:.0} MiB)"
    ))
}

/// Waits (up to 5 minutes) for `node`'s log to say `what`; returns its `key=`.
async fn wait_logged(node: &ControllerProc, what: &str, key: &str) -> anyhow::Result<String> {
    let t = Instant::now();
    loop {
        if let Some(v) = logged(&node.log_text(), what, key) {
            return Ok(v.to_string());
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "node {}: no \"{what}\" in its log in 5 minutes",
                node.node_id
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ipvsadm(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ipvsadm").args(args).output()?;
    if !out.status.success() {
        bail!("ipvsadm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lines of `ipvsadm -Sn`, sorted.
fn saved() -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> = ipvsadm(&["-Sn"])?.lines().map(String::from).collect();
    v.sort();
    Ok(v)
}

/// Changes made before the measured ones (see [`vm`]).
const WARM_UP: usize = 5;

/// The IPVS key of the TCP service at `vaddr` (`VIP:port`).
fn endpoint_key(vaddr: &str) -> anyhow::Result<ServiceKey> {
    let a: std::net::SocketAddr = vaddr.parse()?;
    Ok(ServiceKey::Endpoint {
        addr: a.ip(),
        port: a.port(),
        protocol: IPPROTO_TCP,
    })
}

/// lbfabric in this (fresh) namespace: a controller with the table
/// imported, lb-director programming it from empty, then the changes.
async fn vm(n: usize, changes: usize, ipvsadm_secs: f64, dir: &Path) -> anyhow::Result<()> {
    let table = ipvsadm_table(n, 10);
    let mut want = table.clone();
    want.sort();
    let by_ipvsadm = Duration::from_secs_f64(ipvsadm_secs);
    loopback_up()?;

    // lb-director, from empty.
    let (node, imported) = controller_with(n, dir, &VM_CONTROLLER_TIMERS)?;
    // The controller's CPU from here on (the import is before).
    let cpu_secs = |pid| cpu_of(pid).as_secs_f64();
    let controller_cpu = node.pid().map_or(0.0, cpu_secs);
    let log_path = dir.join("director.log");
    let log = std::fs::File::create(&log_path)?;
    let t = Instant::now();
    let director = Proc(
        Command::new(bin("lb-director"))
            .args([
                "--controller",
                &node.addr,
                "--node-id",
                "d1",
                "--interface",
                "lo",
            ])
            .args(VM_DIRECTOR_HEARTBEAT)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("NO_COLOR", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting lb-director")?,
    );
    let done = format!("changes={} failed=0", table.len());
    let by_director = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("reconciled") && l.contains(&done))
        {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("lb-director did not program the table in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu_programming = (
        node.pid().map_or(0.0, cpu_secs) - controller_cpu,
        cpu_secs(director.0.id()),
    );
    if saved()? != want {
        bail!("lb-director's table differs from the configuration");
    }

    // One change at a time, from the API call until the kernel shows it:
    // written with a gRPC client and read back over netlink, both in this
    // process — spawning lbctl or ipvsadm costs 0.1–0.3 s each under the
    // emulated CPU, noise that would swamp what is measured. The kernel is
    // read beside the call, not after its answer: the director
    // gets a change as soon as the controller has applied it, which may be
    // before the controller has stored it and answered.
    let mut admin = node.admin().await?;
    let kernel = Arc::new(Ipvs::open()?);
    let mut latencies = Vec::new();
    // When the API answered, and when both it had and the kernel showed
    // the change; each change's timeline for LB_SCALE_BENCH_LOGS.
    let (mut answered, mut both) = (Vec::new(), Vec::new());
    let mut timeline =
        String::from("change\tstart_unix_us\tanswered_us\tin_kernel_us\tpolls\tslowest_poll_us\n");
    // The first changes come while the director still settles after
    // programming (its first counters, its first sweep): they are made,
    // not measured, at every N alike.
    let mut weights = Weights::new();
    // Who ran during the measured changes (kernel threads too).
    let mut window = (Tasks::read(), Instant::now());
    // The fastest change so far: the kernel is read from half of it on
    // (see `shown`); how many measured changes the first read showed.
    let (mut fastest, mut at_first_read) = (None::<Duration>, 0);
    for i in 0..WARM_UP + changes {
        let (name, vaddr, rs) = target(i, n);
        let (key, dest) = (endpoint_key(&vaddr)?, rs.parse::<std::net::SocketAddr>()?);
        let w = next_weight(&mut weights, &name, &rs);
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let t = Instant::now();
        let given_up = Arc::new(AtomicBool::new(false));
        let watch = {
            let (kernel, given_up) = (kernel.clone(), given_up.clone());
            let quiet = fastest.map_or(Duration::ZERO, |f| f / 2);
            tokio::task::spawn_blocking(move || {
                shown(&kernel, &key, (dest, w), (t, quiet), &given_up)
            })
        };
        let written = admin
            .update_real_server(pb::UpdateRealServerRequest {
                service: name,
                address: dest.ip().to_string(),
                port: dest.port().into(),
                weight: Some(w),
                ..Default::default()
            })
            .await;
        let acked = t.elapsed();
        if let Err(e) = written {
            given_up.store(true, Ordering::Relaxed);
            let _ = watch.await;
            return Err(e.into());
        }
        let seen = watch.await??;
        fastest = Some(fastest.map_or(seen.after, |f: Duration| f.min(seen.after)));
        if i + 1 == WARM_UP {
            window = (Tasks::read(), Instant::now());
        }
        if i >= WARM_UP {
            at_first_read += usize::from(seen.at_first_read);
            latencies.push(seen.after);
            answered.push(acked);
            both.push(seen.after.max(acked));
        }
        timeline += &format!(
            "{i}\t{}\t{}\t{}\t{}\t{}\n",
            wall.as_micros(),
            acked.as_micros(),
            seen.after.as_micros(),
            seen.polls,
            seen.slowest_poll.as_micros()
        );
    }
    let ran = window.0.busiest(&Tasks::read(), 6);
    let ran: Vec<String> = ran
        .iter()
        .map(|(name, cpu)| format!("{name} {cpu:?}"))
        .collect();
    let ran = format!(
        "CPU during the measured changes ({:?}): {}",
        window.1.elapsed(),
        ran.join(", ")
    );
    if let Some(keep) = std::env::var_os("LB_SCALE_BENCH_LOGS") {
        // Both logs and the changes' timeline, to line them up afterwards.
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep)?;
        std::fs::copy(&log_path, keep.join(format!("director-{n}.log")))?;
        std::fs::write(keep.join(format!("controller-{n}.log")), node.log_text())?;
        std::fs::write(keep.join(format!("changes-{n}.tsv")), &timeline)?;
    }
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let snapshot = text
        .lines()
        .find(|l| l.contains("configuration received in full"))
        .unwrap_or("(no snapshot line)");
    let largest = snapshot
        .split_whitespace()
        .find_map(|w| w.strip_prefix("largest_bytes="))
        .unwrap_or("?");
    // Which changes were slow, and when: at the start (the director still
    // busy after programming) or spread out (periodic work)?
    let mut slowest: Vec<(usize, Duration)> = latencies.iter().copied().enumerate().collect();
    slowest.sort_by_key(|s| std::cmp::Reverse(s.1));
    let slowest: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|(i, d)| format!("#{} {:.1} ms", i + WARM_UP, d.as_secs_f64() * 1e3))
        .collect();
    let (crss, drss) = (node.pid().map_or(0.0, rss_mib), rss_mib(director.0.id()));
    println!(
        "VM, N = {n} services × 10 realservers ({} table lines): from empty, ipvsadm -R {by_ipvsadm:?}, \
         lb-director {by_director:?} (ratio {:.2}; after an import of {imported:?}); one change \
         by the API until the kernel shows it: {} (slowest: {}; shown at the first read of the \
         kernel, so at most that: {at_first_read}; the API answered: {}; both the API answered and the kernel \
         shows it: {}); the director's largest message {largest} bytes \
         (its snapshot: {}); RSS controller {crss:.0} MiB, director {drss:.0} MiB; CPU while \
         programming: controller {:.1} s, director {:.1} s; {ran}",
        table.len(),
        by_ipvsadm.as_secs_f64() / by_director.as_secs_f64(),
        summary(latencies),
        slowest.join(", "),
        summary(answered),
        summary(both),
        snapshot.split("snapshot)").nth(1).unwrap_or("").trim(),
        cpu_programming.0,
        cpu_programming.1,
    );
    std::io::stdout().flush()?;
    drop(director);
    Ok(())
}
