//! This node's in-memory view of its fleet: what each director last
//! reported and when each realserver agent was last heard from.
//!
//! Soft state, behind one lock. Directors report to every controller, so a
//! new leader already knows which are live; realserver agents report to the
//! leader only and are known again once they reconnect. Counters live here
//! rather than in Raft, where they would flood the log.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use lb_proto::pb;

use crate::store::{SharedState, SmData};
use crate::timing::LeaseTiming;

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
    /// Shared with its stream, which replaces it only when a report says
    /// otherwise: a director holding 1,000 VIPs reports them every heartbeat.
    pub held: Arc<Vec<pb::VipLease>>,
    /// Its last IPVS counters and when they arrived (reports carry them
    /// only when they are new).
    pub stats: Option<(Arc<pb::IpvsStats>, Instant)>,
    /// Its host's own addresses (for NAT realservers' route check).
    pub addresses: Vec<String>,
    /// It is stopping and wants its VIPs moved.
    pub leaving: bool,
    /// The services whose check fails on it: a local service's check
    /// there makes it unfit for the service's VIP.
    pub failing: BTreeSet<String>,
}

impl DirectorSeen {
    /// Heard from within `fence + margin`. Not `connected`: a director whose
    /// stream just broke (its agent restarting, a controller failing over)
    /// still holds its VIPs until its lease runs out. Only silence counts.
    pub fn live(&self, timing: LeaseTiming) -> bool {
        self.last_seen.elapsed() < timing.silence()
    }
}

/// Directors and realserver agents as this node (when leading) sees them.
#[derive(Debug, Default)]
pub struct Members {
    pub directors: BTreeMap<String, DirectorSeen>,
    /// When each realserver agent last reported.
    pub agents: BTreeMap<String, Instant>,
}

/// The counters `base` (none yet: empty) updated by `delta`: the services
/// it lists replace theirs, those it removes go.
fn merge(base: Option<&pb::IpvsStats>, delta: &pb::IpvsStats) -> pb::IpvsStats {
    let mut rows: std::collections::BTreeMap<&str, &pb::ServiceStats> = base
        .into_iter()
        .flat_map(|b| &b.services)
        .map(|s| (s.service.as_str(), s))
        .collect();
    for name in &delta.removed {
        rows.remove(name.as_str());
    }
    for s in &delta.services {
        rows.insert(s.service.as_str(), s);
    }
    pb::IpvsStats {
        services: rows.into_values().cloned().collect(),
        ..Default::default()
    }
}

/// [`Members`] behind one lock.
#[derive(Debug, Default)]
pub struct Fleet(Mutex<Members>);

impl Fleet {
    /// The members; hold the guard briefly, and never across an await.
    pub fn lock(&self) -> MutexGuard<'_, Members> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a director's report, which came on `stream`.
    /// `held`: what the report says the director holds.
    pub fn director_reported(
        &self,
        report: &pb::DirectorReport,
        held: Arc<Vec<pb::VipLease>>,
        stream: u64,
        timing: LeaseTiming,
    ) {
        let mut m = self.lock();
        let now = Instant::now();
        let before = m.directors.get(&report.node_id);
        let live_since = before
            .filter(|d| d.live(timing))
            .map_or(now, |d| d.live_since);
        let stats = match &report.stats {
            Some(s) if s.delta => {
                let base = before.and_then(|d| d.stats.as_ref()).map(|(b, _)| &**b);
                Some((Arc::new(merge(base, s)), now))
            }
            Some(s) => Some((Arc::new(s.clone()), now)),
            None => before.and_then(|d| d.stats.clone()),
        };
        m.directors.insert(
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
                held,
                stats,
                addresses: report.addresses.clone(),
                leaving: report.leaving,
                failing: report.unhealthy.iter().map(|b| b.service.clone()).collect(),
            },
        );
    }

    /// A director's `stream` ended (a newer one may have replaced it).
    pub fn director_disconnected(&self, node_id: &str, stream: u64) {
        let mut m = self.lock();
        if let Some(d) = m.directors.get_mut(node_id).filter(|d| d.stream == stream) {
            d.connected = false;
        }
    }

    /// A realserver agent reported.
    pub fn agent_seen(&self, node_id: &str) {
        self.lock()
            .agents
            .insert(node_id.to_string(), Instant::now());
    }

    /// The live directors' own addresses, sorted.
    pub fn director_addresses(&self, timing: LeaseTiming) -> Vec<String> {
        let m = self.lock();
        let mut out: Vec<String> = m
            .directors
            .values()
            .filter(|d| d.live(timing))
            .flat_map(|d| d.addresses.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The directors, for `ListDirectors` and `GetStatus`.
    pub fn directors_status(
        &self,
        shared: &SharedState,
        timing: LeaseTiming,
    ) -> Vec<pb::DirectorStatus> {
        // Whoever needs both locks takes the fleet's first.
        let directors = self.lock().directors.clone();
        let data = shared.read();
        directors
            .iter()
            .map(|(node_id, d)| pb::DirectorStatus {
                node_id: node_id.clone(),
                labels: d.labels.clone().into_iter().collect(),
                connected: d.connected,
                last_seen_ms: millis_since(d.last_seen),
                applied_revision: d.applied_revision,
                errors: d.errors.clone(),
                foreign_services: d.foreign_services.clone(),
                changes_applied: d.changes_applied,
                held: (*d.held).clone(),
                owns: vip_leases(&data, node_id),
                live: d.live(timing),
                stats: d.stats.as_ref().map(|(s, _)| (**s).clone()),
                stats_age_ms: d.stats.as_ref().map_or(0, |(_, at)| millis_since(*at)),
            })
            .collect()
    }

    /// Every VIP of the configuration: owner, epoch, whether the owner
    /// reports holding it, and its services.
    pub fn vips_status(&self, shared: &SharedState) -> Vec<pb::VipStatus> {
        let held: BTreeMap<String, Arc<Vec<pb::VipLease>>> = self
            .lock()
            .directors
            .iter()
            .map(|(name, d)| (name.clone(), d.held.clone()))
            .collect();
        let data = shared.read();
        let state = &data.state;
        let mut out: BTreeMap<IpAddr, pb::VipStatus> = BTreeMap::new();
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
}

/// The VIPs `node` owns, as the wire carries them.
pub fn vip_leases(data: &SmData, node: &str) -> Vec<pb::VipLease> {
    lb_proto::convert::vip_leases(data.owned_by(node))
}

fn millis_since(at: Instant) -> u64 {
    u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_merges_into_the_counters_held() {
        let row = |name: &str, conns: u64| pb::ServiceStats {
            service: name.into(),
            counters: Some(pb::Counters {
                conns,
                ..Default::default()
            }),
            ..Default::default()
        };
        let base = pb::IpvsStats {
            services: vec![row("a", 1), row("b", 1), row("c", 1)],
            ..Default::default()
        };
        let delta = pb::IpvsStats {
            services: vec![row("b", 5), row("d", 0)],
            delta: true,
            removed: vec!["c".into()],
        };
        let merged = merge(Some(&base), &delta);
        assert_eq!(merged.services, [row("a", 1), row("b", 5), row("d", 0)]);
        assert!(!merged.delta);
        assert_eq!(merge(None, &delta).services.len(), 2);
    }
}
