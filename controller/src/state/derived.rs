//! What is computed from the configuration, kept up to date change by
//! change and shared by every reader: each VIP and what it needs (the
//! leader's placement, every director's grants), the services each
//! backend host serves (the realserver streams), and each service as the
//! directors program it — its *unit* — with a short history of which units
//! changed between revisions, from which the director streams send deltas
//! (see [`crate::desired`]).
//!
//! A change recomputes only the services it touches ([`State::touches`],
//! found before it applies): with 10,000 services one realserver's weight
//! costs one unit and one VIP, not the whole configuration. A unit that
//! changes without a new revision (a realserver agent starts or stops
//! checking a listed backend: only the directors' checks move) goes out
//! with the next revision's delta. The history lives in memory only: a
//! restarted controller, or one that installed a snapshot, sends snapshots.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use lb_proto::model::Service;
use lb_proto::pb;

use super::{Agent, Command, Needs, State};

/// One service as the directors get it: its effective definition (agents'
/// backends, verdicts, admin states applied) and the backends the
/// directors health-check.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub service: pb::Service,
    pub checks: Vec<pb::BackendRef>,
    /// Below quorum (see `state::quorum`): the owner's quorum hook runs
    /// when this changes, even where the table does not (no sorry server).
    pub below_quorum: bool,
}

/// Every service's unit, by name.
pub type Units = BTreeMap<String, Unit>;

/// The units that changed from one revision to the next.
#[derive(Debug, Clone)]
struct Step {
    from: u64,
    to: u64,
    changed: BTreeSet<String>,
}

/// How much history is kept: enough for a director that missed a few
/// minutes of changes, bounded in memory whatever the change rate.
pub const KEPT_STEPS: usize = 1024;
const KEPT_NAMES: usize = 100_000;

#[derive(Debug, Clone, Default)]
pub struct Derived {
    /// The revision this is up to date with.
    pub revision: u64,
    /// The configuration's VIPs and what each needs.
    pub vips: BTreeMap<IpAddr, Needs>,
    pub units: Units,
    /// Each backend address and the services with a backend there, failing
    /// ones included: what a realserver agent at that address serves.
    pub hosts: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Each VIP's services, and each service's VIP: what a change to one
    /// service needs to recompute its VIP's needs; each service's backend
    /// addresses, likewise for `hosts`.
    by_vip: BTreeMap<IpAddr, BTreeSet<String>>,
    vip_of: BTreeMap<String, IpAddr>,
    hosts_of: BTreeMap<String, BTreeSet<IpAddr>>,
    steps: VecDeque<Step>,
    names_kept: usize,
    /// False until the first change after [`Derived::of`]: the revision it
    /// started from is no base for a delta (see [`Derived::update`]).
    tracking: bool,
    /// Units changed since the last revision (see the module doc).
    pending: BTreeSet<String>,
}

/// One service's unit in `state`.
fn unit_of(state: &State, s: &Service) -> Unit {
    Unit {
        service: pb::Service::from(&state.effective(s)),
        checks: state
            .director_checks_of(s)
            .into_iter()
            .map(|a| pb::BackendRef {
                service: s.name.clone(),
                address: a.ip().to_string(),
                port: a.port().into(),
            })
            .collect(),
        below_quorum: state.below_quorum.contains(&s.name),
    }
}

impl Derived {
    /// Everything, from scratch (at start, after a snapshot), with no history.
    pub fn of(state: &State) -> Self {
        let mut d = Derived {
            revision: state.revision,
            ..Default::default()
        };
        let all: BTreeSet<String> = state.services.keys().cloned().collect();
        d.recompute(state, &all);
        d.pending.clear();
        d
    }

