//! The realserver agent: one reconcile loop fed by the controller.
//!
//! - the **session** keeps a `RealServerSync` stream with the controller
//!   leader (following redirects, reconnecting with backoff); its first
//!   report registers the host, and every heartbeat reports what is applied;
//! - the **reconciler** compares the host's configuration with what the
//!   services it backs need ([`crate::host::plan`]) on every new
//!   configuration and every `resync` period, so hand edits are repaired;
//! - the **checker** runs each service's health check against this host's
//!   endpoint (`lb_hostnet::checks`) and publishes the services failing it,
//!   which the session reports at once.
//!
//! Losing the controller changes nothing on the host: the directors may
//! still send traffic. A clean stop (SIGTERM) removes what the agent added
//! and restores the sysctls it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lb_hostnet::{NetError, Rtnl};
use lb_proto::client::{
    ack_deadline, channel, follow_leader, AckDeadline, Controllers, Follower, Session,
};
use lb_proto::model::Service;
use lb_proto::pb;
use lb_proto::pb::real_server_sync_client::RealServerSyncClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::host::{interface_of, plan, Host};
use crate::metrics::{HostChange, Metrics, Now};
use lb_hostnet::checks::{self, targets, Target};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Controller addresses; any of them (the leader is found by redirect).
    pub controllers: Controllers,
    /// TLS to the controllers (the CA, and this agent's certificate, which
    /// renewal replaces); plaintext when it has none.
    pub tls: lb_proto::pki::enroll::AgentTls,
    pub node_id: String,
    /// The realserver's address (RIP), as the directors reach it.
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub heartbeat: Duration,
    /// How often the host is compared with the plan even without a change.
    pub resync: Duration,
    /// On SIGTERM, how long to wait for the host's connections to finish
    /// (with weight 0) before removing the VIPs; zero skips the drain.
    pub drain_timeout: Duration,
    /// Where the record of what the agent changed survives a restart.
    pub state_dir: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("host networking: {0}")]
    Net(#[from] NetError),
    #[error("--address {0}: no interface of this host has it")]
    NoSuchAddress(IpAddr),
}

/// What the host says about itself beyond the reconcile: reported at once
/// whenever it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct HostStatus {
    /// Services whose health check fails here.
    unhealthy: BTreeSet<String>,
    /// Stopping: waiting for connections to finish.
    draining: bool,
}

/// What the last reconcile round achieved, for the next report.
#[derive(Debug, Clone, Default)]
struct Progress {
    applied_revision: u64,
    errors: Vec<String>,
}

/// The latest configuration: revision, the services this host backs, the
/// live directors' addresses, and whether an operator drained the host.
type Desired = Option<(u64, Vec<Service>, Vec<IpAddr>, bool)>;

/// Runs the agent until `shutdown` resolves, then undoes its changes.
pub async fn run(
    config: Config,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let rip_interface = interface_of(&Rtnl::open()?, config.address)?
        .ok_or(AgentError::NoSuchAddress(config.address))?;
    tracing::info!(address = %config.address, interface = %rip_interface, "realserver agent starting");
    let record = config
        .state_dir
        .join(format!("realserver-{}.state", config.node_id));
    let host = Arc::new(Mutex::new(Host::open(Some(record))?));
    let progress = Arc::new(Mutex::new(Progress::default()));
    let (desired_tx, desired_rx) = watch::channel::<Desired>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (status_tx, status_rx) = watch::channel(HostStatus::default());
    let status_tx = Arc::new(status_tx);
    let metrics = Arc::new(Metrics::default());
    if let Some(listener) = metrics_listener {
        let (desired, status) = (desired_rx.clone(), status_rx.clone());
        let registry = metrics.registry(move || {
            let status = status.borrow().clone();
            let desired = desired.borrow();
            let (services, drained) = match &*desired {
                Some((_, services, _, drained)) => (services.as_slice(), *drained),
                None => (&[][..], false),
            };
            Now {
                services: services
                    .iter()
                    .map(|s| (s.name.clone(), !status.unhealthy.contains(&s.name)))
                    .collect(),
                draining: status.draining || drained,
            }
        });
        lb_proto::metrics::serve(listener, lb_proto::metrics::routes(Arc::new(registry)));
    }
    let checker = tokio::spawn(check_loop(
        config.address,
        desired_rx.clone(),
        (status_tx.clone(), metrics.clone()),
        stop_rx.clone(),
    ));

    let desired_for_drain = desired_rx.clone();
    let config_drain = config.clone();
    let reconciler = tokio::spawn(reconcile_loop(
        host.clone(),
        (rip_interface, config.address, config.drain_timeout),
        config.resync,
        desired_rx,
        (progress.clone(), metrics),
        stop_rx.clone(),
    ));
    let follower = Follower::new(
        &config.controllers,
        Duration::from_millis(100),
        Duration::from_secs(2),
    );
    let mut session = RealServer {
        config,
        desired: desired_tx,
        progress,
        status: status_rx,
        heartbeat: 0,
    };
    let session = tokio::spawn(async move { follow_leader(follower, &mut session, stop_rx).await });
    shutdown.await;
    drain(&config_drain, &status_tx, &desired_for_drain).await;
    tracing::info!("shutting down: removing the VIPs and restoring the sysctls this agent set");
    let _ = stop_tx.send(true);
    let _ = session.await;
    let _ = reconciler.await;
    let _ = checker.await;
    let errors = tokio::task::spawn_blocking(move || {
        host.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .restore()
    })
    .await
    .unwrap_or_else(|e| vec![e.to_string()]);
    for e in errors {
        tracing::warn!(error = %e, "restoring the host");
    }
    Ok(())
}

