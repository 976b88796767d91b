//! `lb.v1.DirectorSync`: one stream per director on **every** controller.
//!
//! Each controller answers a director's heartbeats with the VIP lease grants
//! of its own applied state ([`crate::grants`]): a director keeps its VIPs
//! while a majority of controllers answer, whichever of them leads. Each
//! also keeps what it hears from each director (liveness, applied revision,
//! errors, foreign services) in its [`crate::fleet`], so a new leader knows
//! at once who is live; only the leader turns health verdicts into Raft
//! writes. The stream skeleton is [`super::stream`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lb_proto::convert::{check_name, parse_vip_leases, vip_leases};
use lb_proto::pb;
use tonic::{Request, Response, Status, Streaming};

use super::budget::WriteBudget;
use super::stream::{first_report, serve, AgentStream, Outbound};
use crate::app::App;
use crate::desired;
use crate::error::status;
use crate::grants::Owned;
use crate::state::{Command, State};
use crate::store::SmData;

pub(super) struct DirectorSync {
    app: Arc<App>,
}

impl DirectorSync {
    pub(super) fn new(app: Arc<App>) -> Self {
        DirectorSync { app }
    }
}

/// Numbers the streams, for [`crate::fleet::DirectorSeen::stream`].
static STREAMS: AtomicU64 = AtomicU64::new(0);

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

/// One director's stream.
struct Director {
    node: String,
    stream: u64,
    /// The heartbeat the next message acknowledges (0: none).
    ack: u64,
    /// The configuration revision the director holds from this node.
    sent_revision: Option<u64>,
    /// What the director last reported holding (shared with the fleet).
    held: Arc<Vec<pb::VipLease>>,
    /// When a grant withheld in the last message becomes due.
    wake: Option<Instant>,
    /// The last answer's heartbeat and the VIPs it granted (`None`: no
    /// answer yet): a message with nothing new for them carries no grants.
    answered: Option<(u64, Owned)>,
    /// What it owns, as of `SmData::placement_inputs` (which moves with
    /// every change of owners or VIPs): with 1,000 VIPs, reading them from
    /// the owners again on every configuration change cost a millisecond
    /// under an emulated CPU, in the path of each change.
    owned: Option<(u64, Owned)>,
    /// Moves when a report's `held` differs from the one before.
    held_version: u64,
    /// The leases `superseded` found over, for the placement inputs and
    /// `held_version` they were judged on (a director reports the same
    /// 1,000 leases on every heartbeat).
    superseded: Option<((u64, u64), Vec<pb::VipLease>)>,
    /// The director reads `leases_same`, and the grants the last answer
    /// sent (`None`: none sent yet on this stream).
    knows_same: bool,
    last_given: Option<Vec<(IpAddr, u64)>>,
}

impl Director {
    /// Records what a report says about the director's VIPs: what it holds,
    /// and the epochs it let go for good.
    /// The report's `held` is taken when it differs, else left.
    fn heard(&mut self, app: &App, report: &mut pb::DirectorReport) {
        self.ack = report.heartbeat;
        self.knows_same = report.knows_leases_same;
        // `held_same`: as the previous report said.
        if !report.held_same && *self.held != report.held {
            self.held = Arc::new(std::mem::take(&mut report.held));
            self.held_version += 1;
        }
        if report.released.is_empty() {
            return;
        }
        let mut grants = app.grants();
        let now = Instant::now();
        for (vip, epoch) in parse_vip_leases(&report.released) {
            grants.released(&self.node, vip, epoch, now);
        }
    }

    /// What changed since the revision the director holds from this node,
    /// if anything did.
    fn update(&mut self, data: &SmData) -> Option<Vec<pb::ConfigUpdate>> {
        if self.sent_revision == Some(data.state.revision) {
            return None;
        }
        let derived = &data.derived;
        let base = self
            .sent_revision
            .and_then(|from| Some((from, derived.changed(from, derived.revision)?)));
        self.sent_revision = Some(derived.revision);
        Some(desired::update(
            &derived.units,
            base.as_ref().map(|(from, c)| (*from, c)),
        ))
    }
}

/// The cluster's voters and every member's API address, as this node knows them.
fn membership(app: &App) -> (Vec<u64>, Vec<String>) {
    let metrics = app.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voters = membership.voter_ids().collect();
    let addrs = membership.nodes().map(|(_, n)| n.addr.clone()).collect();
    (voters, addrs)
}

/// Of the leases `held`, those whose epoch `state` shows to be over for
/// `owned` (what the director owns now): moved on, or no longer configured.
/// A VIP whose epoch this node has not reached yet is not judged.
fn superseded(state: &State, held: &[pb::VipLease], owned: &[(IpAddr, u64)]) -> Vec<pb::VipLease> {
    // A set: a director holding 1,000 VIPs would otherwise cost a million
    // comparisons on every answer.
    let owned: BTreeSet<&(IpAddr, u64)> = owned.iter().collect();
    held.iter()
        .filter(|l| {
            let Ok(vip) = l.vip.parse::<IpAddr>() else {
                return false;
            };
            let known = state.owners.get(&vip).map_or(0, |o| o.epoch);
            known >= l.epoch && !owned.contains(&(vip, l.epoch))
        })
        .cloned()
        .collect()
}

/// Update parts that carry nothing else.
fn continued(
    revision: u64,
    controller_id: u64,
    parts: impl Iterator<Item = pb::ConfigUpdate>,
) -> Vec<pb::DirectorDesired> {
    parts
        .map(|update| pb::DirectorDesired {
            revision,
            update: Some(update),
            controller_id,
            continued: true,
            ..Default::default()
        })
        .collect()
}

