//! The replicated configuration and the commands that change it.
//!
//! This is pure, deterministic logic: every controller applies the same
//! commands in the same order and reaches the same [`State`]. A command that
//! breaks a rule changes nothing — not the services, not the revision — and
//! its error travels back to the client through the Raft response.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use lb_proto::convert::{check_realserver, patch_realserver};
use lb_proto::model::{AdminState, Family, RealServer, RealServerPatch, Service, VirtualAddress};
use lb_proto::FieldError;
use serde::{Deserialize, Serialize};

pub mod security;

pub use security::{CaKeys, JoinAttempt, JoinToken, Security};

/// How many events are kept for `WatchEvents` to resume from.
pub const EVENT_HISTORY: usize = 10_000;

/// A change to the configuration, as replicated in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateService {
        service: Service,
    },
    UpdateService {
        service: Service,
        /// 0 = unconditional.
        expected_mod_revision: u64,
    },
    DeleteService {
        name: String,
    },
    AddRealServer {
        service: String,
        realserver: RealServer,
    },
    UpdateRealServer {
        service: String,
        address: IpAddr,
        port: u16,
        patch: RealServerPatch,
    },
    RemoveRealServer {
        service: String,
        address: IpAddr,
        port: u16,
    },
    /// Gives a VIP to a director; applies only if the VIP's epoch is still
    /// `expected_epoch`, so a decision made on stale information is refused.
    AssignVip {
        vip: IpAddr,
        director: String,
        expected_epoch: u64,
    },
    /// A realserver agent (re)registers: it becomes a backend of every
    /// service whose `realserver_selector` its labels match.
    RegisterRealServer {
        agent: Agent,
    },
    /// Several services at once, all or nothing (`lbctl import`): each is
    /// created, or with `replace` replaces the service of the same name.
    ApplyServices {
        services: Vec<Service>,
        replace: bool,
    },
    /// An operator revokes a node's certificates: those issued up to `at_ms`.
    RevokeNode {
        node_id: String,
        #[serde(default)]
        at_ms: u64,
    },
    /// An operator mints a join token.
    CreateJoinToken {
        id: String,
        token: JoinToken,
    },
    DeleteJoinToken {
        id: String,
    },
    /// An agent joins with a token; on success the leader signs its
    /// certificate.
    RedeemJoinToken {
        attempt: JoinAttempt,
    },
    /// The bootstrapping controller hands the CA to the cluster, so any
    /// leader can sign.
    SetCa {
        ca: CaKeys,
    },
    /// An operator drains (or enables) an agent's host.
    SetAgentDrain {
        node_id: String,
        drain: bool,
    },
    /// The leader has not heard from an agent for the grace period: its
    /// backends drain until it reports again.
    SetAgentLost {
        node_id: String,
    },
    /// The VIP owner's health verdicts for a service's agentless backends:
    /// the ones failing their check.
    SetDirectorChecks {
        service: String,
        down: BTreeSet<SocketAddr>,
    },
}

/// A registered realserver agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub node_id: String,
    /// Its RIP.
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    /// Services whose health check fails on this host (after rise/fall).
    #[serde(default)]
    pub unhealthy: BTreeSet<String>,
    /// The agent is stopping and waits for connections to finish.
    #[serde(default)]
    pub draining: bool,
    /// Drained by an operator (`lbctl realserver drain`); kept across
    /// re-registrations until `enable`.
    #[serde(default)]
    pub drained: bool,
    /// Silent for the grace period (its next report clears it).
    #[serde(default)]
    pub lost: bool,
}

/// A backend's health as the agent on its host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Left out of the IPVS table until it is up again.
    Down,
    /// The service has no health check.
    Unchecked,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Unchecked => "unchecked",
        }
    }
}

impl Agent {
    /// Whether the agent is a backend of `service` by selector (an empty
    /// selector adopts nobody).
    pub fn matches(&self, service: &Service) -> bool {
        !service.realserver_selector.is_empty()
            && Family::of(self.address) == service.family()
            && service
                .realserver_selector
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// The director that answers for a VIP, and the epoch it got it in. Epochs
/// only grow; a director presents its epoch so stale owners can be told apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipOwner {
    pub director: String,
    pub epoch: u64,
}

/// What applying a command answers.
pub type CommandResult = Result<Applied, Rejected>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The revision this command produced.
    pub revision: u64,
    /// The service after the change (before it, for a deletion); `None` for
    /// Raft's own entries (blank, membership).
    pub service: Option<Service>,
}

impl Applied {
    pub fn none() -> Self {
        Applied {
            revision: 0,
            service: None,
        }
    }
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejected {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("VIP {vip} changed owner meanwhile: its epoch is {actual}, not {expected}")]
    StaleEpoch {
        vip: IpAddr,
        expected: u64,
        actual: u64,
    },
    #[error("service {name} changed: its mod_revision is {actual}, not {expected}")]
    Conflict {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("{why}")]
    Unauthenticated { why: String },
    #[error("{why}")]
    PermissionDenied { why: String },
}

