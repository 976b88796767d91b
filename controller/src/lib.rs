//! lb-controller: the Raft-replicated configuration of an lbfabric fabric.
//!
//! Layout, each layer using only those above it:
//! - [`state`]: the replicated configuration and its commands (pure logic);
//! - [`typ`], [`store`]: openraft's types, the Raft log and applied state in redb;
//! - [`timing`], [`error`]: the lease timing, API errors and their statuses;
//! - [`metrics`]: the event metrics (writes, VIP moves, rejected calls);
//! - [`fleet`]: this node's in-memory view of directors and agents;
//! - [`grants`]: the VIP lease grants this node gives directors;
//! - [`desired`]: what directors program, as snapshots and deltas in parts;
//! - [`app`]: one node — its Raft handle, state, fleet, writes and reads;
//! - [`network`], [`tls`]: Raft RPCs to peers, TLS and caller identities;
//! - [`leader`]: the leader-only loops (VIP placement, lost agents);
//! - [`api`]: the gRPC handlers;
//! - [`dashboard`]: the live web page (`--http-listen`), fed by the API's status;
//! - [`web`]: the metrics listener, with the node's state read at scrape time.
//!
//! [`run`] starts one node and serves until shutdown.

pub mod api;
pub mod app;
pub mod dashboard;
pub mod desired;
pub mod error;
pub mod fleet;
pub mod grants;
pub mod leader;
pub mod metrics;
pub mod network;
pub mod state;
pub mod store;
pub mod timing;
pub mod tls;
pub mod typ;
pub mod web;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::typ::{Node, NodeId, Raft};

/// Raft timing and log compaction.
///
/// The defaults suit a LAN. A follower stands for election only after the
/// leader lease (`election_max`) plus a random election timeout have passed
/// without a heartbeat, so a dead leader is replaced in about
/// `election_max + [election_min, election_max]`: 0.45–0.6 s with these
/// defaults (measured 0.51–0.64 s by the leader-kill test), inside the 1 s
/// lease a director holds a VIP by.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the snapshot, for slow followers.
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(150),
            election_max: Duration::from_millis(300),
            snapshot_every: 10_000,
            keep_logs: 1_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// Address peers and clients reach this node at; default: the listener's.
    pub advertise: Option<String>,
    /// Initialize a one-node cluster when the data dir is new.
    pub bootstrap: bool,
    pub raft: RaftTuning,
    pub leases: timing::LeaseTiming,
    /// How long a realserver agent may be silent before its backends drain.
    pub agent_grace: std::time::Duration,
    /// TLS on the listener and to peers: the CA and this controller's
    /// certificate. `None`: plaintext (loopback, or `--insecure`).
    pub tls: Option<lb_proto::pki::Credentials>,
    /// The files `tls` was read from: the certificate is reloaded when
    /// they change. `None`: kept as started.
    pub tls_files: Option<tls::CertFiles>,
    /// This node's CA key, handed to the cluster so any leader can sign
    /// agents' certificates (the bootstrapping node's `<data-dir>/pki`).
    pub ca_keys: Option<state::CaKeys>,
    /// Lifetime of agents' certificates from joins and renewals.
    pub agent_cert_lifetime: Duration,
    /// Joins and failed authentications per source address per minute
    /// (0: unlimited).
    pub join_rate: u32,
    /// API calls per admin identity per second (0: unlimited).
    pub api_rate: u32,
}

/// What a node serves besides its gRPC port.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Prometheus metrics (`--metrics-listen`); `None`: off.
    pub metrics: Option<TcpListener>,
    /// The dashboard, and the metrics again (`--http-listen`); `None`: off.
    pub http: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("raft configuration: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
}

