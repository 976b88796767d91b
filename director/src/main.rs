use std::time::Duration;

use clap::Parser;
use lb_director::agent::{run, Config, SyncConfig};
use lb_director::vip::AnnounceConfig;

/// lbfabric director agent: programs IPVS as the controller says.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Example:\n  lb-director --controller 10.0.0.1:7070,10.0.0.2:7070 --node-id dir-a --labels site=ams"
)]
struct Args {
    /// Log format: text (journald, a terminal) or json (one object per line).
    #[arg(long, env = "LB_LOG_FORMAT", value_enum, default_value_t)]
    log_format: lb_proto::process::LogFormat,
    /// Controller address(es), comma-separated.
    #[arg(long, env = "LB_CONTROLLER", default_value = "127.0.0.1:7070")]
    controller: lb_proto::client::Controllers,
    /// This director's name (unique among directors).
    #[arg(long, env = "LB_NODE_ID")]
    node_id: String,
    /// Interface the VIP addresses go on while this director owns them.
    #[arg(long, env = "LB_INTERFACE")]
    interface: String,
    /// Labels services can select directors by: key=value, comma-separated or repeated.
    #[arg(long, env = "LB_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Report interval, in milliseconds.
    #[arg(long, env = "LB_HEARTBEAT_MS", default_value_t = 50)]
    heartbeat_ms: u64,
    /// Compare the kernel with the desired state at least this often, in milliseconds.
    #[arg(long, env = "LB_RESYNC_MS", default_value_t = 5000)]
    resync_ms: u64,
    /// Gratuitous ARPs / unsolicited NAs sent when a VIP is taken.
    #[arg(long, env = "LB_GARP_BURST", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    garp_burst: u32,
    /// Gap between the announcements of a burst, in milliseconds.
    #[arg(long, env = "LB_GARP_INTERVAL_MS", default_value_t = 100)]
    garp_interval_ms: u64,
    /// Announce held VIPs again this often, in milliseconds (0: never).
    #[arg(long, env = "LB_GARP_REFRESH_MS", default_value_t = 30_000)]
    garp_refresh_ms: u64,
    /// Run the IPVS connection sync daemons on this interface (backup always,
    /// master while holding a VIP), so connections survive a failover.
    #[arg(long, env = "LB_SYNC_INTERFACE")]
    sync_interface: Option<String>,
    /// Sync id shared by the directors of one pool (0-255).
    #[arg(long, env = "LB_SYNC_ID", default_value_t = 0)]
    sync_id: u8,
    /// Directory for the lease file, which lets a restarted agent keep the
    /// VIPs its node still holds (tmpfs, so a reboot clears it).
    #[arg(long, env = "LB_STATE_DIR", default_value = "/run/lbfabric")]
    state_dir: std::path::PathBuf,
    /// On SIGTERM, how long to wait for the controllers to move this
    /// director's VIPs to another one before letting them go anyway, in
    /// milliseconds.
    #[arg(long, env = "LB_HANDOVER_MS", default_value_t = 5000)]
    handover_ms: u64,
    /// Hold and announce the VIPs without programming IPVS: for services a
    /// proxy on this host serves (keepalived's floating VIP), and for hosts
    /// whose kernel has no IPVS. The lease, the fence and the hand-over are
    /// the same.
    #[arg(long, env = "LB_NO_IPVS", conflicts_with = "sync_interface")]
    no_ipvs: bool,
    /// Program run when this director takes or gives up a VIP (keepalived's
    /// notify_master / notify_backup), with the arguments VIP OLD NEW EPOCH
    /// (states MASTER and BACKUP; also in LB_VIP, LB_OLD_STATE, LB_NEW_STATE,
    /// LB_EPOCH, LB_NODE_ID). One run at a time, killed after 10 s.
    #[arg(long, env = "LB_ON_VIP_CHANGE")]
    on_vip_change: Option<std::path::PathBuf>,
    /// Program run on the director holding a service's VIP when the service
    /// goes below quorum or back (keepalived's quorum_down / quorum_up),
    /// with the arguments SERVICE UP|DOWN VIP (also in LB_SERVICE,
    /// LB_QUORUM, LB_VIP, LB_NODE_ID). Queued with --on-vip-change's runs.
    #[arg(long, env = "LB_ON_QUORUM_CHANGE")]
    on_quorum_change: Option<std::path::PathBuf>,
    /// Nice value of every thread of this process (-20 to 19): below
    /// ordinary work, so that a busy host does not make VIP leases lapse.
    #[arg(long, env = "LB_NICE", default_value_t = lb_proto::process::DAEMON_NICE,
          allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: i32,
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
    lb_proto::process::prioritize(args.nice);
    lb_proto::process::no_huge_pages();
    lb_proto::convert::check_name("--node-id", &args.node_id)?;
    let labels = lb_proto::process::label_flags("--labels", &args.labels)?;
    let who = lb_proto::pki::enroll::Enrollee {
        role: lb_proto::pki::Role::Director,
        node_id: args.node_id.clone(),
        address: None,
    };
    if let Some(program) = &args.on_vip_change {
        lb_director::hook::check("--on-vip-change", program).map_err(anyhow::Error::msg)?;
    }
    if let Some(program) = &args.on_quorum_change {
        lb_director::hook::check("--on-quorum-change", program).map_err(anyhow::Error::msg)?;
    }
    let metrics = args.metrics.listen().await?;
    let tls = lb_proto::pki::enroll::setup(&args.tls, &args.controller, &who).await?;
    let config = Config {
        controllers: args.controller,
        tls,
        node_id: args.node_id,
        labels,
        interface: args.interface,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        resync: Duration::from_millis(args.resync_ms),
        announce: AnnounceConfig {
            burst: args.garp_burst,
            interval: Duration::from_millis(args.garp_interval_ms),
            refresh: (args.garp_refresh_ms > 0)
                .then(|| Duration::from_millis(args.garp_refresh_ms)),
        },
        sync: args.sync_interface.map(|interface| SyncConfig {
            interface,
            sync_id: args.sync_id,
        }),
        state_dir: args.state_dir,
        ack_deadline: lb_proto::client::ack_deadline(Duration::from_millis(args.heartbeat_ms)),
        handover: Duration::from_millis(args.handover_ms),
        ipvs: !args.no_ipvs,
        hooks: lb_director::hook::Programs {
            vip: args.on_vip_change,
            quorum: args.on_quorum_change,
        },
    };
    run(config, metrics, lb_proto::process::shutdown_signal()).await?;
    Ok(())
}