impl Rejected {
    /// The same refusal, naming the batch member it is about.
    fn in_batch(self, index: usize, name: &str) -> Rejected {
        match self {
            Rejected::Invalid(f) => Rejected::Invalid(FieldError::new(
                lb_proto::convert::batch_field(index, &f.field),
                f.rule,
            )),
            Rejected::AlreadyExists { what } => Rejected::AlreadyExists {
                what: format!("services[{index}] ({name}): {what}"),
            },
            Rejected::NotFound { what } => Rejected::NotFound {
                what: format!("services[{index}] ({name}): {what}"),
            },
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    ServiceCreated,
    ServiceUpdated,
    ServiceDeleted,
    RealServerAdded,
    RealServerUpdated,
    RealServerRemoved,
}

/// One committed change, in revision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub kind: EventKind,
    pub service: Service,
    pub realserver: Option<RealServer>,
}

/// The whole replicated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Grows by one with every applied change; never reused.
    pub revision: u64,
    pub services: BTreeMap<String, Service>,
    /// The last [`EVENT_HISTORY`] events, oldest first.
    pub events: VecDeque<Event>,
    /// VIP ownership. Not part of the configuration `revision`: each VIP is
    /// versioned by its own epoch.
    #[serde(default)]
    pub owners: BTreeMap<IpAddr, VipOwner>,
    /// Registered realserver agents, by node id.
    #[serde(default)]
    pub agents: BTreeMap<String, Agent>,
    /// Agentless backends failing the health check the directors run, by
    /// service (the VIP owner's verdicts).
    #[serde(default)]
    pub director_down: BTreeMap<String, BTreeSet<SocketAddr>>,
    /// Join tokens, joined nodes, revocations and the CA.
    #[serde(default)]
    pub security: Security,
}

/// The events a watcher asked for are no longer kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub oldest: u64,
}

impl State {
    /// Applies a command; on rejection nothing changed.
    pub fn apply(&mut self, cmd: Command) -> CommandResult {
        let (kind, service, realserver) = match cmd {
            Command::AssignVip {
                vip,
                director,
                expected_epoch,
            } => {
                let actual = self.owners.get(&vip).map_or(0, |o| o.epoch);
                if actual != expected_epoch {
                    return Err(Rejected::StaleEpoch {
                        vip,
                        expected: expected_epoch,
                        actual,
                    });
                }
                self.owners.insert(
                    vip,
                    VipOwner {
                        director,
                        epoch: actual + 1,
                    },
                );
                return Ok(Applied::none());
            }
            Command::RegisterRealServer { mut agent } => {
                // The operator's drain outlives the agent's reports.
                agent.drained = self.agents.get(&agent.node_id).is_some_and(|a| a.drained);
                return self.change_agents(|agents| {
                    agents.insert(agent.node_id.clone(), agent);
                });
            }
            Command::SetDirectorChecks { service, down } => {
                if self
                    .director_down
                    .get(&service)
                    .cloned()
                    .unwrap_or_default()
                    == down
                {
                    return Ok(Applied::none());
                }
                let before: Vec<Service> = self.effective_services().collect();
                if down.is_empty() {
                    self.director_down.remove(&service);
                } else {
                    self.director_down.insert(service, down);
                }
                return Ok(self.backend_events(before));
            }
            Command::SetAgentLost { node_id } => {
                return self.change_agents(|agents| {
                    if let Some(a) = agents.get_mut(&node_id) {
                        a.lost = true;
                    }
                });
            }
            // Not configuration changes: no revision, no event.
            Command::RevokeNode { node_id, at_ms } => {
                self.security.revoked.insert(node_id, at_ms);
                return Ok(Applied::none());
            }
            Command::CreateJoinToken { id, token } => {
                return self.security.add_token(id, token).map(|()| Applied::none());
            }
            Command::DeleteJoinToken { id } => {
                return self.security.delete_token(&id).map(|()| Applied::none());
            }
            Command::RedeemJoinToken { attempt } => {
                return self.security.redeem(&attempt).map(|()| Applied::none());
            }
            Command::SetCa { ca } => {
                return self.security.set_ca(ca).map(|()| Applied::none());
            }
            Command::SetAgentDrain { node_id, drain } => {
                if !self.agents.contains_key(&node_id) {
                    return Err(Rejected::NotFound {
                        what: format!("realserver agent {node_id}"),
                    });
                }
                return self.change_agents(|agents| {
                    if let Some(a) = agents.get_mut(&node_id) {
                        a.drained = drain;
                    }
                });
            }
            Command::ApplyServices { services, replace } => {
                // All or nothing: apply to a copy, keep it only if every service fits.
                let mut next = self.clone();
                let mut revision = 0;
                for (i, service) in services.into_iter().enumerate() {
                    let name = service.name.clone();
                    let cmd = if replace && next.services.contains_key(&name) {
                        Command::UpdateService {
                            service,
                            expected_mod_revision: 0,
                        }
                    } else {
                        Command::CreateService { service }
                    };
                    revision = next.apply(cmd).map_err(|r| r.in_batch(i, &name))?.revision;
                }
                *self = next;
                return Ok(Applied {
                    revision,
                    service: None,
                });
            }
            Command::CreateService { service } => {
                self.check_unique(&service, None)?;
                (EventKind::ServiceCreated, service, None)
            }
            Command::UpdateService {
                service,
                expected_mod_revision,
            } => {
                let current = self.service(&service.name)?;
                if expected_mod_revision != 0 && expected_mod_revision != current.mod_revision {
                    return Err(Rejected::Conflict {
                        name: service.name,
                        expected: expected_mod_revision,
                        actual: current.mod_revision,
                    });
                }
                let create_revision = current.create_revision;
                self.check_unique(&service, Some(&service.name))?;
                let service = Service {
                    create_revision,
                    ..service
                };
                (EventKind::ServiceUpdated, service, None)
            }
            Command::DeleteService { name } => {
                let service = self.service(&name)?.clone();
                let revision = self.next_event(EventKind::ServiceDeleted, &service, None);
                self.services.remove(&name);
                return Ok(Applied {
                    revision,
                    service: Some(service),
                });
            }
            Command::AddRealServer {
                service,
                realserver,
            } => {
                let mut next = self.service(&service)?.clone();
                let rs =
                    check_realserver(&next, realserver, "realserver").map_err(Rejected::Invalid)?;
                next.realservers.push(rs.clone());
                (EventKind::RealServerAdded, next, Some(rs))
            }
            Command::UpdateRealServer {
                service,
                address,
                port,
                patch,
            } => {
                let mut next = self.service(&service)?.clone();
                let idx = realserver_index(&next, address, port)?;
                let rs =
                    patch_realserver(&next.realservers[idx], &patch).map_err(Rejected::Invalid)?;
                next.realservers[idx] = rs.clone();
                (EventKind::RealServerUpdated, next, Some(rs))
            }
            Command::RemoveRealServer {
                service,
                address,
                port,
            } => {
                let mut next = self.service(&service)?.clone();
                let idx = realserver_index(&next, address, port)?;
                let rs = next.realservers.remove(idx);
                (EventKind::RealServerRemoved, next, Some(rs))
            }
        };
        let mut service = service;
        let revision = self.revision + 1;
        if kind == EventKind::ServiceCreated {
            service.create_revision = revision;
        }
        service.mod_revision = revision;
        self.next_event(kind, &service, realserver);
        self.services.insert(service.name.clone(), service.clone());
        Ok(Applied {
            revision,
            service: Some(service),
        })
    }

