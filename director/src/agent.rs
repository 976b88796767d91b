//! The director agent: one reconcile loop fed by the controller.
//!
//! Two tasks share state through channels:
//! - the **session** keeps a `DirectorSync` stream with the controller leader
//!   (following redirects, reconnecting with backoff), sends a report every
//!   heartbeat and publishes each desired configuration it receives;
//! - the **reconciler** compares the desired table with the kernel's on every
//!   new configuration and every `resync` period (so hand edits are
//!   repaired), applies the difference, keeps the fwmark services' nftables
//!   mark rules (see [`crate::marks`]), and records what it did for the next
//!   report;
//! - the **VIP loop** keeps the interface's VIP addresses equal to what the
//!   lease allows (adding one only once its services are programmed),
//!   announces each VIP it takes (gratuitous ARP / unsolicited NA), and runs
//!   the IPVS sync daemons: backup always, master while it holds a VIP;
//! - the **checker** runs the health checks of the backends no realserver
//!   agent checks (`lb_hostnet::checks`), owners and standbys alike, and the
//!   reports carry the failing ones; the VIP owner's verdicts count.
//!
//! Losing the controller changes nothing in the kernel: the table stays as
//! last reconciled until a new configuration arrives. Nothing is flushed, at
//! start or ever.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lb_hostnet::checks::{self, Target};
use lb_hostnet::{Link, Rtnl};
use lb_proto::client::{addresses, channel, leader_hint};
use lb_proto::model::Service;
use lb_proto::pb;
use lb_proto::pb::director_sync_client::DirectorSyncClient;
use std::net::{IpAddr, SocketAddr};
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;

use crate::ipvs::{Ipvs, IpvsError, ServiceKey, SyncDaemon, SyncRole};
use crate::lease_file::LeaseFile;
use crate::marks::{MarkChange, Marks};
use crate::reconcile::{apply, observe_counted, plan};
use crate::stats;
use crate::vip::{converge, lease_until, AnnounceConfig, Announcements, Lease, SentHeartbeats};
use crate::{desired, forwarding};

#[derive(Debug, Clone)]
pub struct Config {
    /// Controller addresses; any of them (the leader is found by redirect).
    pub controllers: String,
    /// TLS to the controllers (the CA, and this agent's certificate, which
    /// renewal replaces); plaintext when it has none.
    pub tls: lb_proto::enroll::AgentTls,
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
}

