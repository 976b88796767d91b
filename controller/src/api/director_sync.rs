//! `lb.v1.DirectorSync`: one stream per director, served by the leader only.
//!
//! The leader keeps what it hears from each director (liveness, applied
//! revision, errors, foreign services) as soft state: it is rebuilt from the
//! reports after a leader change, when the directors reconnect. A stream ends
//! when this node stops leading, so the director follows the new leader.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lb_proto::convert::check_name;
use lb_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::status;
use crate::app::App;
use crate::state::{Command, State};

/// What the leader last heard from a director.
#[derive(Debug, Clone)]
pub struct DirectorSeen {
    pub labels: BTreeMap<String, String>,
    pub connected: bool,
    /// The stream the last report came on: when a director reconnects, the
    /// end of its old stream must not mark the new one disconnected.
    pub stream: u64,
    pub last_seen: Instant,
    /// Since when it has been live without a gap (for the preemption hold-down).
    pub live_since: Instant,
    pub applied_revision: u64,
    pub errors: Vec<String>,
    pub foreign_services: Vec<String>,
    pub changes_applied: u64,
    pub held: Vec<pb::VipLease>,
    /// Its last IPVS counters and when they arrived (reports carry them
    /// only when they are new). Leader memory only: counters are not
    /// configuration and would flood the Raft log.
    pub stats: Option<(Arc<pb::IpvsStats>, Instant)>,
    /// Its host's own addresses (for NAT realservers' route check).
    pub addresses: Vec<String>,
}

impl DirectorSeen {
    /// Heard from within `fence + margin`. Not `connected`: a director whose
    /// stream just broke (its agent restarting, a controller failing over)
    /// still holds its VIPs until its lease runs out. Only silence counts.
    pub fn live(&self, timing: crate::placement::LeaseTiming) -> bool {
        self.last_seen.elapsed() < timing.fence + timing.margin
    }
}

pub(super) struct DirectorSync {
    app: Arc<App>,
}

impl DirectorSync {
    pub(super) fn new(app: Arc<App>) -> Self {
        DirectorSync { app }
    }
}

/// Numbers the streams, for [`DirectorSeen::stream`].
static STREAMS: AtomicU64 = AtomicU64::new(0);

fn record(app: &App, report: &pb::DirectorReport, stream: u64) {
    let mut directors = app
        .directors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    let before = directors.get(&report.node_id);
    let live_since = before
        .filter(|d| d.live(app.leases))
        .map_or(now, |d| d.live_since);
    let stats = match &report.stats {
        Some(s) => Some((Arc::new(s.clone()), now)),
        None => before.and_then(|d| d.stats.clone()),
    };
    directors.insert(
        report.node_id.clone(),
        DirectorSeen {
            labels: report.labels.clone().into_iter().collect(),
            connected: true,
            stream,
            last_seen: now,
            live_since,
            applied_revision: report.applied_revision,
            errors: report.errors.clone(),
            foreign_services: report.foreign_services.clone(),
            changes_applied: report.changes_applied,
            held: report.held.clone(),
            stats,
            addresses: report.addresses.clone(),
        },
    );
}

fn disconnect(app: &App, node_id: &str, stream: u64) {
    let mut directors = app
        .directors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(d) = directors.get_mut(node_id).filter(|d| d.stream == stream) {
        d.connected = false;
    }
}

/// The health verdicts in `report` that count and differ from the state:
/// those for services whose VIP `node` owns.
fn check_verdicts(app: &App, node: &str, report: &pb::DirectorReport) -> Vec<Command> {
    let data = app.state.read();
    let state = &data.state;
    // The common heartbeat: nothing failing, nothing recorded failing.
    // Skips walking every backend of every service several times a second.
    if report.unhealthy.is_empty() && state.director_down.is_empty() {
        return Vec::new();
    }
    let mut wanted: BTreeMap<String, BTreeSet<SocketAddr>> = BTreeMap::new();
    for (service, addr) in state.director_checks() {
        let owned = state
            .services
            .get(&service)
            .and_then(|s| s.vip())
            .and_then(|vip| state.owners.get(&vip))
            .is_some_and(|o| o.director == node);
        if !owned {
            continue;
        }
        let down = report.unhealthy.iter().any(|b| {
            b.service == service
                && b.address.parse::<IpAddr>().ok() == Some(addr.ip())
                && b.port == u32::from(addr.port())
        });
        let set = wanted.entry(service).or_default();
        if down {
            set.insert(addr);
        }
    }
    wanted
        .into_iter()
        .filter(|(service, down)| {
            state
                .director_down
                .get(service)
                .cloned()
                .unwrap_or_default()
                != *down
        })
        .map(|(service, down)| Command::SetDirectorChecks { service, down })
        .collect()
}

/// The VIPs `node` owns among those the configuration still has.
fn leases(state: &State, node: &str) -> Vec<pb::VipLease> {
    let vips = crate::placement::vips(state.services.values());
    state
        .owners
        .iter()
        .filter(|(vip, o)| o.director == node && vips.contains_key(vip))
        .map(|(vip, o)| pb::VipLease {
            vip: vip.to_string(),
            epoch: o.epoch,
        })
        .collect()
}

/// The next message for `node`: its leases always, the configuration only
/// when the revision differs from `sent`. Read under one lock, so the
/// revision, the configuration and the leases belong together.
fn desired(app: &App, node: &str, heartbeat_ack: u64, sent: Option<u64>) -> pb::DirectorDesired {
    let data = app.state.read();
    let state = &data.state;
    pb::DirectorDesired {
        revision: state.revision,
        config: (sent != Some(state.revision)).then(|| pb::DesiredConfig {
            services: state
                .effective_services()
                .map(|s| pb::Service::from(&s))
                .collect(),
            checks: state
                .director_checks()
                .into_iter()
                .map(|(service, a)| pb::BackendRef {
                    service,
                    address: a.ip().to_string(),
                    port: a.port().into(),
                })
                .collect(),
        }),
        heartbeat_ack,
        leases: leases(state, node),
        lease_ms: u32::try_from(app.leases.fence.as_millis()).unwrap_or(u32::MAX),
    }
}

