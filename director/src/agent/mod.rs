//! The director agent: one reconcile loop fed by the controller.
//!
//! Four tasks share state through channels:
//! - the **session** ([`session`]) keeps a `DirectorSync` stream with every
//!   controller (reconnecting with backoff, dropping one that stops
//!   answering), sends a report on each every heartbeat, folds their grants
//!   into the quorum lease and publishes the newest desired configuration —
//!   a service this director refuses is reported, not applied; each stream
//!   keeps its controller's copy ([`from_controller`]): a snapshot, then
//!   deltas, resumed by delta after a reconnection;
//! - the **reconciler** ([`reconciler`]) compares the desired table with the kernel's on every
//!   new configuration and every `resync` period (so hand edits are
//!   repaired), applies the difference, keeps the fwmark services' nftables
//!   mark rules (see [`crate::marks`]), and records what it did for the next
//!   report; with `--no-ipvs` it only marks each VIP of the configuration
//!   ready (a proxy on the host serves it);
//! - the **VIP loop** ([`vips`]) keeps the interface's VIP addresses equal to what the
//!   lease allows (adding one only once its services are programmed, and
//!   removing those it added whose service is gone),
//!   announces each VIP it takes (gratuitous ARP / unsolicited NA), and runs
//!   the IPVS sync daemons: backup always, master while it holds a VIP;
//! - the **checker** runs the health checks of the backends no realserver
//!   agent checks (`lb_hostnet::checks`), owners and standbys alike, and the
//!   reports carry the failing ones; the VIP owner's verdicts count.
//!
//! Losing the controller changes nothing in the kernel: the table stays as
//! last reconciled until a new configuration arrives. Nothing is flushed, at

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lb_hostnet::checks::{self, Target};
use lb_hostnet::Rtnl;
use lb_proto::client::Controllers;
use lb_proto::model::Service;
use lb_proto::pb;
use tokio::sync::{watch, Notify};

use crate::ipvs::{Ipvs, IpvsError};
use crate::lease::Lease;
use crate::lease_file::{BackgroundSave, LeaseFile};
use crate::services_file::ServicesFile;
use crate::vip::AnnounceConfig;

mod accept;
mod from_controller;
mod metrics;
mod reconciler;
mod rounds;
mod session;
mod vips;

#[derive(Debug, Clone)]
pub struct Config {
    /// Controller addresses; any of them (the leader is found by redirect).
    pub controllers: Controllers,
    /// TLS to the controllers (the CA, and this agent's certificate, which
    /// renewal replaces); plaintext when it has none.
    pub tls: lb_proto::pki::enroll::AgentTls,
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    /// Interface the VIP addresses go on while this director owns them.
    pub interface: String,
    pub heartbeat: Duration,
    /// How often the kernel is compared with the desired state even without a change.
    pub resync: Duration,
    pub announce: AnnounceConfig,
    /// Connection sync over this interface; `None` leaves the daemons alone.
    pub sync: Option<SyncConfig>,
    /// Where the lease file goes (see [`crate::lease_file`]).
    pub state_dir: PathBuf,
    /// A controller that leaves a report unanswered this long is dropped
    /// and dialled again.
    pub ack_deadline: Duration,
    /// On shutdown, how long to wait for the VIPs to move to another
    /// director before letting them go anyway.
    pub handover: Duration,
    /// Program IPVS; without it only the VIPs are held (`--no-ipvs`).
    pub ipvs: bool,
    /// Run when a VIP is taken or given up, or a service whose VIP this
    /// director holds changes quorum (see [`crate::hook`]).
    pub hooks: crate::hook::Programs,
}

