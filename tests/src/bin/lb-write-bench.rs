//! Write throughput and latency of the controller cluster.
//!
//! Starts real `lb-controller` processes (durable redb storage under
//! `--data-root`), then runs `--clients` concurrent gRPC clients that each
//! create services on the leader as fast as they are acknowledged, for
//! `--seconds`. Prints writes/s and p50/p99 latency per cluster size.
//!
//!   cargo build --release --workspace --bins
//!   target/release/lb-write-bench --controllers 1,3 --clients 8 --seconds 10

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lb_proto::pb;
use lb_testkit::scale::percentile;
use lb_testkit::{start_cluster, wait_for};

#[derive(Debug, Parser)]
struct Args {
    /// Cluster sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    controllers: Vec<u64>,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Where the controllers keep their data (a real disk, not tmpfs).
    #[arg(long, default_value = "target/bench-data")]
    data_root: PathBuf,
}

fn service(n: u64) -> pb::Service {
    pb::Service {
        name: format!("bench-{n}"),
        virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
            address: format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
            port: 80,
            protocol: "tcp".into(),
        })),
        scheduler: "wlc".into(),
        mode: "nat".into(),
        realservers: vec![pb::RealServer {
            address: "192.168.0.10".into(),
            port: 8080,
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn measure(size: u64, args: &Args) -> anyhow::Result<()> {
    let dir = args.data_root.join(format!("{size}-controllers"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let nodes = start_cluster(size, &dir, &[]).await?;
    let leader = wait_for(Duration::from_secs(10), "a leader", || async {
        for n in &nodes {
            if n.status().await.is_some_and(|s| s.state == "leader") {
                return Some(n.addr.clone());
            }
        }
        None
    })
    .await?;

    let counter = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let counter = counter.clone();
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            let mut admin = pb::service_admin_client::ServiceAdminClient::new(
                lb_testkit::channel(&leader).await?,
            );
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                admin
                    .create_service(pb::CreateServiceRequest {
                        service: Some(service(n)),
                    })
                    .await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    println!(
        "controllers={size} clients={} duration={:.1}s writes={} writes/s={:.0} p50={:.2}ms p99={:.2}ms",
        args.clients,
        elapsed.as_secs_f64(),
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for &size in &args.controllers {
        measure(size, &args).await?;
    }
    Ok(())
}