type DesiredStream = Pin<Box<dyn Stream<Item = Result<pb::DirectorDesired, Status>> + Send>>;

#[tonic::async_trait]
impl pb::director_sync_server::DirectorSync for DirectorSync {
    type SyncStream = DesiredStream;

    #[tracing::instrument(skip_all, err)]
    async fn sync(
        &self,
        req: Request<Streaming<pb::DirectorReport>>,
    ) -> Result<Response<DesiredStream>, Status> {
        self.app.require_leader().map_err(status)?;
        let caller = super::authz::caller(&req);
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("node_id: the stream ended before the first report")
        })?;
        check_name("node_id", &first.node_id).map_err(|e| status(e.into()))?;
        // A director speaks only for itself (later reports must keep the id).
        if let Some(c) = caller.as_ref().filter(|c| c.identity.name != first.node_id) {
            return Err(Status::permission_denied(format!(
                "node_id: {} may not report as director {}",
                c.identity, first.node_id
            )));
        }
        let node = first.node_id.clone();
        let stream = STREAMS.fetch_add(1, Ordering::Relaxed);
        record(&self.app, &first, stream);
        tracing::info!(director = %node, "director connected");

        let app = self.app.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut changed = app.state.subscribe();
            let mut metrics = app.raft.metrics();
            let mut shutdown = app.shutdown.clone();
            let mut sent_revision = None;
            let mut budget = super::budget::WriteBudget::new(std::time::Instant::now());
            let mut ack = if app.may_grant_leases() {
                first.heartbeat
            } else {
                0
            };
            loop {
                // Revoked, or expired since the stream began.
                if super::authz::end_if_cut_off(&app, caller.as_ref(), &tx).await {
                    break;
                }
                let msg = desired(&app, &node, ack, sent_revision);
                let revision = msg.revision;
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
                sent_revision = Some(revision);
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(report)) if report.node_id == node => {
                            // No ack, no lease: a leader that cannot show a
                            // recent quorum may have been replaced.
                            if app.may_grant_leases() {
                                ack = report.heartbeat;
                            }
                            record(&app, &report, stream);
                            for cmd in check_verdicts(&app, &node, &report) {
                                // Over budget: a later report carries the change.
                                if !budget.take(std::time::Instant::now()) {
                                    break;
                                }
                                if let Err(e) = app.write(cmd).await {
                                    tracing::warn!(director = %node, error = %e, "recording health verdicts");
                                }
                            }
                        }
                        Ok(Some(report)) => {
                            let msg = format!("node_id: this stream belongs to {node}, not {}", report.node_id);
                            let _ = tx.send(Err(Status::invalid_argument(msg))).await;
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    },
                    r = changed.changed() => if r.is_err() { break },
                    r = metrics.changed() => {
                        if r.is_err() { break }
                        if let Err(e) = app.require_leader() {
                            let _ = tx.send(Err(status(e))).await;
                            break;
                        }
                    }
                    // Drop the non-Send watch::Ref before any arm awaits.
                    _ = async { let _ = shutdown.wait_for(|down| *down).await; } => break,
                }
            }
            disconnect(&app, &node, stream);
            tracing::info!(director = %node, "director disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The leader's view of the directors, for `ListDirectors`.
pub(super) fn list(app: &App) -> Vec<pb::DirectorStatus> {
    let directors = app
        .directors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    directors
        .iter()
        .map(|(node_id, d)| pb::DirectorStatus {
            node_id: node_id.clone(),
            labels: d.labels.clone().into_iter().collect(),
            connected: d.connected,
            last_seen_ms: u64::try_from(d.last_seen.elapsed().as_millis()).unwrap_or(u64::MAX),
            applied_revision: d.applied_revision,
            errors: d.errors.clone(),
            foreign_services: d.foreign_services.clone(),
            changes_applied: d.changes_applied,
            held: d.held.clone(),
            owns: leases(&app.state.read().state, node_id),
            live: d.live(app.leases),
            stats: d.stats.as_ref().map(|(s, _)| (**s).clone()),
            stats_age_ms: d.stats.as_ref().map_or(0, |(_, at)| {
                u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)
            }),
        })
        .collect()
}

/// Every VIP of the configuration: owner, epoch, whether the owner reports
/// holding it, and its services.
pub(super) fn vips(app: &App) -> Vec<pb::VipStatus> {
    let held: BTreeMap<String, Vec<pb::VipLease>> = app
        .directors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(name, d)| (name.clone(), d.held.clone()))
        .collect();
    let data = app.state.read();
    let state = &data.state;
    let mut out: BTreeMap<std::net::IpAddr, pb::VipStatus> = BTreeMap::new();
    for s in state.services.values() {
        if let Some(address) = s.vip() {
            let entry = out.entry(address).or_insert_with(|| {
                let owner = state.owners.get(&address);
                let name = owner.map(|o| o.director.clone()).unwrap_or_default();
                let epoch = owner.map_or(0, |o| o.epoch);
                let vip = address.to_string();
                let is_held = held
                    .get(&name)
                    .is_some_and(|h| h.iter().any(|l| l.vip == vip && l.epoch == epoch));
                pb::VipStatus {
                    vip,
                    owner: name,
                    epoch,
                    held: is_held,
                    services: Vec::new(),
                }
            });
            entry.services.push(s.name.clone());
        }
    }
    out.into_values().collect()
}