    /// Every backend of a service, with its health and the agent behind it:
    /// its own realservers, then one per agent its selector adopts (port:
    /// the service's default; weight: its default weight). A realserver
    /// listed in the service wins over an agent at the same address.
    pub fn backends<'a>(
        &'a self,
        service: &Service,
    ) -> Vec<(RealServer, Option<&'a Agent>, Health)> {
        let host = |addr: IpAddr| self.agents.values().find(|a| a.address == addr);
        let director_down = self.director_down.get(&service.name);
        let checked = service.health_check.is_some();
        let health = |addr: IpAddr, port: u16| match host(addr) {
            // No agent, or a lost one: the directors check it, if the
            // service has a check.
            None | Some(Agent { lost: true, .. }) if !checked => Health::Unchecked,
            None | Some(Agent { lost: true, .. })
                if director_down.is_some_and(|d| d.contains(&SocketAddr::new(addr, port))) =>
            {
                Health::Down
            }
            None | Some(Agent { lost: true, .. }) => Health::Up,
            Some(_) if !checked => Health::Unchecked,
            Some(a) if a.unhealthy.contains(&service.name) => Health::Down,
            Some(_) => Health::Up,
        };
        // A draining host keeps its connections (weight 0) and gets no new
        // ones; so does a lost agent's, unless the directors' check vouches.
        let drain = |mut rs: RealServer| {
            let lost_unchecked = |a: &Agent| a.lost && !checked;
            if host(rs.address).is_some_and(|a| a.draining || a.drained || lost_unchecked(a))
                && rs.admin_state == AdminState::Active
            {
                rs.admin_state = AdminState::Draining;
            }
            rs
        };
        let mut out: Vec<(RealServer, Option<&Agent>, Health)> = service
            .realservers
            .iter()
            .map(|rs| (drain(rs.clone()), None, health(rs.address, rs.port)))
            .collect();
        let port = service.default_realserver_port();
        for agent in self.agents.values().filter(|a| a.matches(service)) {
            if service
                .realservers
                .iter()
                .any(|rs| rs.address == agent.address)
            {
                continue;
            }
            let rs = RealServer {
                address: agent.address,
                port,
                weight: service.default_weight,
                upper_threshold: 0,
                lower_threshold: 0,
                admin_state: AdminState::Active,
            };
            out.push((drain(rs), Some(agent), health(agent.address, port)));
        }
        out
    }

    /// A service as the directors program it: its [`State::backends`]
    /// except those whose health check fails — or, with
    /// `inhibit_on_failure`, those at weight 0.
    pub fn effective(&self, service: &Service) -> Service {
        let inhibit = service
            .health_check
            .as_ref()
            .is_some_and(|h| h.inhibit_on_failure);
        let mut s = service.clone();
        s.realservers = self
            .backends(service)
            .into_iter()
            .filter_map(|(mut rs, _, h)| match h {
                Health::Down if inhibit => {
                    rs.admin_state = AdminState::Draining;
                    Some(rs)
                }
                Health::Down => None,
                _ => Some(rs),
            })
            .collect();
        s
    }

    /// Every service, [`State::effective`].
    pub fn effective_services(&self) -> impl Iterator<Item = Service> + '_ {
        self.services.values().map(|s| self.effective(s))
    }

    /// Changes the agents (a registration, a health report, a drain) and
    /// gives each service that gains, loses or changes a backend a
    /// realserver event (and a revision). Refuses an address that another
    /// agent already has.
    fn change_agents(
        &mut self,
        change: impl FnOnce(&mut BTreeMap<String, Agent>),
    ) -> CommandResult {
        let mut agents = self.agents.clone();
        change(&mut agents);
        for a in agents.values() {
            let taken = self
                .agents
                .values()
                .find(|o| o.address == a.address && o.node_id != a.node_id);
            if let Some(other) = taken {
                return Err(Rejected::Invalid(FieldError::new(
                    "address",
                    format!(
                        "{} is already registered by realserver agent {}",
                        a.address, other.node_id
                    ),
                )));
            }
        }
        if agents == self.agents {
            return Ok(Applied::none());
        }
        let before: Vec<Service> = self.effective_services().collect();
        self.agents = agents;
        Ok(self.backend_events(before))
    }

    /// The backends the directors check: those of services with a health
    /// check whose host runs no realserver agent (an agent checks its own)
    /// or whose agent has gone silent.
    pub fn director_checks(&self) -> Vec<(String, SocketAddr)> {
        let mut out = Vec::new();
        for s in self.services.values().filter(|s| s.health_check.is_some()) {
            for (rs, _, _) in self.backends(s) {
                let own_agent = self
                    .agents
                    .values()
                    .any(|a| a.address == rs.address && !a.lost);
                if !own_agent {
                    out.push((s.name.clone(), SocketAddr::new(rs.address, rs.port)));
                }
            }
        }
        out
    }

    /// A realserver event (and a revision) for each backend that a change
    /// added to, removed from or changed in a service, compared with
    /// `before` (the effective services before the change).
    fn backend_events(&mut self, before: Vec<Service>) -> Applied {
        let mut last = Applied::none();
        for old in before {
            let Some(current) = self.services.get(&old.name) else {
                continue;
            };
            let new = self.effective(current);
            let key = |r: &RealServer| (r.address, r.port);
            let mut changes: Vec<(EventKind, RealServer)> = Vec::new();
            for r in &old.realservers {
                match new.realservers.iter().find(|n| key(n) == key(r)) {
                    None => changes.push((EventKind::RealServerRemoved, r.clone())),
                    Some(n) if n != r => changes.push((EventKind::RealServerUpdated, n.clone())),
                    Some(_) => {}
                }
            }
            for n in &new.realservers {
                if !old.realservers.iter().any(|r| key(r) == key(n)) {
                    changes.push((EventKind::RealServerAdded, n.clone()));
                }
            }
            for (kind, rs) in changes {
                last = Applied {
                    revision: self.next_event(kind, &new, Some(rs)),
                    service: Some(new.clone()),
                };
            }
        }
        last
    }

    /// Events from `from` on; `Compacted` when some of them are gone.
    pub fn events_since(&self, from: u64) -> Result<Vec<Event>, Compacted> {
        let oldest = self
            .events
            .front()
            .map_or(self.revision + 1, |e| e.revision);
        if from < oldest && from <= self.revision {
            return Err(Compacted { oldest });
        }
        Ok(self
            .events
            .iter()
            .filter(|e| e.revision >= from)
            .cloned()
            .collect())
    }

    fn service(&self, name: &str) -> Result<&Service, Rejected> {
        self.services.get(name).ok_or_else(|| Rejected::NotFound {
            what: format!("service {name}"),
        })
    }

    /// A name and a virtual address belong to one service only.
    fn check_unique(&self, service: &Service, replacing: Option<&str>) -> Result<(), Rejected> {
        if replacing.is_none() && self.services.contains_key(&service.name) {
            return Err(Rejected::AlreadyExists {
                what: format!("service {}", service.name),
            });
        }
        match self
            .services
            .values()
            .find(|s| s.address == service.address && Some(s.name.as_str()) != replacing)
        {
            Some(other) => Err(Rejected::AlreadyExists {
                what: format!(
                    "virtual address {} (service {})",
                    service.address, other.name
                ),
            }),
            None => Ok(()),
        }?;
        let others = self
            .services
            .values()
            .filter(|s| s.name != service.name && Some(s.name.as_str()) != replacing);
        for other in others {
            if let Some(e) = mark_clash(service, other) {
                return Err(Rejected::Invalid(e));
            }
        }
        Ok(())
    }

    fn next_event(
        &mut self,
        kind: EventKind,
        service: &Service,
        realserver: Option<RealServer>,
    ) -> u64 {
        self.revision += 1;
        self.events.push_back(Event {
            revision: self.revision,
            kind,
            service: service.clone(),
            realserver,
        });
        while self.events.len() > EVENT_HISTORY {
            self.events.pop_front();
        }
        self.revision
    }
}

