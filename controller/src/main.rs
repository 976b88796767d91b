use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lb_controller::{Config, RaftTuning};

/// lbfabric controller: holds the fabric's configuration in a Raft cluster.
///
/// A fresh data directory initializes a single-node cluster (unless
/// --no-bootstrap); grow it with `lbctl cluster add-learner` and `promote`.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  lb-controller --data-dir ./lb-data --listen 127.0.0.1:7070\n  lb-controller --node-id 2 --data-dir ./lb2 --listen 127.0.0.1:7071 --no-bootstrap\n  lb-controller --data-dir /var/lib/lbfabric --listen 10.0.0.1:7070    (TLS: CA and certificates in /var/lib/lbfabric/pki)"
)]
struct Args {
    /// Log format: text (journald, a terminal) or json (one object per line).
    #[arg(long, env = "LB_LOG_FORMAT", value_enum, default_value_t)]
    log_format: lb_proto::process::LogFormat,
    /// This controller's Raft node id (unique in the cluster, at least 1).
    #[arg(long, env = "LB_NODE_ID", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    node_id: u64,
    /// Where the Raft log and state live (one redb file).
    #[arg(long, env = "LB_DATA_DIR", default_value = "./lb-data")]
    data_dir: PathBuf,
    /// gRPC address to listen on (API, Raft peers, health, reflection).
    #[arg(long, env = "LB_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Address other controllers and clients use for this node (default: --listen).
    #[arg(long, env = "LB_ADVERTISE")]
    advertise: Option<String>,
    /// Write the bound listen address to this file once listening (useful with port 0).
    #[arg(long, env = "LB_ADDR_FILE")]
    addr_file: Option<PathBuf>,
    /// Where to serve Prometheus metrics (GET /metrics), or `off`. On
    /// loopback by default: put it on an address your Prometheus reaches.
    #[arg(long, env = "LB_METRICS_LISTEN", default_value = "127.0.0.1:9470")]
    metrics_listen: String,
    /// Write the bound metrics address to this file once listening (useful with port 0).
    #[arg(long, env = "LB_METRICS_ADDR_FILE")]
    metrics_addr_file: Option<PathBuf>,
    /// Where to serve the live dashboard (http://ADDR/), e.g.
    /// 127.0.0.1:8080; `off` (the default) serves none. Read-only: anyone
    /// who reaches it sees the fabric's state.
    #[arg(long, env = "LB_HTTP_LISTEN", default_value = "off")]
    http_listen: String,
    /// Write the bound dashboard address to this file once listening (useful with port 0).
    #[arg(long, env = "LB_HTTP_ADDR_FILE")]
    http_addr_file: Option<PathBuf>,
    /// Do not initialize a new cluster; wait to be added with `lbctl cluster add-learner`.
    #[arg(long, env = "LB_NO_BOOTSTRAP")]
    no_bootstrap: bool,
    /// Seed a new one-node cluster from a backup (`lbctl cluster backup`)
    /// in a new --data-dir: the services, events, VIP owners, agents,
    /// tokens, revocations and the CA (into <data-dir>/pki) as they were at
    /// its revision. Directors and agents re-attach with their
    /// certificates; add more controllers as for any new cluster.
    #[arg(long, env = "LB_RESTORE", conflicts_with = "no_bootstrap")]
    restore: Option<PathBuf>,
    /// Leader heartbeat interval, in milliseconds.
    #[arg(long, env = "LB_RAFT_HEARTBEAT_MS", default_value_t = 50)]
    raft_heartbeat_ms: u64,
    /// Lower bound of the election timeout, in milliseconds (upper bound is twice this).
    #[arg(long, env = "LB_RAFT_ELECTION_MS", default_value_t = 150)]
    raft_election_ms: u64,
    /// Build a snapshot (and purge the log) every this many entries.
    #[arg(long, env = "LB_SNAPSHOT_EVERY", default_value_t = 10_000)]
    snapshot_every: u64,
    /// A director drops a VIP this long after its last acknowledged heartbeat, in milliseconds.
    #[arg(long, env = "LB_LEASE_MS", default_value_t = 200)]
    lease_ms: u64,
    /// The leader reassigns a silent director's VIPs after lease + this, in milliseconds.
    #[arg(long, env = "LB_LEASE_MARGIN_MS", default_value_t = 50)]
    lease_margin_ms: u64,
    /// A preferred director (a service's --prefer-director) takes its VIP back
    /// from another live director after being live this long, in milliseconds.
    #[arg(long, env = "LB_PREEMPT_HOLD_DOWN_MS", default_value_t = 10_000)]
    preempt_hold_down_ms: u64,
    /// A realserver agent silent this long (milliseconds) has its backends
    /// drained (weight 0) until it reports again; a restart within it
    /// changes nothing.
    #[arg(long, env = "LB_AGENT_GRACE_MS", default_value_t = 10_000)]
    agent_grace_ms: u64,
    /// Log entries kept behind a snapshot for slow followers.
    #[arg(long, env = "LB_KEEP_LOGS", default_value_t = 1_000)]
    keep_logs: u64,
    /// Serve TLS (mTLS for callers) even on a loopback address. TLS is on by
    /// itself whenever the listen or advertised address is not loopback.
    #[arg(long, env = "LB_TLS", conflicts_with = "insecure")]
    tls: bool,
    /// Serve plaintext on a non-loopback address. Anyone who reaches the
    /// port can then reprogram the fabric; a warning is logged.
    #[arg(long, env = "LB_INSECURE")]
    insecure: bool,
    /// Your own CA certificate (PEM) instead of the CA bootstrapped in
    /// <data-dir>/pki; with --tls-cert and --tls-key.
    #[arg(long, env = "LB_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This controller's certificate (PEM), issued by --tls-ca, naming
    /// spiffe://lbfabric/controller/<node-id> and controller.lbfabric.
    #[arg(long, env = "LB_TLS_CERT", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "LB_TLS_KEY", requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    /// How long agents' certificates from `--join-token` last (agents renew
    /// them when two thirds have passed): 30d, 12h, 90s.
    #[arg(long, env = "LB_AGENT_CERT_LIFETIME", default_value = "30d", value_parser = lb_proto::process::duration_flag)]
    agent_cert_lifetime: Duration,
    /// Join attempts and calls refused for their certificate allowed per
    /// source address per minute (as many at once); past it, a call gets
    /// RESOURCE_EXHAUSTED with when to retry, its token unread. 0: no limit.
    #[arg(long, env = "LB_JOIN_RATE", default_value_t = 60)]
    join_rate: u32,
    /// API calls (ServiceAdmin, ClusterAdmin) per admin identity per second,
    /// twice that at once; past it, RESOURCE_EXHAUSTED with when to retry.
    /// 0: no limit. Plaintext listeners have no identities to limit.
    #[arg(long, env = "LB_API_RATE", default_value_t = 100)]
    api_rate: u32,
    /// Nice value of every thread of this process (-20 to 19): below
    /// ordinary work, so that a busy host does not delay the answers that
    /// keep the directors' VIP leases.
    #[arg(long, env = "LB_NICE", default_value_t = lb_proto::process::DAEMON_NICE,
          allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: i32,
}