/// How long a stopping controller waits for its clients to close their
/// connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs one controller node on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    extra: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let advertise = match &config.advertise {
        Some(a) => a.clone(),
        None => listener.local_addr()?.to_string(),
    };
    let raft_config = openraft::Config {
        cluster_name: "lbfabric".to_string(),
        heartbeat_interval: millis(config.raft.heartbeat),
        election_timeout_min: millis(config.raft.election_min),
        election_timeout_max: millis(config.raft.election_max),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.raft.snapshot_every),
        max_in_snapshot_log_to_keep: config.raft.keep_logs,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()?;
    let (log_store, sm_store) = store::open(&config.data_dir)?;
    let state = sm_store.shared();
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        network::Network {
            tls: config.tls.as_ref().map(|c| c.client_config()),
            connect_timeout: network::Network::connect_timeout(config.raft.election_max),
        },
        log_store,
        sm_store,
    )
    .await
    .map_err(|e| ControllerError::Raft(e.to_string()))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = Arc::new(App {
        id: config.node_id,
        leases: config.leases,
        raft: raft.clone(),
        state,
        fleet: Default::default(),
        agent_grace: config.agent_grace,
        shutdown: shutdown_rx,
        grants: std::sync::Mutex::new(grants::Grants::new(
            std::time::Instant::now(),
            config.leases.silence(),
        )),
        ca_pem: config.tls.as_ref().map(|c| c.ca_pem.clone()),
        agent_cert_lifetime: config.agent_cert_lifetime,
        metrics: Default::default(),
    });
    if let Some(l) = extra.metrics {
        web::serve(&app, l);
    }
    // The certificate this node presents, reloaded when its files change.
    let server_cert = config.tls.as_ref().map(tls::ServerCert::new).transpose()?;
    if let (Some(cert), Some(files)) = (&server_cert, &config.tls_files) {
        tokio::spawn(cert.clone().watch(files.clone(), app.shutdown.clone()));
    }
    if let Some(l) = extra.http {
        web::serve_dashboard(&app, l, server_cert.clone())?;
    }
    let routes = api::router(app.clone())?;
    let leader_tasks = leader::spawn(&app, &shutdown_tx);
    let mut down = shutdown_tx.subscribe();
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(api::MAX_STREAMS_PER_CONNECTION)
        // Outermost, so that authorization's refusals are counted too. A
        // refusal is a trailers-only answer: its status is in the headers.
        .layer(tower::util::MapResponseLayer::new({
            let app = app.clone();
            move |resp: http::Response<tonic::body::Body>| {
                if let Some(code) = resp.headers().get("grpc-status") {
                    let code = tonic::Code::from_bytes(code.as_bytes());
                    if code != tonic::Code::Ok {
                        app.metrics.rejected(code);
                    }
                }
                resp
            }
        }))
        .layer(api::deadline::DeadlineLayer(api::REQUEST_DEADLINE))
        .layer(api::authz::AuthzLayer::new(
            {
                let app = app.clone();
                Arc::new(move |caller: &tls::Verified| {
                    api::authz::cut_off(&app.state.read().state, caller)
                })
            },
            Arc::new(api::rate::RateLimits::new(
                config.join_rate,
                config.api_rate,
            )),
        ))
        .add_routes(routes);
    let stopped = async move {
        let _ = down.wait_for(|d| *d).await;
    };
    let server = match (&config.tls, server_cert) {
        (Some(creds), Some(cert)) => {
            let incoming = tls::Acceptor::new(creds, cert)?.incoming(listener);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        // Without TLS too, no Nagle delay: `tcp_nodelay` above applies only
        // to listeners tonic opens itself.
        _ => tokio::spawn(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped,
        )),
    };

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
    if config.bootstrap && !initialized {
        tracing::info!(node_id = config.node_id, address = %advertise, "initializing a new single-node cluster");
        raft.initialize(BTreeMap::from([(
            config.node_id,
            Node::new(advertise.clone()),
        )]))
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
    }
    tracing::info!(node_id = config.node_id, address = %advertise, data_dir = %config.data_dir.display(), "controller serving");
    lb_proto::process::notify_ready("serving");
    let ca_handover = config
        .ca_keys
        .clone()
        .map(|keys| tokio::spawn(api::enrollment::hand_over_ca(app.clone(), keys)));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    // Connections get GOAWAY and close; one whose client never closes it
    // (a frozen host) cannot hold the shutdown up for ever.
    let served = match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "connections still open after the grace period; closing them"
            );
            Ok(Ok(()))
        }
    };
    for task in leader_tasks {
        let _ = task.await;
    }
    if let Some(task) = ca_handover {
        let _ = task.await;
    }
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    match served {
        Ok(r) => r.map_err(Into::into),
        Err(join) => Err(ControllerError::Raft(format!("server task: {join}"))),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
