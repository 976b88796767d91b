//! The director agent: one reconcile loop fed by the controller.
//!
//! Two tasks share state through channels:
//! - the **session** keeps a `DirectorSync` stream with the controller leader
//!   (following redirects, reconnecting with backoff), sends a report every
//!   heartbeat and publishes each desired configuration it receives;
//! - the **reconciler** compares the desired table with the kernel's on every
//!   new configuration and every `resync` period (so hand edits are
//!   repaired), applies the difference, and records what it did for the next
//!   report.
//!
//! Losing the controller changes nothing in the kernel: the table stays as
//! last reconciled until a new configuration arrives. Nothing is flushed, at
//! start or ever.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lb_proto::client::{addresses, channel, leader_hint};
use lb_proto::model::Service;
use lb_proto::pb;
use lb_proto::pb::director_sync_client::DirectorSyncClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::ipvs::{Ipvs, IpvsError, ServiceKey};
use crate::reconcile::{apply, observe, plan};
use crate::{desired, forwarding};

#[derive(Debug, Clone)]
pub struct Config {
    /// Controller addresses; any of them (the leader is found by redirect).
    pub controllers: String,
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    pub heartbeat: Duration,
    /// How often the kernel is compared with the desired state even without a change.
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--controller: no address given")]
    NoController,
    #[error("IPVS: {0}")]
    Ipvs(#[from] IpvsError),
}

/// What the next report tells the controller.
#[derive(Debug, Clone, Default)]
struct Progress {
    applied_revision: u64,
    errors: Vec<String>,
    foreign_services: Vec<String>,
    changes_applied: u64,
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
    let progress = Arc::new(Mutex::new(Progress::default()));
    let (desired_tx, desired_rx) = watch::channel::<Desired>(None);
    let (stop_tx, stop_rx) = watch::channel(false);

    let reconciler = tokio::spawn(reconcile_loop(
        ipvs,
        config.resync,
        desired_rx,
        progress.clone(),
        stop_rx.clone(),
    ));
    let session = tokio::spawn(session_loop(config, desired_tx, progress, stop_rx));
    shutdown.await;
    tracing::info!("shutting down; the IPVS table stays as it is");
    let _ = stop_tx.send(true);
    let _ = reconciler.await;
    let _ = session.await;
    Ok(())
}

async fn reconcile_loop(
    ipvs: Ipvs,
    resync: Duration,
    mut desired: watch::Receiver<Desired>,
    progress: Arc<Mutex<Progress>>,
    mut stop: watch::Receiver<bool>,
) {
    let ipvs = Arc::new(ipvs);
    let mut managed: BTreeSet<ServiceKey> = BTreeSet::new();
    loop {
        let current = desired.borrow_and_update().clone();
        if let Some((revision, services)) = current {
            let ipvs = ipvs.clone();
            let previously = managed.clone();
            let round = tokio::task::spawn_blocking(move || {
                let want = desired::table(&services);
                let observed = observe(&ipvs)?;
                let p = plan(&want, &observed, &previously);
                let failed = apply(&ipvs, &p);
                let host_errors = forwarding::ensure_for(&services);
                Ok::<_, IpvsError>((
                    want.keys().copied().collect::<BTreeSet<_>>(),
                    p,
                    failed,
                    host_errors,
                ))
            })
            .await;
            let mut prog = progress.lock().unwrap_or_else(PoisonError::into_inner);
            match round {
                Ok(Ok((keys, p, failed, host_errors))) => {
                    managed = keys;
                    if !p.ops.is_empty() {
                        tracing::info!(
                            revision,
                            changes = p.ops.len(),
                            failed = failed.len(),
                            "reconciled"
                        );
                    }
                    prog.changes_applied += (p.ops.len() - failed.len()) as u64;
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

fn report(config: &Config, heartbeat: u64, progress: &Mutex<Progress>) -> pb::DirectorReport {
    let p = progress
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    pb::DirectorReport {
        node_id: config.node_id.clone(),
        labels: config.labels.clone().into_iter().collect(),
        heartbeat,
        applied_revision: p.applied_revision,
        errors: p.errors,
        foreign_services: p.foreign_services,
        changes_applied: p.changes_applied,
    }
}

async fn session_loop(
    config: Config,
    desired: watch::Sender<Desired>,
    progress: Arc<Mutex<Progress>>,
    mut stop: watch::Receiver<bool>,
) {
    let addrs = addresses(&config.controllers);
    let mut target = addrs[0].clone();
    let mut next = 0;
    let mut backoff = Duration::from_millis(100);
    let mut heartbeat = 0u64;
    loop {
        let outcome = tokio::select! {
            o = session(&config, &target, &desired, &progress, &mut heartbeat) => o,
            _ = stop.wait_for(|s| *s) => return,
        };
        match outcome {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(status) => match leader_hint(&status) {
                Some(leader) => {
                    tracing::info!(leader = %leader, "following the controller leader");
                    target = leader;
                    continue;
                }
                None => {
                    tracing::warn!(controller = %target, error = %status.message(), "controller stream lost");
                    next = (next + 1) % addrs.len();
                    target = addrs[next].clone();
                }
            },
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One stream with one controller; returns when it ends.
async fn session(
    config: &Config,
    addr: &str,
    desired: &watch::Sender<Desired>,
    progress: &Mutex<Progress>,
    heartbeat: &mut u64,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    *heartbeat += 1;
    let _ = tx.send(report(config, *heartbeat, progress)).await;
    let mut inbound = DirectorSyncClient::new(channel(addr)?)
        .sync(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(controller = %addr, "connected");
    let mut ticker = tokio::time::interval(config.heartbeat);
    loop {
        tokio::select! {
            msg = inbound.message() => match msg? {
                Some(d) => {
                    if let Some(cfg) = d.config {
                        let services: Result<Vec<Service>, _> = cfg.services.into_iter().map(Service::try_from).collect();
                        match services {
                            Ok(s) => { desired.send_replace(Some((d.revision, s))); }
                            Err(e) => tracing::error!(revision = d.revision, error = %e, "controller sent an invalid service"),
                        }
                    }
                }
                None => return Ok(()),
            },
            _ = ticker.tick() => {
                *heartbeat += 1;
                if tx.send(report(config, *heartbeat, progress)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