/// What TLS needs on this node: its credentials, and the CA key where this
/// node holds it (to hand to the cluster).
struct TlsSetup {
    creds: lb_proto::pki::Credentials,
    /// Where `creds` came from, to reload the certificate when it changes.
    files: lb_controller::tls::CertFiles,
    ca_keys: Option<lb_controller::state::CaKeys>,
}

/// TLS credentials for this controller, or `None` for plaintext: on
/// loopback without --tls, or with --insecure. A bootstrapping node creates
/// the CA in <data-dir>/pki, and issues itself a controller certificate and
/// an admin certificate for lbctl.
fn tls_setup(args: &Args, bound: std::net::SocketAddr) -> anyhow::Result<Option<TlsSetup>> {
    use lb_proto::pki::{Ca, Credentials, Identity, Role};
    let advertised: Option<std::net::IpAddr> = args
        .advertise
        .as_deref()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip());
    let loopback = bound.ip().is_loopback() && advertised.is_none_or(|ip| ip.is_loopback());
    if args.insecure {
        if !loopback {
            tracing::warn!(listen = %bound, "--insecure: serving plaintext on a non-loopback address; anyone who reaches it can reprogram the fabric");
        }
        return Ok(None);
    }
    if let (Some(ca), Some(cert), Some(key)) = (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        let creds = Credentials::from_files(ca, Some(cert), Some(key))?;
        let files = lb_controller::tls::CertFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        };
        return Ok(Some(TlsSetup {
            creds,
            files,
            ca_keys: None,
        }));
    }
    if loopback && !args.tls {
        return Ok(None);
    }
    let dir = args.data_dir.join("pki");
    let ca = Ca::open(&dir, !args.no_bootstrap).with_context(|| {
        format!(
            "TLS needs the fabric's CA in {}: copy ca.pem there with a certificate from `lbctl pki issue --role controller`, or pass --tls-ca/--tls-cert/--tls-key",
            dir.display()
        )
    })?;
    let mut ips = vec![bound.ip()];
    ips.extend(advertised);
    if bound.ip().is_unspecified() || !ips.iter().any(|ip| ip.is_loopback()) {
        ips.push(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let me = Identity::new(Role::Controller, args.node_id.to_string());
    if ca.can_issue() {
        ca.ensure(&dir, "controller", &me, &ips)?;
        ca.ensure(&dir, "admin", &Identity::new(Role::Admin, "admin"), &[])?;
    } else if let Some(keys) = replicated_ca(&args.data_dir, &ca)? {
        // A controller that joined with a certificate made elsewhere renews
        // its own with the CA the cluster replicated to it.
        if dir.join("controller.pem").exists() {
            keys.ensure(&dir, "controller", &me, &ips)?;
        }
    }
    let creds = Credentials::from_dir(&dir, "controller").with_context(|| {
        format!(
            "no controller certificate in {}: issue one with `lbctl pki issue --ca-dir <CA dir> --role controller --name {} --out {}`",
            dir.display(),
            args.node_id,
            dir.display()
        )
    })?;
    tracing::info!(pki = %dir.display(), "TLS on: lbctl --credentials {} (ca.pem, admin.pem, admin.key)", dir.display());
    let ca_keys = ca.key_pem().map(|key_pem| lb_controller::state::CaKeys {
        cert_pem: ca.cert_pem.clone(),
        key_pem,
    });
    let files = lb_controller::tls::CertFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("controller.pem"),
        key: dir.join("controller.key"),
    };
    Ok(Some(TlsSetup {
        creds,
        files,
        ca_keys,
    }))
}

