//! lb-scale-bench: lbfabric at 10 to 10,000 services × 10 realservers
//! (issue #16). A benchmark, not a test: it prints figures and fails only
//! when something does not work at all.
//!
//! - **In the VM test bed** (a kernel with IPVS), for each N: the time to
//!   program the table from empty with `ipvsadm -R` and with `lb-director`
//!   (the same table, imported into one controller), in the same kernel; a
//!   configuration change (one realserver's weight, by lbctl) until the
//!   kernel shows it, p50/p99 over 50 changes; the largest message the
//!   director's stream carried; the controller's and the director's RSS.
//! - **On the host** (`--host`): the controller alone at N — the import,
//!   50 changes by lbctl (p50/p99), `service list -o json`, `status`,
//!   `realserver list`, and its RSS.
//!
//! ```sh
//! cargo build --workspace --bins
//! target/debug/lb-vm prepare
//! target/debug/lb-vm run -- $PWD/target/debug/lb-scale-bench --services 10,1000,10000
//! target/debug/lb-scale-bench --host --services 10000
//! ```
//!
//! Under the VM's emulated CPU everything is tens of times slower than
//! natively; compare the figures of one run with each other.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lb_testkit::fabric::{VM_CONTROLLER_TIMERS, VM_DIRECTOR_HEARTBEAT};
use lb_testkit::proc::Proc;
use lb_testkit::scale::ipvsadm_table;
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for &n in &args.services {
        let dir = tempfile::tempdir()?;
        let figures = if args.host {
            rt.block_on(host(n, args.changes, dir.path()))
        } else {
            rt.block_on(vm(n, args.changes, dir.path()))
        };
        if let Err(e) = figures {
            println!("N = {n}: {e:#}");
        }
    }
    Ok(())
}

/// The resident memory of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut d: Vec<Duration>) -> String {
    d.sort();
    format!(
        "p50 {:?}, p99 {:?} (n = {})",
        percentile(&d, 0.5),
        percentile(&d, 0.99),
        d.len()
    )
}

/// The service (its lbfabric name, its `VIP:port`) and realserver the
/// `i`-th change updates: spread over the table.
fn target(i: usize, n: usize) -> (String, String, String) {
    let j = (i * 7919) % n;
    let line = &ipvsadm_table(j + 1, 10)[j * 11 + 1 + i % 10];
    // "-a -t VIP:PORT -r RS:PORT -g -w 1"
    let words: Vec<&str> = line.split_whitespace().collect();
    let (vaddr, rs) = (words[2].to_string(), words[4].to_string());
    let (vip, port) = vaddr.split_once(':').unwrap_or((&vaddr, ""));
    (format!("vs-{vip}-{port}-tcp"), vaddr.clone(), rs)
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
    for i in 0..changes {
        let (name, _, rs) = target(i, n);
        let w = (2 + i % 5).to_string();
        let t = Instant::now();
        lbctl_ok(&a, &["realserver", "update", &name, &rs, "--weight", &w])?;
        writes.push(t.elapsed());
    }
    let timed = |args: &[&str]| -> anyhow::Result<Duration> {
        let t = Instant::now();
        lbctl_ok(&a, args)?;
        Ok(t.elapsed())
    };
    let list = timed(&["service", "list", "-o", "json"])?;
    let status = timed(&["status"])?;
    let realservers = timed(&["realserver", "list"])?;
    let rss = node.pid().map_or(0.0, rss_mib);
    println!(
        "host, N = {n} services × 10 realservers: import {imported:?}; one change by lbctl: {}; \
         service list -o json {list:?}; status {status:?}; realserver list {realservers:?}; \
         controller RSS {rss:.0} MiB ({:.0} bytes per realserver)",
        summary(writes),
        rss * 1024.0 * 1024.0 / (n * 10) as f64
    );
    Ok(())
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

/// The weight the kernel has for `rs` in the service `vaddr`.
fn weight(vaddr: &str, rs: &str) -> Option<String> {
    let out = ipvsadm(&["-Ln", "-t", vaddr]).ok()?;
    out.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.first() == Some(&"->") && w.get(1) == Some(&rs))
            .then(|| w.get(3).map(|s| s.to_string()))?
    })
}

async fn vm(n: usize, changes: usize, dir: &Path) -> anyhow::Result<()> {
    if !lb_testkit::vm::in_vm() {
        bail!("run in the VM test bed (lb-vm run -- …), or with --host");
    }
    let table = ipvsadm_table(n, 10);
    let mut want = table.clone();
    want.sort();

    // ipvsadm -R, from empty.
    ipvsadm(&["-C"])?;
    let rules = dir.join("restore");
    std::fs::write(&rules, table.join("\n") + "\n")?;
    let t = Instant::now();
    let restored = Command::new("ipvsadm")
        .arg("-R")
        .stdin(std::fs::File::open(&rules)?)
        .status()?;
    let by_ipvsadm = t.elapsed();
    if !restored.success() || saved()? != want {
        bail!("ipvsadm -R did not program the table");
    }
    ipvsadm(&["-C"])?;

    // lb-director, from empty.
    let (node, imported) = controller_with(n, dir, &VM_CONTROLLER_TIMERS)?;
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
    if saved()? != want {
        bail!("lb-director's table differs from the configuration");
    }

    // One change at a time, until the kernel shows it.
    let mut latencies = Vec::new();
    for i in 0..changes {
        let (name, vaddr, rs) = target(i, n);
        let w = (2 + i % 5).to_string();
        let t = Instant::now();
        lbctl_ok(
            &node.addr,
            &["realserver", "update", &name, &rs, "--weight", &w],
        )?;
        loop {
            if weight(&vaddr, &rs).as_deref() == Some(w.as_str()) {
                latencies.push(t.elapsed());
                break;
            }
            if t.elapsed() > Duration::from_secs(300) {
                bail!("change {i} did not reach the kernel in 5 minutes");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
    let (crss, drss) = (node.pid().map_or(0.0, rss_mib), rss_mib(director.0.id()));
    println!(
        "VM, N = {n} services × 10 realservers ({} table lines): from empty, ipvsadm -R {by_ipvsadm:?}, \
         lb-director {by_director:?} (ratio {:.2}; after an import of {imported:?}); one change \
         by lbctl until the kernel shows it: {}; the director's largest message {largest} bytes \
         (its snapshot: {}); RSS controller {crss:.0} MiB, director {drss:.0} MiB",
        table.len(),
        by_ipvsadm.as_secs_f64() / by_director.as_secs_f64(),
        summary(latencies),
        snapshot.split("snapshot)").nth(1).unwrap_or("").trim(),
    );
    std::io::stdout().flush()?;
    drop(director);
    ipvsadm(&["-C"])?;
    Ok(())
}