    /// Brings this up to `state` after changes that touched the services
    /// `touched` (and no others), and records which units changed; true
    /// when a VIP came, went or needs other directors now.
    pub fn update(&mut self, state: &State, touched: &BTreeSet<String>) -> bool {
        let vips_moved = self.recompute(state, touched);
        if state.revision == self.revision {
            return vips_moved;
        }
        if !self.tracking {
            // A director's copy of the revision this started at came from
            // another process — maybe another version of this code, with
            // other units: it gets a snapshot, never a delta from there.
            self.tracking = true;
            self.pending.clear();
        } else if state.revision < self.revision {
            // Never, short of a bug: a history going back is void.
            self.steps.clear();
            self.names_kept = 0;
        } else {
            let changed = std::mem::take(&mut self.pending);
            self.names_kept += changed.len();
            self.steps.push_back(Step {
                from: self.revision,
                to: state.revision,
                changed,
            });
        }
        while self.steps.len() > KEPT_STEPS || self.names_kept > KEPT_NAMES {
            match self.steps.pop_front() {
                Some(s) => self.names_kept -= s.changed.len(),
                None => break,
            }
        }
        self.revision = state.revision;
        vips_moved
    }

    /// The units and VIPs of `names`, as `state` has them now; true when a
    /// VIP's needs changed (or it came or went).
    fn recompute(&mut self, state: &State, names: &BTreeSet<String>) -> bool {
        let mut moved = false;
        let mut vips = BTreeSet::new();
        for name in names {
            let s = state.services.get(name);
            // Most changes (a weight, a drain) keep the service's VIP and
            // backend addresses: then its entries stay as they are. With
            // 10,000 services a backend address is shared by ~40 of them,
            // and taking the name out of each of its 10 sets to put it
            // back was an N-dependent cost in the path of every write.
            let vip = s.and_then(|s| s.vip());
            let had = self.vip_of.get(name).copied();
            if had != vip {
                if let Some(old) = had {
                    self.vip_of.remove(name);
                    if let Some(set) = self.by_vip.get_mut(&old) {
                        set.remove(name);
                    }
                }
                if let Some(new) = vip {
                    self.vip_of.insert(name.clone(), new);
                    self.by_vip.entry(new).or_default().insert(name.clone());
                }
            }
            vips.extend(had);
            vips.extend(vip);
            let addrs: BTreeSet<IpAddr> = s
                .map(|s| {
                    state
                        .backends(s)
                        .iter()
                        .map(|(rs, _, _)| rs.address)
                        .collect()
                })
                .unwrap_or_default();
            if s.is_none() || self.hosts_of.get(name) != Some(&addrs) {
                for addr in self.hosts_of.remove(name).into_iter().flatten() {
                    if let Some(set) = self.hosts.get_mut(&addr) {
                        set.remove(name);
                        if set.is_empty() {
                            self.hosts.remove(&addr);
                        }
                    }
                }
                if s.is_some() {
                    for addr in &addrs {
                        self.hosts.entry(*addr).or_default().insert(name.clone());
                    }
                    self.hosts_of.insert(name.clone(), addrs);
                }
            }
            let Some(s) = s else {
                if self.units.remove(name).is_some() {
                    self.pending.insert(name.clone());
                }
                continue;
            };
            let unit = unit_of(state, s);
            if self.units.get(name) != Some(&unit) {
                self.units.insert(name.clone(), unit);
                self.pending.insert(name.clone());
            }
        }
        for vip in vips {
            let services = self.by_vip.get(&vip).into_iter().flatten();
            let needs = super::vips(services.filter_map(|n| state.services.get(n).map(|s| &**s)));
            match needs.into_iter().next() {
                Some((_, needs)) => {
                    moved |= self.vips.insert(vip, needs.clone()).as_ref() != Some(&needs);
                }
                None => {
                    moved |= self.vips.remove(&vip).is_some();
                    self.by_vip.remove(&vip);
                }
            }
        }
        moved
    }

    /// The services whose unit changed from revision `from` to `to` (this
    /// one); `None` when the history no longer reaches back to `from`.
    pub fn changed(&self, from: u64, to: u64) -> Option<BTreeSet<String>> {
        if from == to {
            return Some(BTreeSet::new());
        }
        let start = self.steps.iter().position(|s| s.from == from)?;
        let mut names = BTreeSet::new();
        for step in self.steps.iter().skip(start) {
            names.extend(step.changed.iter().cloned());
            if step.to == to {
                return Some(names);
            }
        }
        None
    }
}