/// The IPVS sync daemons' settings (the same on every director of a pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    pub interface: String,
    pub sync_id: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("IPVS: {0}")]
    Ipvs(#[from] IpvsError),
    #[error("--interface: {0}")]
    Interface(#[from] lb_hostnet::NetError),
    #[error("starting the lease saver's thread: {0}")]
    Thread(std::io::Error),
}

/// What the next report tells the controller.
#[derive(Debug, Clone, Default)]
struct Progress {
    applied_revision: u64,
    errors: Vec<String>,
    foreign_services: Vec<String>,
    changes_applied: u64,
    /// The last reconcile round's counters, and that round's number (a
    /// report carries them only when newer than what it last sent).
    stats: Option<Arc<pb::IpvsStats>>,
    stats_round: u64,
    /// Backends failing the health check this director runs: (service, backend).
    unhealthy: BTreeSet<(String, SocketAddr)>,
    /// This host's own addresses, for NAT realservers' route check.
    addresses: Vec<String>,
}

/// A configuration's services, sorted by name. Shared: each task and
/// round reads it, and a new revision keeps the services it did not change
/// (so a reconcile round finds them unchanged by pointer). A persistent
/// vector: a revision that changes one service of 10,000 copies a few
/// of its nodes, not the whole list — a copy and the drop of the
/// previous one cost a reference count per service, ≈ 1.7 ms of the VM's
/// emulated CPU in the path of every change. In an `Arc`, so that "the
/// same configuration" is one pointer comparison (imbl's own `ptr_eq`
/// cannot tell for a short vector).
type Services = Arc<ServiceList>;
type ServiceList = imbl::Vector<Arc<Service>>;

/// The latest desired configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Desired {
    revision: u64,
    services: Services,
    /// The services of that revision this director refuses, by name, with
    /// the reason; each keeps what it had before (see [`accept::accept`]).
    refused: Arc<BTreeMap<String, String>>,
    /// The VIPs of `services`, computed again only when a change could
    /// move one (the VIP loop reads them every tick).
    vips: Arc<BTreeSet<std::net::IpAddr>>,
    /// The revision published before this one and the services that may
    /// differ from it (a delta's names; `None` after a snapshot): what a
    /// reconcile round that applied that revision compares, instead of
    /// every service.
    delta: Option<(u64, Arc<BTreeSet<String>>)>,
    /// The services below quorum (for the quorum hook).
    below_quorum: Arc<BTreeSet<String>>,
    /// The backends the controllers ask this director to check, from which
    /// (with the local services) the checker's targets were made.
    asked: Arc<Vec<lb_proto::pb::BackendRef>>,
}