/// The CA as this node's store holds it, able to issue, if it is the same
/// CA as `ca` (the one in <data-dir>/pki that TLS trusts).
fn replicated_ca(
    data_dir: &std::path::Path,
    ca: &lb_proto::pki::Ca,
) -> anyhow::Result<Option<lb_proto::pki::Ca>> {
    use lb_proto::pki::{fingerprint, Ca};
    let Some(keys) = lb_controller::store::stored_ca(data_dir)
        .with_context(|| format!("reading the store in {}", data_dir.display()))?
    else {
        return Ok(None);
    };
    if fingerprint(&keys.cert_pem)? != fingerprint(&ca.cert_pem)? {
        tracing::warn!("the replicated CA is not the one in <data-dir>/pki; not renewing this controller's certificate");
        return Ok(None);
    }
    Ok(Some(Ca::from_pem(keys.cert_pem, Some(&keys.key_pem))?))
}

/// `--restore FILE`: the backup's state into a new store in `data_dir`,
/// and its CA into `<data-dir>/pki`, where TLS set-up then issues this
/// node's certificate and an admin certificate under it.
fn restore(data_dir: &std::path::Path, file: &std::path::Path) -> anyhow::Result<()> {
    let what = || format!("--restore {}", file.display());
    let bytes = std::fs::read(file).with_context(what)?;
    let backup = lb_proto::backup::Backup::from_bytes(&bytes).with_context(what)?;
    let restored = lb_controller::store::restore(data_dir, &backup).with_context(what)?;
    let pki = data_dir.join("pki");
    match &restored.ca {
        Some(ca) => {
            let have = pki.join("ca.pem");
            if have.exists() && lb_proto::pki::read(&have)? != ca.cert_pem {
                anyhow::bail!("{}: {} holds another CA than the backup's; restore into a new data directory", what(), have.display());
            }
            lb_proto::pki::write_pem(&have, &ca.cert_pem, false)?;
            lb_proto::pki::write_pem(&pki.join("ca.key"), &ca.key_pem, true)?;
        }
        None => tracing::warn!(
            "the backup holds no CA key (the fabric uses an operator's CA): start with --tls-ca/--tls-cert/--tls-key from it, or the agents' certificates will not be trusted"
        ),
    }
    tracing::info!(
        file = %file.display(),
        data_dir = %data_dir.display(),
        revision = restored.revision,
        services = restored.services,
        "restored: a new one-node cluster continues from the backup's revision"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_proto::process::man_page_if_asked::<Args>();
    let args = Args::parse();
    lb_proto::process::init_logging(args.log_format, "info,openraft=warn");
    lb_proto::process::prioritize(args.nice);
    lb_proto::process::no_huge_pages();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    if let Some(file) = &args.restore {
        restore(&args.data_dir, file)?;
    }
    // Before the address file: whoever waits for it finds the credentials.
    let tls = tls_setup(&args, bound)?;
    let metrics = lb_proto::metrics::listen(
        "--metrics-listen",
        &args.metrics_listen,
        args.metrics_addr_file.as_deref(),
    )
    .await?;
    let http = lb_proto::metrics::listen(
        "--http-listen",
        &args.http_listen,
        args.http_addr_file.as_deref(),
    )
    .await?;
    if let Some(path) = &args.addr_file {
        lb_proto::process::write_addr_file(path, bound).context("--addr-file")?;
    }
    let config = Config {
        node_id: args.node_id,
        data_dir: args.data_dir,
        advertise: args.advertise,
        bootstrap: !args.no_bootstrap,
        raft: RaftTuning {
            heartbeat: Duration::from_millis(args.raft_heartbeat_ms),
            election_min: Duration::from_millis(args.raft_election_ms),
            election_max: Duration::from_millis(args.raft_election_ms * 2),
            snapshot_every: args.snapshot_every,
            keep_logs: args.keep_logs,
        },
        leases: lb_controller::timing::LeaseTiming {
            fence: Duration::from_millis(args.lease_ms),
            margin: Duration::from_millis(args.lease_margin_ms),
            hold_down: Duration::from_millis(args.preempt_hold_down_ms),
        },
        agent_grace: Duration::from_millis(args.agent_grace_ms),
        ca_keys: tls.as_ref().and_then(|t| t.ca_keys.clone()),
        tls_files: tls.as_ref().map(|t| t.files.clone()),
        tls: tls.map(|t| t.creds),
        agent_cert_lifetime: args.agent_cert_lifetime,
        join_rate: args.join_rate,
        api_rate: args.api_rate,
    };
    let extra = lb_controller::Listeners { metrics, http };
    lb_controller::run(
        config,
        listener,
        extra,
        lb_proto::process::shutdown_signal(),
    )
    .await?;
    Ok(())
}