/// Traffic two services would both claim. IPVS looks a packet's mark up
/// before its address, so a fwmark service silently shadows an endpoint
/// service on marked traffic; two overlapping marks make the rule order decide.
fn mark_clash(service: &Service, other: &Service) -> Option<FieldError> {
    match (&service.mark_match, &other.mark_match, other.address) {
        (Some(mine), Some(theirs), _) if mine.overlaps(theirs) => Some(FieldError::new(
            "service.fwmark.address",
            format!(
                "marks {mine}, which overlaps {theirs} marked for service {}",
                other.name
            ),
        )),
        (
            Some(mine),
            _,
            VirtualAddress::Endpoint {
                address,
                port,
                protocol,
            },
        ) if service.catches(address, protocol, port) => Some(FieldError::new(
            "service.fwmark.address",
            format!(
                "marks {mine}, which includes {}, the VIP of service {}",
                other.address, other.name
            ),
        )),
        (None, Some(theirs), _) => match service.address {
            VirtualAddress::Endpoint {
                address,
                port,
                protocol,
            } if other.catches(address, protocol, port) => Some(FieldError::new(
                "service.endpoint",
                format!(
                    "{} is marked ({theirs}) for fwmark service {}",
                    service.address, other.name
                ),
            )),
            _ => None,
        },
        _ => None,
    }
}