/// The IPVS sync daemons' settings (the same on every director of a pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    pub interface: String,
    pub sync_id: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--controller: no address given")]
    NoController,
    #[error("IPVS: {0}")]
    Ipvs(#[from] IpvsError),
    #[error("--interface: {0}")]
    Interface(#[from] lb_hostnet::NetError),
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

/// The latest desired configuration: revision and services.
type Desired = Option<(u64, Vec<Service>)>;

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    if addresses(&config.controllers).is_empty() {
        return Err(AgentError::NoController);
    }
    // Fail early, and load ip_vs, if the kernel has no IPVS.
    let ipvs = tokio::task::spawn_blocking(Ipvs::open)
        .await
        .map_err(|e| IpvsError::Socket(e.to_string()))??;
    let iface = config.interface.clone();
    let (rtnl, link) = tokio::task::spawn_blocking(move || {
        let rtnl = Rtnl::open()?;
        let link = rtnl.link(&iface)?;
        Ok::<_, lb_hostnet::NetError>((rtnl, link))
    })
    .await
    .map_err(|e| lb_hostnet::NetError::Socket(e.to_string()))??;
    let host = Host {
        rtnl,
        link,
        ipvs: tokio::task::spawn_blocking(Ipvs::open)
            .await
            .map_err(|e| IpvsError::Socket(e.to_string()))??,
        announce: config.announce,
        sync: config.sync.clone(),
    };
    let lease_file = LeaseFile::new(&config.state_dir, &config.node_id);
    let inherited = match lease_file.load() {
        Ok(Some(l)) => {
            let now = std::time::Instant::now();
            let left = l.until.map(|u| u.saturating_duration_since(now));
            tracing::info!(
                vips = ?l.vips.keys().collect::<Vec<_>>(),
                left_ms = left.map(|d| d.as_millis()),
                "continuing the previous process's lease"
            );
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
    // Wakes the VIP loop at once when a grant arrives, instead of at its
    // next tick: a takeover is that much sooner.
    let lease_changed = Arc::new(Notify::new());
    let (desired_tx, desired_rx) = watch::channel::<Desired>(None);
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
    let checker = tokio::spawn(checks::run(checks_rx, on_change, stop_rx.clone()));

    let reconciler = tokio::spawn(reconcile_loop(
        ipvs,
        config.resync,
        desired_rx.clone(),
        programmed_tx,
        progress.clone(),
        stop_rx.clone(),
    ));
    let vips = tokio::spawn(vip_loop(
        host,
        inherited.vips.keys().copied().collect(),
        desired_rx,
        programmed_rx,
        (lease.clone(), lease_changed.clone()),
        stop_rx.clone(),
    ));
    let session = tokio::spawn(session_loop(
        config,
        (desired_tx, checks_tx),
        progress,
        (lease, lease_changed),
        lease_file.clone(),
        stop_rx,
    ));
    shutdown.await;
    tracing::info!("shutting down: releasing VIPs; the IPVS table stays as it is");
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
    Ok(())
}

/// The VIP addresses of the desired configuration.
fn managed_vips(desired: &Desired) -> BTreeSet<IpAddr> {
    desired
        .as_ref()
        .map(|(_, services)| services.iter().filter_map(Service::vip).collect())
        .unwrap_or_default()
}

/// What the VIP loop changes on the host.
struct Host {
    rtnl: Rtnl,
    link: Link,
    /// A connection of its own, for the sync daemons.
    ipvs: Ipvs,
    announce: AnnounceConfig,
    sync: Option<SyncConfig>,
}

impl Host {
    /// Addresses, then sync daemons; returns the VIPs newly added.
    fn converge(
        &self,
        managed: &BTreeSet<IpAddr>,
        held: &BTreeSet<IpAddr>,
        ready: &BTreeSet<IpAddr>,
    ) -> Result<Vec<IpAddr>, String> {
        let added = converge(&self.rtnl, self.link.index, managed, held, ready)
            .map_err(|e| e.to_string())?;
        if let Some(sync) = &self.sync {
            self.converge_sync(sync, !held.is_empty())
                .map_err(|e| e.to_string())?;
        }
        Ok(added)
    }

    /// Backup always (to take over connections when a VIP moves here),
    /// master while this director holds a VIP.
    fn converge_sync(&self, sync: &SyncConfig, master: bool) -> Result<(), IpvsError> {
        let daemon = |role| SyncDaemon {
            role,
            interface: sync.interface.clone(),
            sync_id: sync.sync_id,
        };
        let mut want = vec![daemon(SyncRole::Backup)];
        if master {
            want.push(daemon(SyncRole::Master));
        }
        let running = self.ipvs.daemons()?;
        for d in running.iter().filter(|d| !want.contains(d)) {
            self.ipvs.stop_daemon(d.role)?;
            tracing::info!(daemon = %d, "sync daemon stopped");
        }
        for d in want.iter().filter(|d| !running.contains(d)) {
            self.ipvs.start_daemon(d)?;
            tracing::info!(daemon = %d, "sync daemon started");
        }
        Ok(())
    }

    fn announce(&self, vips: &[IpAddr]) {
        let Some(mac) = self.link.mac else {
            return; // loopback and other links without neighbours
        };
        for vip in vips {
            match lb_hostnet::announce::announce(self.link.index, mac, *vip) {
                Ok(()) => tracing::debug!(vip = %vip, "announced"),
                Err(e) => tracing::warn!(vip = %vip, error = %e, "announcing the VIP"),
            }
        }
    }
}

/// Keeps the interface's VIP addresses equal to what the lease allows,
/// checking often enough that an expired lease drops the address within a
/// tick, and announces the VIPs it takes.
async fn vip_loop(
    host: Host,
    inherited: BTreeSet<IpAddr>,
    desired: watch::Receiver<Desired>,
    programmed: watch::Receiver<BTreeSet<IpAddr>>,
    (lease, lease_changed): (Arc<Mutex<Lease>>, Arc<Notify>),
    mut stop: watch::Receiver<bool>,
) -> bool {
    let host = Arc::new(host);
    let tick = Duration::from_millis(20);
    let mut last: Option<(BTreeSet<IpAddr>, BTreeSet<IpAddr>, BTreeSet<IpAddr>)> = None;
    let mut last_check = std::time::Instant::now();
    let mut announcements = Announcements::default();
    loop {
        let stopping = *stop.borrow();
        let now = std::time::Instant::now();
        // VIPs the previous process held are ours to remove even before (or
        // without) a configuration naming them.
        let mut managed = managed_vips(&desired.borrow());
        managed.extend(inherited.iter().copied());
        let held: BTreeSet<IpAddr> = if stopping {
            BTreeSet::new()
        } else {
            let l = lease.lock().unwrap_or_else(PoisonError::into_inner);
            l.held(now).into_keys().collect()
        };
        let ready = programmed.borrow().clone();
        // Ask the kernel on every change, and every second to repair hand edits.
        let state = (managed, held, ready);
        let mut converged = false;
        if last.as_ref() != Some(&state)
            || stopping
            || last_check.elapsed() > Duration::from_secs(1)
        {
            let h = host.clone();
            let (m, hd, r) = state.clone();
            match tokio::task::spawn_blocking(move || h.converge(&m, &hd, &r)).await {
                Ok(Ok(added)) => {
                    for vip in added {
                        announcements.taken(vip, now, &host.announce);
                    }
                    last = Some(state.clone());
                    converged = true;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "VIP addresses"),
                Err(e) => tracing::warn!(error = %e, "VIP task"),
            }
            last_check = std::time::Instant::now();
        }
        if stopping {
            // Whether the VIPs are gone.
            return converged;
        }
        let due = announcements.due(now, &state.1, &host.announce);
        if !due.is_empty() {
            let h = host.clone();
            let _ = tokio::task::spawn_blocking(move || h.announce(&due)).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = lease_changed.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

/// The VIPs whose services were all programmed by a reconcile round (and,
/// for fwmark services naming their VIP, whose mark rules are in place).
fn programmed_vips(
    services: &[Service],
    failed: &[(crate::reconcile::Op, IpvsError)],
    marks_ok: bool,
) -> BTreeSet<IpAddr> {
    let broken: BTreeSet<ServiceKey> = failed.iter().map(|(op, _)| op.key()).collect();
    let ready = |s: &Service| {
        !broken.contains(&desired::key(&s.address)) && (s.mark_match.is_none() || marks_ok)
    };
    let vips: BTreeSet<IpAddr> = services.iter().filter_map(Service::vip).collect();
    vips.into_iter()
        .filter(|v| services.iter().filter(|s| s.vip() == Some(*v)).all(ready))
        .collect()
}

async fn reconcile_loop(
    ipvs: Ipvs,
    resync: Duration,
    mut desired: watch::Receiver<Desired>,
    programmed: watch::Sender<BTreeSet<IpAddr>>,
    progress: Arc<Mutex<Progress>>,
    mut stop: watch::Receiver<bool>,
) {
    let ipvs = Arc::new(ipvs);
    let marks = Arc::new(Mutex::new(Marks::new(vec!["nft".into()])));
    let mut managed: BTreeSet<ServiceKey> = BTreeSet::new();
    loop {
        let current = desired.borrow_and_update().clone();
        if let Some((revision, services)) = current {
            let ipvs = ipvs.clone();
            let marks = marks.clone();
            let previously = managed.clone();
            let round = tokio::task::spawn_blocking(move || {
                let want = desired::table(&services);
                let (observed, counted) = observe_counted(&ipvs)?;
                let counters = stats::report(&services, &counted);
                let p = plan(&want, &observed, &previously);
                let failed = apply(&ipvs, &p);
                let mut host_errors = forwarding::ensure_for(&services);
                // Rules after services: a mark with no IPVS service yet
                // would only send packets to the local stack.
                let marked = marks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .converge(&services);
                let marks_ok = marked.is_ok();
                let marks_changed = match marked {
                    Ok(change) => change != MarkChange::None,
                    Err(e) => {
                        host_errors.push(e.to_string());
                        false
                    }
                };
                let ready = programmed_vips(&services, &failed, marks_ok);
                let own = own_addresses(&services);
                Ok::<_, IpvsError>((
                    want.keys().copied().collect::<BTreeSet<_>>(),
                    p,
                    failed,
                    host_errors,
                    ready,
                    marks_changed,
                    counters,
                    own,
                ))
            })
            .await;
            let mut prog = progress.lock().unwrap_or_else(PoisonError::into_inner);
            match round {
                Ok(Ok((keys, p, failed, host_errors, ready, marks_changed, counters, own))) => {
                    prog.addresses = own;
                    prog.stats = Some(Arc::new(counters));
                    prog.stats_round += 1;
                    programmed.send_if_modified(|vips| {
                        let now = ready;
                        let changed = *vips != now;
                        *vips = now;
                        changed
                    });
                    managed = keys;
                    if !p.ops.is_empty() {
                        tracing::info!(
                            revision,
                            changes = p.ops.len(),
                            failed = failed.len(),
                            "reconciled"
                        );
                    }
                    prog.changes_applied +=
                        (p.ops.len() - failed.len()) as u64 + u64::from(marks_changed);
                    prog.errors = failed
                        .iter()
                        .map(|(op, e)| format!("{op}: {e}"))
                        .chain(host_errors.iter().cloned())
                        .collect();
                    prog.foreign_services = p.foreign.iter().map(ToString::to_string).collect();
                    if failed.is_empty() && host_errors.is_empty() {
                        prog.applied_revision = revision;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the IPVS table failed");
                    prog.errors = vec![e.to_string()];
                }
                Err(e) => prog.errors = vec![format!("reconcile task: {e}")],
            }
        }
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(resync) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn report(
    config: &Config,
    heartbeat: u64,
    progress: &Mutex<Progress>,
    lease: &Mutex<Lease>,
    stats_sent: &mut u64,
) -> pb::DirectorReport {
    let p = progress.lock().unwrap_or_else(PoisonError::into_inner);
    // Counters change every round; sending them with each heartbeat would
    // multiply the stream's traffic for nothing.
    let stats = (p.stats_round > *stats_sent)
        .then(|| p.stats.as_deref().cloned())
        .flatten();
    *stats_sent = p.stats_round;
    let (applied_revision, changes_applied) = (p.applied_revision, p.changes_applied);
    let (errors, foreign_services) = (p.errors.clone(), p.foreign_services.clone());
    let addresses = p.addresses.clone();
    let unhealthy: Vec<pb::BackendRef> = p
        .unhealthy
        .iter()
        .map(|(service, b)| pb::BackendRef {
            service: service.clone(),
            address: b.ip().to_string(),
            port: b.port().into(),
        })
        .collect();
    drop(p);
    let held = lease
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .held(std::time::Instant::now());
    pb::DirectorReport {
        node_id: config.node_id.clone(),
        labels: config.labels.clone().into_iter().collect(),
        heartbeat,
        applied_revision,
        errors,
        foreign_services,
        changes_applied,
        held: held
            .into_iter()
            .map(|(vip, epoch)| pb::VipLease {
                vip: vip.to_string(),
                epoch,
            })
            .collect(),
        stats,
        unhealthy,
        addresses,
    }
}

/// This host's unicast addresses other than loopback, IPv6 link-local and
/// the services' VIPs (which move between directors).
fn own_addresses(services: &[Service]) -> Vec<String> {
    let vips: BTreeSet<IpAddr> = services.iter().filter_map(Service::vip).collect();
    let Ok(all) = Rtnl::open().and_then(|r| r.addresses(0)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = all
        .into_iter()
        .map(|a| a.addr)
        .filter(|a| !a.is_loopback() && !vips.contains(a))
        .filter(|a| !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .map(|a| a.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The health checks the controller asks of this director, from the
/// services' check specs.
fn check_targets(services: &[Service], asked: &[pb::BackendRef]) -> Vec<Target> {
    asked
        .iter()
        .filter_map(|b| {
            let s = services.iter().find(|s| s.name == b.service)?;
            let backend = SocketAddr::new(b.address.parse().ok()?, u16::try_from(b.port).ok()?);
            checks::target(s, backend)
        })
        .collect()
}

async fn session_loop(
    config: Config,
    (desired, checks): (watch::Sender<Desired>, watch::Sender<Vec<Target>>),
    progress: Arc<Mutex<Progress>>,
    (lease, lease_changed): (Arc<Mutex<Lease>>, Arc<Notify>),
    lease_file: LeaseFile,
    mut stop: watch::Receiver<bool>,
) {
    let addrs = addresses(&config.controllers);
    let mut target = addrs[0].clone();
    let mut next = 0;
    // Retry fast: the lease is running out while no controller answers.
    let first_backoff = Duration::from_millis(50);
    let mut backoff = first_backoff;
    let mut heartbeat = 0u64;
    // Followers keep naming a dead leader until they elect a new one;
    // following such a hint again would only burn the lease.
    let mut unreachable: BTreeMap<String, std::time::Instant> = BTreeMap::new();
    loop {
        let outcome = tokio::select! {
            o = session(&config, &target, (&desired, &checks), &progress, (&lease, &lease_changed, &lease_file), &mut heartbeat) => o,
            _ = stop.wait_for(|s| *s) => return,
        };
        let recently_failed = |addr: &str, failed: &BTreeMap<String, std::time::Instant>| {
            failed
                .get(addr)
                .is_some_and(|at| at.elapsed() < Duration::from_secs(2))
        };
        match outcome {
            Ok(()) => backoff = first_backoff,
            Err(status) => match leader_hint(&status) {
                Some(leader) if leader != target && !recently_failed(&leader, &unreachable) => {
                    tracing::info!(leader = %leader, "following the controller leader");
                    target = leader;
                    continue;
                }
                _ => {
                    tracing::warn!(controller = %target, error = %status.message(), "controller stream lost");
                    // Transport failures carry their cause; a controller's
                    // own answer ("no leader elected yet") does not.
                    if std::error::Error::source(&status).is_some() {
                        unreachable.insert(target.clone(), std::time::Instant::now());
                    }
                    next = (next + 1) % addrs.len();
                    target = addrs[next].clone();
                }
            },
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}

/// One stream with one controller; returns when it ends.
async fn session(
    config: &Config,
    addr: &str,
    (desired, checks): (&watch::Sender<Desired>, &watch::Sender<Vec<Target>>),
    progress: &Mutex<Progress>,
    (lease, lease_changed, lease_file): (&Mutex<Lease>, &Notify, &LeaseFile),
    heartbeat: &mut u64,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    let mut sent = SentHeartbeats::default();
    // A new stream may reach a new leader, which has no counters yet.
    let mut stats_sent = 0;
    *heartbeat += 1;
    sent.sent(*heartbeat, std::time::Instant::now());
    let _ = tx
        .send(report(config, *heartbeat, progress, lease, &mut stats_sent))
        .await;
    let mut renewed = config.tls.changed();
    let mut inbound = DirectorSyncClient::new(channel(addr, config.tls.current().as_ref())?)
        .sync(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(controller = %addr, "connected");
    let mut ticker = tokio::time::interval(config.heartbeat);
    loop {
        tokio::select! {
            msg = inbound.message() => match msg? {
                Some(d) => {
                    let changed = {
                        let mut l = lease.lock().unwrap_or_else(PoisonError::into_inner);
                        let before = l.clone();
                        if let Some(at) = sent.acked(d.heartbeat_ack) {
                            l.until = Some(lease_until(at, d.lease_ms));
                        }
                        l.vips = d.leases.iter().filter_map(|v| Some((v.vip.parse().ok()?, v.epoch))).collect();
                        (*l != before).then(|| l.clone())
                    };
                    // Before the next report (sent from this task) can tell
                    // the controller what the lease now says.
                    if let Some(l) = changed {
                        if let Err(e) = lease_file.save(&l) {
                            tracing::warn!(error = %e, "saving the lease");
                        }
                        lease_changed.notify_one();
                    }
                    if let Some(cfg) = d.config {
                        let services: Result<Vec<Service>, _> = cfg.services.into_iter().map(Service::try_from).collect();
                        match services {
                            Ok(s) => {
                                checks.send_replace(check_targets(&s, &cfg.checks));
                                desired.send_replace(Some((d.revision, s)));
                            }
                            Err(e) => tracing::error!(revision = d.revision, error = %e, "controller sent an invalid service"),
                        }
                    }
                }
                None => return Ok(()),
            },
            // A renewed certificate counts from the next connection.
            Ok(()) = renewed.changed() => return Ok(()),
            _ = ticker.tick() => {
                *heartbeat += 1;
                sent.sent(*heartbeat, std::time::Instant::now());
                if tx.send(report(config, *heartbeat, progress, lease, &mut stats_sent)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