impl State {
    /// The services whose unit or VIP `cmd` may change, found before it
    /// applies (a deleted service, an agent's old labels).
    pub fn touches(&self, cmd: &Command) -> BTreeSet<String> {
        let one = |name: &String| BTreeSet::from([name.clone()]);
        match cmd {
            Command::CreateService { service } | Command::UpdateService { service, .. } => {
                one(&service.name)
            }
            Command::DeleteService { name } => one(name),
            Command::ApplyServices { services, .. } => {
                services.iter().map(|s| s.name.clone()).collect()
            }
            Command::AddRealServer { service, .. }
            | Command::UpdateRealServer { service, .. }
            | Command::RemoveRealServer { service, .. }
            | Command::SetDirectorChecks { service, .. } => one(service),
            Command::RegisterRealServer { agent } => {
                let old = self.agents.get(&agent.node_id);
                self.served_by(&[agent].into_iter().chain(old).collect::<Vec<_>>())
            }
            Command::SetAgentDrain { node_id, .. } | Command::SetAgentLost { node_id } => self
                .agents
                .get(node_id)
                .map(|a| self.served_by(&[a]))
                .unwrap_or_default(),
            Command::AssignVip { .. }
            | Command::RevokeNode { .. }
            | Command::CreateJoinToken { .. }
            | Command::DeleteJoinToken { .. }
            | Command::RedeemJoinToken { .. }
            | Command::SetCa { .. }
            | Command::IssueAdmin { .. }
            | Command::RevokeAdmin { .. } => BTreeSet::new(),
        }
    }