/// Graceful exit: report draining (the directors set weight 0, so new
/// connections go elsewhere) and wait until none of the services'
/// connections remain on this host, or the timeout.
async fn drain(
    config: &Config,
    status: &watch::Sender<HostStatus>,
    desired: &watch::Receiver<Desired>,
) {
    if config.drain_timeout.is_zero() {
        return;
    }
    let services = desired
        .borrow()
        .as_ref()
        .map(|(_, s, _, _)| s.clone())
        .unwrap_or_default();
    let locals = crate::conns::service_endpoints(&services, config.address);
    if locals.is_empty() {
        return;
    }
    status.send_modify(|s| s.draining = true);
    let start = std::time::Instant::now();
    tracing::info!(
        timeout_ms = config.drain_timeout.as_millis() as u64,
        "draining: weight 0, waiting for connections to finish"
    );
    loop {
        let open = crate::conns::established(&locals);
        if open == 0 {
            tracing::info!(
                waited_ms = start.elapsed().as_millis() as u64,
                "drained: no connections left"
            );
            return;
        }
        if start.elapsed() >= config.drain_timeout {
            tracing::warn!(
                connections = open,
                "drain timeout: removing the VIPs with connections open"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn reconcile_loop(
    host: Arc<Mutex<Host>>,
    (rip_interface, rip, drain_timeout): (String, IpAddr, Duration),
    resync: Duration,
    mut desired: watch::Receiver<Desired>,
    (progress, metrics): (Arc<Mutex<Progress>>, Arc<Metrics>),
    mut stop: watch::Receiver<bool>,
) {
    // Drained by the operator since; and whether the host is out of service.
    let mut drained_since: Option<std::time::Instant> = None;
    let mut out = false;
    // What the last round brought the host to: a round for the same
    // revision and drain state that changes the host repairs it.
    let mut last: Option<(u64, bool)> = None;
    loop {
        let current = desired.borrow_and_update().clone();
        if let Some((revision, services, directors, drained)) = current {
            // A drained host keeps its VIPs until its connections finish
            // (or the drain timeout), then leaves service.
            let was_out = out;
            out = match drained {
                false => {
                    drained_since = None;
                    false
                }
                true => {
                    let since = *drained_since.get_or_insert_with(std::time::Instant::now);
                    let locals = crate::conns::service_endpoints(&services, rip);
                    out || crate::conns::established(&locals) == 0
                        || since.elapsed() >= drain_timeout
                }
            };
            if out != was_out {
                match out {
                    true => tracing::info!("drained: connections finished, taking the VIPs off"),
                    false => tracing::info!("enabled: putting the VIPs back"),
                }
            }
            let host = host.clone();
            let iface = rip_interface.clone();
            let (errors, changes) = tokio::task::spawn_blocking(move || {
                let want = if out {
                    crate::host::Plan::default()
                } else {
                    plan(&services, &iface)
                };
                let mut host = host.lock().unwrap_or_else(PoisonError::into_inner);
                let before = host.changes();
                let mut errors = host.converge(&want);
                let changes = host.changes() - before;
                drop(host);
                let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
                let gateway = crate::host::default_gateway(&routes);
                errors.extend(crate::host::nat_route_warning(
                    &services, &directors, gateway,
                ));
                (errors, changes)
            })
            .await
            .unwrap_or_else(|e| (vec![format!("reconcile task: {e}")], 0));
            let why = match last == Some((revision, out)) {
                true => HostChange::Repair,
                false => HostChange::Configuration,
            };
            metrics.host_changed(why, changes);
            last = Some((revision, out));
            let mut p = progress.lock().unwrap_or_else(PoisonError::into_inner);
            if errors.is_empty() {
                p.applied_revision = revision;
            } else {
                for e in &errors {
                    tracing::warn!(error = %e, revision, "host configuration");
                }
            }
            p.errors = errors;
        }
        // While draining, look at the connections often.
        let next = match drained_since {
            Some(_) if !out => resync.min(Duration::from_millis(200)),
            _ => resync,
        };
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(next) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the services' health checks against this host's endpoint and
/// publishes the services whose check fails.
async fn check_loop(
    rip: IpAddr,
    mut desired: watch::Receiver<Desired>,
    (status, metrics): (Arc<watch::Sender<HostStatus>>, Arc<Metrics>),
    stop: watch::Receiver<bool>,
) {
    let (targets_tx, targets_rx) = watch::channel(Vec::new());
    let probed = metrics.clone();
    let on_change: checks::OnChange = Arc::new(move |t: &Target, passing: bool| {
        let flipped = status.send_if_modified(|s| {
            if passing {
                s.unhealthy.remove(&t.service)
            } else {
                s.unhealthy.insert(t.service.clone())
            }
        });
        if flipped {
            metrics.flipped(&t.service, passing);
        }
    });
    let on_probe: checks::OnProbe = Arc::new(move |t: &Target, passed, took| {
        probed.probed(&t.service, passed, took);
    });
    let runner = tokio::spawn(checks::run(
        targets_rx,
        (on_change, Some(on_probe)),
        stop.clone(),
    ));
    let mut stop = stop;
    loop {
        let services = desired
            .borrow_and_update()
            .as_ref()
            .map(|(_, s, _, _)| s.clone())
            .unwrap_or_default();
        targets_tx.send_replace(targets(&services, rip).into_values().collect());
        tokio::select! {
            r = desired.changed() => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let _ = runner.await;
}

fn report(
    config: &Config,
    heartbeat: u64,
    progress: &Mutex<Progress>,
    status: &watch::Receiver<HostStatus>,
) -> pb::RealServerReport {
    let status = status.borrow().clone();
    let p = progress
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    pb::RealServerReport {
        node_id: config.node_id.clone(),
        address: config.address.to_string(),
        labels: config.labels.clone().into_iter().collect(),
        heartbeat,
        applied_revision: p.applied_revision,
        errors: p.errors,
        unhealthy: status.unhealthy.into_iter().collect(),
        draining: status.draining,
    }
}

/// The session's side of the agent: what it reports and what it publishes.
struct RealServer {
    config: Config,
    desired: watch::Sender<Desired>,
    progress: Arc<Mutex<Progress>>,
    status: watch::Receiver<HostStatus>,
    /// Numbers the reports across sessions.
    heartbeat: u64,
}

impl RealServer {
    fn next_report(&mut self) -> pb::RealServerReport {
        self.heartbeat += 1;
        report(&self.config, self.heartbeat, &self.progress, &self.status)
    }
}

impl Session for RealServer {
    /// One stream with one controller; returns when it ends.
    async fn run(&mut self, addr: &str) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        let _ = tx.send(self.next_report()).await;
        let mut renewed = self.config.tls.changed();
        let mut inbound =
            RealServerSyncClient::new(channel(addr, self.config.tls.current().as_ref())?)
                .sync(ReceiverStream::new(rx))
                .await?
                .into_inner();
        tracing::info!(controller = %addr, "registered");
        // A leader that stops answering is left for another at once.
        let mut waiting = AckDeadline::new(ack_deadline(self.config.heartbeat));
        waiting.sent(Instant::now());
        let mut ticker = tokio::time::interval(self.config.heartbeat);
        loop {
            tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(d) => {
                        waiting.heard();
                        // The first answer: under systemd, the unit is up.
                        lb_proto::process::notify_ready("answered by the controller");
                        if let Some(cfg) = d.config {
                            let services: Result<Vec<Service>, _> = cfg.services.into_iter().map(Service::try_from).collect();
                            let directors = cfg.director_addresses.iter().filter_map(|a| a.parse().ok()).collect();
                            match services {
                                Ok(s) => { self.desired.send_replace(Some((d.revision, s, directors, cfg.drained))); }
                                Err(e) => tracing::error!(revision = d.revision, error = %e, "controller sent an invalid service"),
                            }
                        }
                    }
                    None => return Ok(()),
                },
                // A renewed certificate counts from the next connection.
                Ok(()) = renewed.changed() => return Ok(()),
                // A health change or a drain is reported at once, not at the next tick.
                r = self.status.changed() => {
                    if r.is_err() { return Ok(()) }
                    waiting.sent(Instant::now());
                    if tx.send(self.next_report()).await.is_err() {
                        return Ok(());
                    }
                }
                _ = ticker.tick() => {
                    waiting.check(Instant::now())?;
                    waiting.sent(Instant::now());
                    if tx.send(self.next_report()).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