/// Waits until the lease holds no VIP and none is on the interface — the
/// controllers moved them away — and then until every controller has
/// answered a report saying so (its `released` makes each grant the new
/// owner's epoch at once, and never grant the old one again; a lagging
/// follower that missed it would re-grant the old epoch and withhold the
/// new one for a lease). Returns true in that case; false once `limit` has
/// passed first. A controller that does not answer is waited for at most
/// `patience` (one dead controller must not stretch every shutdown).
async fn hand_over(shared: &session::Shared, limit: Duration, patience: Duration) -> bool {
    let give_up = std::time::Instant::now() + limit;
    let mut answers = shared.answers.subscribe();
    loop {
        let now = std::time::Instant::now();
        let empty = {
            let l = shared.lease.lock().unwrap_or_else(PoisonError::into_inner);
            l.held(now).is_empty() && l.added.is_empty()
        };
        if empty {
            break;
        }
        if now >= give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shared.report_now.send_modify(|n| *n += 1);
    // Answers come in order; the second from now answers a report sent
    // after the VIPs were gone, whatever was in flight.
    let before = answers.borrow_and_update().clone();
    let controllers = shared.controllers();
    let heard_all = |now: &BTreeMap<String, u64>| {
        controllers.iter().all(|c| {
            let was = before.get(c).copied().unwrap_or(0);
            now.get(c).copied().unwrap_or(0) >= was + 2
        })
    };
    let until = give_up.min(std::time::Instant::now() + patience);
    let _ = tokio::time::timeout_at(until.into(), answers.wait_for(heard_all)).await;
    true
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    // Fail early, and load ip_vs, if the kernel has no IPVS.
    let open_ipvs = || async {
        tokio::task::spawn_blocking(Ipvs::open)
            .await
            .map_err(|e| IpvsError::Socket(e.to_string()))?
    };
    let ipvs = match config.ipvs {
        true => Some((open_ipvs().await?, open_ipvs().await?)),
        false => None,
    };
    let (ipvs, sync_ipvs) = ipvs.unzip();
    // The hook's runs, queued by the VIP loop (see `crate::hook`).
    let (hooks, hook_runner) = match config.hooks.any() {
        true => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let runner = crate::hook::run(config.hooks.clone(), config.node_id.clone(), rx);
            (Some(tx), Some(tokio::spawn(runner)))
        }
        false => (None, None),
    };
    let iface = config.interface.clone();
    let (rtnl, link) = tokio::task::spawn_blocking(move || {
        let rtnl = Rtnl::open()?;
        let link = rtnl.link(&iface)?;
        Ok::<_, lb_hostnet::NetError>((rtnl, link))
    })
    .await
    .map_err(|e| lb_hostnet::NetError::Socket(e.to_string()))??;
    let quorum_hooks = hooks.clone();
    let metrics = Arc::new(metrics::Metrics::default());
    let host = vips::Host {
        rtnl,
        link,
        ipvs: sync_ipvs,
        announce: config.announce,
        sync: config.sync.clone(),
        fence: Mutex::new(crate::fence::Fence::new(vec!["nft".into()])),
        lifetimes: Mutex::default(),
        hooks,
        metrics: metrics.clone(),
    };
    let lease_file = LeaseFile::new(&config.state_dir, &config.node_id);
    let inherited = match lease_file.load() {
        Ok(Some(l)) => {
            let now = std::time::Instant::now();
            let left: BTreeMap<_, _> = l
                .holding(now)
                .into_iter()
                .map(|(vip, (_, until))| (vip, until.saturating_duration_since(now).as_millis()))
                .collect();
            tracing::info!(held_ms = ?left, on_interface = ?l.added, "continuing the previous process's lease");
            l
        }
        Ok(None) => Lease::default(),
        Err(e) => {
            // Without it the agent behaves as on first start: VIPs of the
            // configuration it does not hold are removed once it knows them.
            tracing::warn!(error = %e, "ignoring the lease file");
            Lease::default()
        }
    };
    let progress = Arc::new(Mutex::new(Progress::default()));
    let lease = Arc::new(Mutex::new(inherited.clone()));
    let saver =
        BackgroundSave::start(lease_file.clone(), lease.clone()).map_err(AgentError::Thread)?;
    if let Some(listener) = metrics_listener {
        let registry = metrics::registry(&metrics, progress.clone(), lease.clone());
        lb_proto::metrics::serve(listener, lb_proto::metrics::routes(Arc::new(registry)));
    }
    // Wakes the VIP loop at once when a grant arrives, instead of at its
    // next tick: a takeover is that much sooner.
    let lease_changed = Arc::new(Notify::new());
    let (desired_tx, desired_rx) = watch::channel::<Option<Desired>>(None);
    // The backends this director checks (those without a realserver agent).
    let (checks_tx, checks_rx) = watch::channel(Vec::new());
    let failing = progress.clone();
    let on_change: checks::OnChange = Arc::new(move |t: &Target, passing: bool| {
        let mut p = failing.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (t.service.clone(), t.backend);
        if passing {
            p.unhealthy.remove(&key);
        } else {
            p.unhealthy.insert(key);
        }
    });
    let (programmed_tx, programmed_rx) = watch::channel(BTreeSet::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let checker = tokio::spawn(checks::run(checks_rx, (on_change, None), stop_rx.clone()));

    let reconciler = match ipvs {
        Some(ipvs) => tokio::spawn(reconciler::run(
            (ipvs, ServicesFile::new(&config.state_dir, &config.node_id)),
            config.resync,
            desired_rx.clone(),
            programmed_tx,
            (progress.clone(), metrics.clone()),
            stop_rx.clone(),
        )),
        None => tokio::spawn(reconciler::vips_only(
            desired_rx.clone(),
            programmed_tx,
            progress.clone(),
            stop_rx.clone(),
        )),
    };
    let report_now = Arc::new(watch::channel(0u64).0);
    let (leaving_tx, leaving_rx) = watch::channel(false);
    let vips = tokio::spawn(vips::run(
        host,
        desired_rx,
        programmed_rx,
        (lease.clone(), lease_changed.clone()),
        (lease_file.clone(), report_now.clone()),
        stop_rx.clone(),
    ));
    let (handover, patience) = (config.handover, config.ack_deadline);
    let shared = Arc::new(session::Shared::new(
        config,
        (desired_tx, checks_tx),
        progress,
        (lease.clone(), lease_changed),
        (lease_file.clone(), saver),
        (
            report_now.clone(),
            leaving_rx,
            Arc::new(watch::channel(BTreeMap::new()).0),
        ),
        quorum_hooks,
    ));
    let session = tokio::spawn(session::run(shared.clone(), stop_rx));
    shutdown.await;
    tracing::info!("shutting down: asking for the VIPs to move to another director");
    let _ = leaving_tx.send(true);
    report_now.send_modify(|n| *n += 1);
    let handed_over = hand_over(&shared, handover, patience).await;
    tracing::info!(
        handed_over,
        "releasing the VIPs still held; the IPVS table stays as it is"
    );
    let _ = stop_tx.send(true);
    let _ = reconciler.await;
    let _ = checker.await;
    let _ = session.await;
    if let Ok(true) = vips.await {
        // Released: nothing is left for a next process to continue.
        if let Err(e) = lease_file.remove() {
            tracing::warn!(error = %e, "removing the lease file");
        }
    }
    // The VIP loop is done (its queue closed): the hooks of the VIPs it gave
    // up run before the process ends, as keepalived's notify_backup does.
    if let Some(runner) = hook_runner {
        let _ = tokio::time::timeout(crate::hook::TIMEOUT * 2, runner).await;
    }
    Ok(())
}