    /// The services the state of any of `agents` can change: those their
    /// labels join, and those that list a realserver at their address
    /// (whose health and drain they report). One walk over the services,
    /// without copying one.
    pub(super) fn served_by(&self, agents: &[&Agent]) -> BTreeSet<String> {
        let serves = |a: &Agent, s: &Service| {
            a.matches(s) || s.realservers.iter().any(|rs| rs.address == a.address)
        };
        self.services
            .values()
            .filter(|s| agents.iter().any(|a| serves(a, s)))
            .map(|s| s.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{agent, rs, service, tcp_check};

    /// Applies `cmd` the way the state machine does; true when it moved a
    /// VIP's needs.
    fn apply(st: &mut State, d: &mut Derived, cmd: Command) -> bool {
        let touched = st.touches(&cmd);
        st.apply(cmd).expect("applies");
        d.update(st, &touched)
    }

    /// The leader's placement skips its pass over the VIPs while no change
    /// moved one: a realserver's weight does not, a new VIP, a service's
    /// director selector and the last service of a VIP going do.
    #[test]
    fn only_changes_to_the_vips_or_their_needs_say_so() {
        let mut st = State::default();
        let mut d = Derived::of(&st);
        let mut web = service("web", "10.0.0.1");
        web.realservers = vec![rs("10.2.0.1", 80)];
        let service = web.clone();
        assert!(apply(&mut st, &mut d, Command::CreateService { service }));
        let patch = lb_proto::model::RealServerPatch {
            weight: Some(7),
            ..Default::default()
        };
        let (service, address, port) = ("web".to_string(), "10.2.0.1".parse().unwrap(), 80);
        let weight = Command::UpdateRealServer {
            service,
            address,
            port,
            patch,
        };
        assert!(!apply(&mut st, &mut d, weight), "a weight");
        let mut picky = Service::clone(&st.services["web"]);
        picky.directors.selector = [("zone".to_string(), "a".to_string())].into();
        let update = Command::UpdateService {
            service: picky,
            expected_mod_revision: 0,
        };
        assert!(apply(&mut st, &mut d, update), "a director selector");
        let name = "web".to_string();
        assert!(apply(&mut st, &mut d, Command::DeleteService { name }));
    }

    /// After every kind of change, what was kept up to date equals what is
    /// computed from scratch — the one thing an incremental view must get
    /// right.
    #[test]
    fn kept_up_to_date_it_equals_the_view_computed_from_scratch() {
        let mut st = State::default();
        let mut d = Derived::of(&st);
        let check = |st: &State, d: &Derived, what: &str| {
            let fresh = Derived::of(st);
            assert_eq!(d.units, fresh.units, "units after {what}");
            assert_eq!(d.vips, fresh.vips, "VIPs after {what}");
            assert_eq!(d.hosts, fresh.hosts, "backend hosts after {what}");
            assert_eq!(d.hosts_of, fresh.hosts_of, "services' hosts after {what}");
            assert_eq!(d.vip_of, fresh.vip_of, "services' VIPs after {what}");
            assert_eq!(d.by_vip, fresh.by_vip, "VIPs' services after {what}");
        };
        let mut web = service("web", "10.0.0.1");
        web.realservers = vec![rs("10.2.0.1", 80), rs("10.2.0.2", 80)];
        web.health_check = Some(tcp_check());
        apply(&mut st, &mut d, Command::CreateService { service: web });
        let mut api = service("api", "10.0.0.1");
        if let lb_proto::model::VirtualAddress::Endpoint { port, .. } = &mut api.address {
            *port = 443;
        }
        api.realserver_selector = [("pool".to_string(), "api".to_string())].into();
        apply(&mut st, &mut d, Command::CreateService { service: api });
        check(&st, &d, "two services on one VIP");
        let weight = Command::UpdateRealServer {
            service: "web".to_string(),
            address: "10.2.0.2".parse().unwrap(),
            port: 80,
            patch: lb_proto::model::RealServerPatch {
                weight: Some(7),
                ..Default::default()
            },
        };
        apply(&mut st, &mut d, weight);
        check(&st, &d, "a weight");
        let bare = service("bare", "10.0.0.3");
        apply(&mut st, &mut d, Command::CreateService { service: bare });
        check(&st, &d, "a service without backends");
        let name = "bare".to_string();
        apply(&mut st, &mut d, Command::DeleteService { name });
        check(&st, &d, "a service without backends deleted");
        // An agent at a listed backend's address: the directors stop
        // checking it, though the service itself does not change.
        apply(
            &mut st,
            &mut d,
            Command::RegisterRealServer {
                agent: agent("rs1", "10.2.0.1", "web"),
            },
        );
        check(&st, &d, "an agent at a listed address");
        // Relabelled: it joins api.
        apply(
            &mut st,
            &mut d,
            Command::RegisterRealServer {
                agent: agent("rs1", "10.2.0.1", "api"),
            },
        );
        check(&st, &d, "a relabelled agent");
        let node_id = "rs1".to_string();
        apply(&mut st, &mut d, Command::SetAgentLost { node_id });
        check(&st, &d, "a lost agent");
        let mut moved = Service::clone(&st.services["web"]);
        if let lb_proto::model::VirtualAddress::Endpoint { address, .. } = &mut moved.address {
            *address = "10.0.0.9".parse().unwrap();
        }
        apply(
            &mut st,
            &mut d,
            Command::UpdateService {
                service: moved,
                expected_mod_revision: 0,
            },
        );
        check(&st, &d, "a service moved to another VIP");
        let name = "api".to_string();
        apply(&mut st, &mut d, Command::DeleteService { name });
        check(&st, &d, "a deleted service");
        assert_eq!(
            d.vips.keys().collect::<Vec<_>>(),
            [&"10.0.0.9".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn the_history_names_what_changed_and_is_bounded() {
        let mut st = State::default();
        let mut d = Derived::of(&st);
        let create = |i: u32| Command::CreateService {
            service: service(
                &format!("s{i:05}"),
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
            ),
        };
        apply(&mut st, &mut d, create(1));
        assert_eq!(d.changed(0, 1), None, "where it started is no base");
        apply(&mut st, &mut d, create(2));
        let r1 = st.revision;
        apply(&mut st, &mut d, create(3));
        let name = "s00001".to_string();
        apply(&mut st, &mut d, Command::DeleteService { name });
        let changed = d.changed(r1, st.revision).expect("kept");
        assert_eq!(changed, ["s00001".to_string(), "s00003".to_string()].into());
        // A revision never seen here: none.
        assert_eq!(d.changed(r1 + 100, st.revision), None);
        for i in 0..(KEPT_STEPS as u32 + 1) {
            apply(&mut st, &mut d, create(10 + i));
        }
        assert_eq!(d.changed(r1, st.revision), None);
        assert!(d.changed(st.revision - 1, st.revision).is_some());
    }
}