/// Finds a realserver; port 0 in a request means the service's default port.
fn realserver_index(service: &Service, address: IpAddr, port: u16) -> Result<usize, Rejected> {
    let port = if port == 0 {
        service.default_realserver_port()
    } else {
        port
    };
    service
        .realservers
        .iter()
        .position(|rs| rs.address == address && rs.port == port)
        .ok_or_else(|| Rejected::NotFound {
            what: format!(
                "realserver {} in service {}",
                std::net::SocketAddr::new(address, port),
                service.name
            ),
        })
}

#[cfg(test)]
mod tests {
    use lb_proto::pb;

    use super::*;

    fn service(name: &str, vip: &str) -> Service {
        Service::try_from(pb::Service {
            name: name.into(),
            virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address: vip.into(),
                port: 80,
                protocol: "tcp".into(),
            })),
            mode: "nat".into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn rs(addr: &str, port: u16) -> RealServer {
        RealServer {
            address: addr.parse().unwrap(),
            port,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
            admin_state: lb_proto::model::AdminState::Active,
        }
    }

    fn marked(name: &str, mark: u32, vip: &str, ports: &[u32]) -> Service {
        Service::try_from(pb::Service {
            name: name.into(),
            virtual_address: Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                mark,
                address: vip.into(),
                ports: ports.to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .unwrap()
    }

    fn agent(node: &str, addr: &str, pool: &str) -> Agent {
        Agent {
            node_id: node.into(),
            address: addr.parse().unwrap(),
            labels: [("pool".to_string(), pool.to_string())].into(),
            unhealthy: BTreeSet::new(),
            draining: false,
            drained: false,
            lost: false,
        }
    }

    /// A TCP check that flips on one result.
    fn tcp_check() -> lb_proto::model::HealthCheck {
        lb_proto::model::HealthCheck {
            probe: lb_proto::model::Probe::Tcp,
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 1,
            fall: 1,
            port: 0,
            inhibit_on_failure: false,
        }
    }

    #[test]
    fn agents_become_backends_by_selector() {
        let mut st = State::default();
        let mut web = service("web", "10.0.0.1");
        web.realserver_selector = [("pool".to_string(), "web".to_string())].into();
        web.default_weight = 3;
        web.health_check = Some(tcp_check());
        st.apply(Command::CreateService { service: web }).unwrap();
        st.apply(Command::CreateService {
            service: service("other", "10.0.0.2"),
        })
        .unwrap();
        let r = st
            .apply(Command::RegisterRealServer {
                agent: agent("rs1", "192.168.0.11", "web"),
            })
            .unwrap();
        assert_eq!(r.revision, 3, "one event: web gained rs1");
        st.apply(Command::RegisterRealServer {
            agent: agent("rs2", "192.168.0.12", "web"),
        })
        .unwrap();
        let eff = st.effective(&st.services["web"]);
        let backends: Vec<(String, u16, u16)> = eff
            .realservers
            .iter()
            .map(|r| (r.address.to_string(), r.port, r.weight))
            .collect();
        assert_eq!(
            backends,
            [
                ("192.168.0.11".to_string(), 80, 3),
                ("192.168.0.12".to_string(), 80, 3)
            ]
        );
        assert!(st.effective(&st.services["other"]).realservers.is_empty());
        let backends = st.backends(&st.services["web"]);
        assert_eq!(backends[0].1.map(|a| a.node_id.as_str()), Some("rs1"));
        assert_eq!(backends[0].2, Health::Up);

        // A failing check takes the backend out, and back in when it passes.
        let mut sick = agent("rs1", "192.168.0.11", "web");
        sick.unhealthy.insert("web".into());
        st.apply(Command::RegisterRealServer { agent: sick })
            .unwrap();
        assert_eq!(st.events.back().unwrap().kind, EventKind::RealServerRemoved);
        assert_eq!(st.effective(&st.services["web"]).realservers.len(), 1);
        assert_eq!(st.backends(&st.services["web"])[0].2, Health::Down);
        st.apply(Command::RegisterRealServer {
            agent: agent("rs1", "192.168.0.11", "web"),
        })
        .unwrap();
        assert_eq!(st.events.back().unwrap().kind, EventKind::RealServerAdded);
        assert_eq!(st.effective(&st.services["web"]).realservers.len(), 2);

        // Re-registering unchanged changes nothing; relabelling drops it.
        let before = st.revision;
        st.apply(Command::RegisterRealServer {
            agent: agent("rs2", "192.168.0.12", "web"),
        })
        .unwrap();
        assert_eq!(st.revision, before);
        st.apply(Command::RegisterRealServer {
            agent: agent("rs2", "192.168.0.12", "db"),
        })
        .unwrap();
        let last = st.events.back().unwrap();
        assert_eq!(last.kind, EventKind::RealServerRemoved);
        assert_eq!(st.effective(&st.services["web"]).realservers.len(), 1);

        // One address, one agent.
        let before = st.clone();
        match st.apply(Command::RegisterRealServer {
            agent: agent("rs3", "192.168.0.11", "web"),
        }) {
            Err(Rejected::Invalid(e)) => assert_eq!(
                e.to_string(),
                "address: 192.168.0.11 is already registered by realserver agent rs1"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(st, before);
    }

    #[test]
    fn a_drained_agent_keeps_its_backends_at_weight_zero() {
        let mut st = State::default();
        let mut web = service("web", "10.0.0.1");
        web.realserver_selector = [("pool".to_string(), "web".to_string())].into();
        st.apply(Command::CreateService { service: web }).unwrap();
        let unknown = st.apply(Command::SetAgentDrain {
            node_id: "rs1".into(),
            drain: true,
        });
        assert!(
            matches!(unknown, Err(Rejected::NotFound { .. })),
            "{unknown:?}"
        );
        st.apply(Command::RegisterRealServer {
            agent: agent("rs1", "192.168.0.11", "web"),
        })
        .unwrap();
        let state_of = |st: &State| st.effective(&st.services["web"]).realservers[0].admin_state;
        st.apply(Command::SetAgentDrain {
            node_id: "rs1".into(),
            drain: true,
        })
        .unwrap();
        assert_eq!(state_of(&st), AdminState::Draining);
        assert_eq!(st.events.back().unwrap().kind, EventKind::RealServerUpdated);
        // The agent's next report does not undo the operator's drain.
        st.apply(Command::RegisterRealServer {
            agent: agent("rs1", "192.168.0.11", "web"),
        })
        .unwrap();
        assert_eq!(state_of(&st), AdminState::Draining);
        st.apply(Command::SetAgentDrain {
            node_id: "rs1".into(),
            drain: false,
        })
        .unwrap();
        assert_eq!(state_of(&st), AdminState::Active);
        // A stopping agent drains itself.
        let mut stopping = agent("rs1", "192.168.0.11", "web");
        stopping.draining = true;
        st.apply(Command::RegisterRealServer { agent: stopping })
            .unwrap();
        assert_eq!(state_of(&st), AdminState::Draining);
        // A lost agent drains until it reports again.
        let back = || Command::RegisterRealServer {
            agent: agent("rs1", "192.168.0.11", "web"),
        };
        st.apply(back()).unwrap();
        st.apply(Command::SetAgentLost {
            node_id: "rs1".into(),
        })
        .unwrap();
        assert_eq!(state_of(&st), AdminState::Draining);
        st.apply(back()).unwrap();
        assert_eq!(state_of(&st), AdminState::Active);
    }

    #[test]
    fn the_owners_checks_take_agentless_backends_out() {
        let mut st = State::default();
        let mut web = service("web", "10.0.0.1");
        web.realservers = vec![rs("192.168.0.11", 8080), rs("192.168.0.12", 8080)];
        st.apply(Command::CreateService {
            service: web.clone(),
        })
        .unwrap();
        // No check, nothing for the directors to do.
        assert!(st.director_checks().is_empty());
        web.health_check = Some(tcp_check());
        st.apply(Command::UpdateService {
            service: web,
            expected_mod_revision: 0,
        })
        .unwrap();
        let b11: SocketAddr = "192.168.0.11:8080".parse().unwrap();
        assert_eq!(st.director_checks().len(), 2);
        st.apply(Command::SetDirectorChecks {
            service: "web".into(),
            down: [b11].into(),
        })
        .unwrap();
        assert_eq!(st.events.back().unwrap().kind, EventKind::RealServerRemoved);
        let eff = st.effective(&st.services["web"]);
        assert_eq!(eff.realservers.len(), 1);
        let health: Vec<Health> = st
            .backends(&st.services["web"])
            .iter()
            .map(|b| b.2)
            .collect();
        assert_eq!(health, [Health::Down, Health::Up]);
        // Still checked while out of the table.
        assert_eq!(st.director_checks().len(), 2);
        st.apply(Command::SetDirectorChecks {
            service: "web".into(),
            down: BTreeSet::new(),
        })
        .unwrap();
        assert_eq!(st.effective(&st.services["web"]).realservers.len(), 2);
        // With inhibit_on_failure a failing backend stays, at weight 0.
        let mut inhibit = st.services["web"].clone();
        if let Some(h) = inhibit.health_check.as_mut() {
            h.inhibit_on_failure = true;
        }
        st.apply(Command::UpdateService {
            service: inhibit,
            expected_mod_revision: 0,
        })
        .unwrap();
        st.apply(Command::SetDirectorChecks {
            service: "web".into(),
            down: [b11].into(),
        })
        .unwrap();
        let eff = st.effective(&st.services["web"]);
        assert_eq!(eff.realservers.len(), 2);
        assert_eq!(eff.realservers[0].admin_state, AdminState::Draining);
        st.apply(Command::SetDirectorChecks {
            service: "web".into(),
            down: BTreeSet::new(),
        })
        .unwrap();
        // A host with an agent is its agent's to check...
        st.apply(Command::RegisterRealServer {
            agent: agent("rs1", "192.168.0.11", "db"),
        })
        .unwrap();
        assert_eq!(st.director_checks().len(), 1);
        // ...until the agent goes silent: then the directors' check decides,
        // and the backend is not drained.
        st.apply(Command::SetAgentLost {
            node_id: "rs1".into(),
        })
        .unwrap();
        assert_eq!(st.director_checks().len(), 2);
        let b = &st.backends(&st.services["web"])[0];
        assert_eq!((b.0.admin_state, b.2), (AdminState::Active, Health::Up));
    }

    #[test]
    fn a_batch_applies_whole_or_not_at_all() {
        let mut st = State::default();
        st.apply(Command::CreateService {
            service: service("web", "10.0.0.1"),
        })
        .unwrap();
        let before = st.clone();
        // The second member clashes with web's VIP: nothing of the batch lands.
        let r = st.apply(Command::ApplyServices {
            services: vec![service("a", "10.0.0.2"), service("b", "10.0.0.1")],
            replace: false,
        });
        match r {
            Err(Rejected::AlreadyExists { what }) => {
                assert!(
                    what.starts_with("services[1] (b): virtual address"),
                    "{what}"
                )
            }
            other => panic!("accepted: {other:?}"),
        }
        assert_eq!(st, before);
        // An existing name is refused without replace...
        let r = st.apply(Command::ApplyServices {
            services: vec![service("web", "10.0.0.3")],
            replace: false,
        });
        assert!(matches!(r, Err(Rejected::AlreadyExists { .. })), "{r:?}");
        assert_eq!(st, before);
        // ...and replaced with it; every member gets its own revision and event.
        let applied = st
            .apply(Command::ApplyServices {
                services: vec![service("web", "10.0.0.3"), service("a", "10.0.0.2")],
                replace: true,
            })
            .unwrap();
        assert_eq!(applied.revision, before.revision + 2);
        assert_eq!(st.services["web"].vip(), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(st.services["web"].create_revision, 1);
        assert_eq!(st.services["a"].create_revision, before.revision + 2);
        let kinds: Vec<EventKind> = st.events.iter().skip(1).map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::ServiceUpdated, EventKind::ServiceCreated]
        );
    }

    #[test]
    fn marked_traffic_is_claimed_once() {
        let mut st = State::default();
        st.apply(Command::CreateService {
            service: marked("shop", 1, "10.0.0.9", &[80, 443]),
        })
        .unwrap();
        let before = st.clone();
        let clash =
            |st: &mut State, s: Service| match st.apply(Command::CreateService { service: s }) {
                Err(Rejected::Invalid(e)) => e.to_string(),
                other => panic!("accepted a clash: {other:?}"),
            };
        let e = clash(&mut st, marked("shop2", 2, "10.0.0.9", &[443, 8443]));
        assert!(
            e.starts_with("service.fwmark.address: marks 10.0.0.9 tcp 443,8443, which overlaps 10.0.0.9 tcp 80,443 marked for service shop"),
            "{e}"
        );
        let e = clash(&mut st, marked("all", 3, "10.0.0.9", &[]));
        assert!(e.contains("overlaps"), "{e}");
        let e = clash(&mut st, service("web", "10.0.0.9"));
        assert!(
            e.starts_with("service.endpoint: 10.0.0.9:80/tcp is marked (10.0.0.9 tcp 80,443) for fwmark service shop"),
            "{e}"
        );
        assert_eq!(st, before);

        // Other ports, another VIP, and a mark-only service are fine; an
        // update of the service itself does not clash with its old self.
        st.apply(Command::CreateService {
            service: marked("alt", 4, "10.0.0.9", &[8080]),
        })
        .unwrap();
        st.apply(Command::CreateService {
            service: service("web", "10.0.0.10"),
        })
        .unwrap();
        st.apply(Command::CreateService {
            service: marked("manual", 5, "", &[]),
        })
        .unwrap();
        st.apply(Command::UpdateService {
            service: marked("shop", 1, "10.0.0.9", &[80, 443, 8443]),
            expected_mod_revision: 0,
        })
        .unwrap();
        let e = clash(&mut st, marked("web2", 6, "10.0.0.10", &[80]));
        assert!(
            e.contains("includes 10.0.0.10:80/tcp, the VIP of service web"),
            "{e}"
        );
    }

    #[test]
    fn rejected_commands_change_nothing() {
        let mut st = State::default();
        st.apply(Command::CreateService {
            service: service("web", "10.0.0.1"),
        })
        .unwrap();
        let before = st.clone();
        let rejected = [
            Command::CreateService {
                service: service("web", "10.0.0.2"),
            },
            Command::CreateService {
                service: service("web2", "10.0.0.1"),
            },
            Command::DeleteService {
                name: "nope".into(),
            },
            Command::UpdateService {
                service: service("web", "10.0.0.1"),
                expected_mod_revision: 99,
            },
            Command::RemoveRealServer {
                service: "web".into(),
                address: "10.1.1.1".parse().unwrap(),
                port: 80,
            },
            Command::AddRealServer {
                service: "web".into(),
                realserver: rs("2001:db8::1", 80),
            },
        ];
        for cmd in rejected {
            assert!(st.apply(cmd.clone()).is_err(), "{cmd:?} was accepted");
            assert_eq!(st, before, "{cmd:?} changed the state");
        }
    }

    #[test]
    fn revisions_and_events_follow_changes() {
        let mut st = State::default();
        let a = st
            .apply(Command::CreateService {
                service: service("web", "10.0.0.1"),
            })
            .unwrap();
        assert_eq!((a.revision, a.service.unwrap().create_revision), (1, 1));
        let b = st
            .apply(Command::AddRealServer {
                service: "web".into(),
                realserver: rs("10.1.1.1", 0),
            })
            .unwrap();
        let svc = b.service.unwrap();
        assert_eq!(svc.realservers[0].port, 80);
        assert_eq!(
            (b.revision, svc.create_revision, svc.mod_revision),
            (2, 1, 2)
        );
        st.apply(Command::UpdateRealServer {
            service: "web".into(),
            address: "10.1.1.1".parse().unwrap(),
            port: 0,
            patch: RealServerPatch {
                weight: Some(5),
                ..Default::default()
            },
        })
        .unwrap();
        st.apply(Command::DeleteService { name: "web".into() })
            .unwrap();
        let kinds: Vec<_> = st
            .events_since(1)
            .unwrap()
            .iter()
            .map(|e| (e.revision, e.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (1, EventKind::ServiceCreated),
                (2, EventKind::RealServerAdded),
                (3, EventKind::RealServerUpdated),
                (4, EventKind::ServiceDeleted)
            ]
        );
        assert_eq!(st.events_since(5).unwrap(), vec![]);
    }

    #[test]
    fn vip_assignment_is_fenced_by_epoch() {
        let mut st = State::default();
        let vip: IpAddr = "10.0.0.1".parse().unwrap();
        let assign = |d: &str, e| Command::AssignVip {
            vip,
            director: d.into(),
            expected_epoch: e,
        };
        st.apply(assign("a", 0)).unwrap();
        assert_eq!(
            st.owners[&vip],
            VipOwner {
                director: "a".into(),
                epoch: 1
            }
        );
        let before = st.clone();
        assert_eq!(
            st.apply(assign("b", 0)),
            Err(Rejected::StaleEpoch {
                vip,
                expected: 0,
                actual: 1
            })
        );
        assert_eq!(st, before, "a stale assignment changed the state");
        st.apply(assign("b", 1)).unwrap();
        assert_eq!(
            st.owners[&vip],
            VipOwner {
                director: "b".into(),
                epoch: 2
            }
        );
        assert_eq!(
            st.revision, 0,
            "ownership does not bump the configuration revision"
        );
    }

    #[test]
    fn old_events_are_compacted() {
        let mut st = State::default();
        for i in 0..(EVENT_HISTORY + 5) {
            st.apply(Command::CreateService {
                service: service(
                    &format!("s{i}"),
                    &format!("10.0.{}.{}", i / 250, i % 250 + 1),
                ),
            })
            .unwrap();
        }
        assert_eq!(st.events_since(3), Err(Compacted { oldest: 6 }));
        assert_eq!(st.events_since(6).unwrap().len(), EVENT_HISTORY);
    }
}