impl AgentStream for Director {
    type Report = pb::DirectorReport;
    type Desired = pb::DirectorDesired;
    const ROLE: &'static str = "director";
    const LEADER_ONLY: bool = false;

    fn node_id(report: &pb::DirectorReport) -> &str {
        &report.node_id
    }

    /// Its grants, and when the revision differs from the one the director
    /// holds from this node, what changed since (a delta), or everything (a
    /// snapshot) when the history no longer reaches back that far: split
    /// into parts, the first carrying the grants. Read under one lock, so
    /// the revision, the configuration and the grants belong together.
    ///
    /// Grants answer a report (they count from its send time), a VIP given
    /// or taken, or a withheld grant come due. A configuration change with
    /// none of those would only repeat the last answer's grants — for 1,000
    /// VIPs, work on both sides in the path of every change — so its parts
    /// all go as `continued`, which carry no grants and acknowledge nothing.
    fn desired(&mut self, app: &App) -> Vec<pb::DirectorDesired> {
        let data = app.state.read();
        let state = &data.state;
        let owned = match &self.owned {
            Some((at, owned)) if *at == data.placement_inputs => owned.clone(),
            _ => {
                let owned = Arc::new(data.owned_by(&self.node));
                self.owned = Some((data.placement_inputs, owned.clone()));
                owned
            }
        };
        let answer = self.wake.is_some()
            || self.answered.as_ref().is_none_or(|(ack, given)| {
                *ack != self.ack || !(Arc::ptr_eq(given, &owned) || **given == *owned)
            });
        if !answer {
            return self.update(&data).map_or_else(Vec::new, |parts| {
                continued(state.revision, app.id, parts.into_iter())
            });
        }
        let (voters, controllers) = membership(app);
        let now = Instant::now();
        let leases = if self.ack > 0 {
            let mut grants = app.grants();
            let given = grants.grant(&self.node, &owned, now);
            self.wake = grants.due(&self.node, &owned, now);
            given
        } else {
            self.wake = None;
            Vec::new()
        };
        let mut parts = self.update(&data).unwrap_or_default().into_iter();
        let judged_on = (data.placement_inputs, self.held_version);
        let superseded = match &self.superseded {
            Some((at, over)) if *at == judged_on => over.clone(),
            _ => {
                let over = superseded(state, &self.held, &owned);
                self.superseded = Some((judged_on, over.clone()));
                over
            }
        };
        self.answered = Some((self.ack, owned));
        let same = self.knows_same && self.ack > 0 && self.last_given.as_ref() == Some(&leases);
        let sent = if same {
            Vec::new()
        } else {
            vip_leases(leases.iter().copied())
        };
        self.last_given = (self.ack > 0).then_some(leases);
        let first = pb::DirectorDesired {
            revision: state.revision,
            update: parts.next(),
            heartbeat_ack: self.ack,
            leases: sent,
            leases_same: same,
            lease_ms: app.leases.lease_ms(),
            controller_id: app.id,
            voters,
            controllers,
            superseded,
            continued: false,
            knows_held_same: true,
        };
        let mut out = vec![first];
        out.extend(continued(state.revision, app.id, parts));
        out
    }

    async fn report(
        &mut self,
        app: &App,
        mut report: pb::DirectorReport,
        budget: &mut WriteBudget,
    ) -> Result<(), Status> {
        self.heard(app, &mut report);
        app.fleet
            .director_reported(&report, self.held.clone(), self.stream, app.leases);
        // Verdicts become Raft writes, which only the leader makes.
        if app.require_leader().is_err() {
            return Ok(());
        }
        for cmd in check_verdicts(app, &self.node, &report) {
            // Over budget: a later report carries the change.
            if !budget.take(Instant::now()) {
                break;
            }
            if let Err(e) = app.write(cmd).await {
                tracing::warn!(director = %self.node, error = %e, "recording health verdicts");
            }
        }
        Ok(())
    }

    fn ended(&mut self, app: &App) {
        app.fleet.director_disconnected(&self.node, self.stream);
    }

    fn wake_at(&self) -> Option<Instant> {
        self.wake
    }
}

#[tonic::async_trait]
impl pb::director_sync_server::DirectorSync for DirectorSync {
    type SyncStream = Outbound<pb::DirectorDesired>;

    #[tracing::instrument(skip_all, err)]
    async fn sync(
        &self,
        req: Request<Streaming<pb::DirectorReport>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let caller = super::authz::caller(&req);
        let mut inbound = req.into_inner();
        let mut first = first_report(&mut inbound).await?;
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
        tracing::info!(director = %node, "director connected");
        let mut director = Director {
            node: node.clone(),
            stream,
            ack: 0,
            // A director that held a configuration from this node resumes
            // from it (by delta, if the history still reaches back).
            sent_revision: (first.config_revision > 0).then_some(first.config_revision),
            held: Arc::default(),
            wake: None,
            answered: None,
            owned: None,
            held_version: 0,
            superseded: None,
            knows_same: false,
            last_given: None,
        };
        director.heard(&self.app, &mut first);
        self.app
            .fleet
            .director_reported(&first, director.held.clone(), stream, self.app.leases);
        Ok(Response::new(serve(
            self.app.clone(),
            caller,
            node,
            inbound,
            director,
        )))
    }
}
