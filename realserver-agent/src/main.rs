use std::time::Duration;

use clap::Parser;
use lb_realserver::agent::{run, Config};

/// lbfabric realserver agent: registers this host as a backend and prepares
/// it for the services that adopt it (DR: VIP on lo; TUN: VIP on tunl0; ARP
/// and rp_filter sysctls). SIGTERM drains the host (weight 0 until its
/// connections finish) and then undoes everything it set.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Example:\n  lb-realserver --controller 10.0.0.1:7070 --node-id web-1 --address 10.0.0.21 --labels pool=web"
)]
struct Args {
    /// Log format: text (journald, a terminal) or json (one object per line).
    #[arg(long, env = "LB_LOG_FORMAT", value_enum, default_value_t)]
    log_format: lb_proto::process::LogFormat,
    /// Controller address(es), comma-separated.
    #[arg(long, env = "LB_CONTROLLER", default_value = "127.0.0.1:7070")]
    controller: lb_proto::client::Controllers,
    /// This realserver's name (unique among realserver agents).
    #[arg(long, env = "LB_NODE_ID")]
    node_id: String,
    /// The address the directors send traffic to (RIP); one of this host's.
    #[arg(long, env = "LB_ADDRESS")]
    address: String,
    /// Labels services select realservers by: key=value, comma-separated or repeated.
    #[arg(long, env = "LB_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Report interval, in milliseconds.
    #[arg(long, env = "LB_HEARTBEAT_MS", default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Compare the host with what the services need at least this often, in milliseconds.
    #[arg(long, env = "LB_RESYNC_MS", default_value_t = 5000)]
    resync_ms: u64,
    /// On SIGTERM, wait this long (milliseconds) with weight 0 for the
    /// services' connections on this host to finish before removing the
    /// VIPs; 0 removes them at once.
    #[arg(long, env = "LB_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    drain_timeout_ms: u64,
    /// Directory for the record of what the agent changed on the host, so a
    /// restarted agent still undoes it (tmpfs: a reboot clears the changes too).
    #[arg(long, env = "LB_STATE_DIR", default_value = "/run/lbfabric")]
    state_dir: std::path::PathBuf,
    #[command(flatten)]
    tls: lb_proto::pki::enroll::AgentTlsFlags,
    #[command(flatten)]
    metrics: lb_proto::metrics::AgentFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_proto::process::man_page_if_asked::<Args>();
    let args = Args::parse();
    lb_proto::process::init_logging(args.log_format, "info");
    lb_proto::convert::check_name("--node-id", &args.node_id)?;
    let address = lb_proto::convert::unicast_ip("--address", &args.address)?;
    let who = lb_proto::pki::enroll::Enrollee {
        role: lb_proto::pki::Role::Realserver,
        node_id: args.node_id.clone(),
        address: Some(address),
    };
    let metrics = args.metrics.listen().await?;
    let tls = lb_proto::pki::enroll::setup(&args.tls, &args.controller, &who).await?;
    let config = Config {
        controllers: args.controller,
        tls,
        node_id: args.node_id,
        address,
        labels: lb_proto::process::label_flags("--labels", &args.labels)?,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        resync: Duration::from_millis(args.resync_ms),
        drain_timeout: Duration::from_millis(args.drain_timeout_ms),
        state_dir: args.state_dir,
    };
    run(config, metrics, lb_proto::process::shutdown_signal()).await?;
    Ok(())
}
