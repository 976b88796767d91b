//! Realserver agents and the derived view: which backends each service has
//! (its own realservers plus the agents its selector adopts), their health,
//! and the effective service the directors program.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use lb_proto::model::{AdminState, Family, RealServer, Service};
use lb_proto::FieldError;
use serde::{Deserialize, Serialize};

use super::{Applied, CommandResult, Rejected, State};

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

impl State {
    pub(super) fn register_realserver(&mut self, mut agent: Agent) -> CommandResult {
        // The operator's drain outlives the agent's reports.
        agent.drained = self.agents.get(&agent.node_id).is_some_and(|a| a.drained);
        self.change_agents(|agents| {
            agents.insert(agent.node_id.clone(), agent);
        })
    }

    pub(super) fn set_director_checks(
        &mut self,
        service: String,
        down: BTreeSet<SocketAddr>,
    ) -> CommandResult {
        if self
            .director_down
            .get(&service)
            .cloned()
            .unwrap_or_default()
            == down
        {
            return Ok(Applied::none());
        }
        let before = self.effective_of(&BTreeSet::from([service.clone()]));
        if down.is_empty() {
            self.director_down.remove(&service);
        } else {
            self.director_down.insert(service, down);
        }
        Ok(self.backend_events(before))
    }

    pub(super) fn set_agent_lost(&mut self, node_id: String) -> CommandResult {
        self.change_agents(|agents| {
            if let Some(a) = agents.get_mut(&node_id) {
                a.lost = true;
            }
        })
    }

    pub(super) fn set_agent_drain(&mut self, node_id: String, drain: bool) -> CommandResult {
        if !self.agents.contains_key(&node_id) {
            return Err(Rejected::NotFound {
                what: format!("realserver agent {node_id}"),
            });
        }
        self.change_agents(|agents| {
            if let Some(a) = agents.get_mut(&node_id) {
                a.drained = drain;
            }
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
    /// `inhibit_on_failure`, those at weight 0 — and below quorum its
    /// sorry server instead of those in service.
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
        if let Some(sorry) = self.sorry_in_use(service) {
            // Those at weight 0 keep finishing their connections.
            s.realservers.retain(|rs| {
                rs.admin_state != AdminState::Active
                    && (rs.address, rs.port) != (sorry.address, sorry.port)
            });
            s.realservers.push(sorry);
        }
        s
    }

    /// Every service, [`State::effective`].
    pub fn effective_services(&self) -> impl Iterator<Item = Service> + '_ {
        self.services.values().map(|s| self.effective(s))
    }

    /// The services named (those that exist), [`State::effective`].
    fn effective_of(&self, names: &BTreeSet<String>) -> Vec<Service> {
        names
            .iter()
            .filter_map(|n| self.services.get(n))
            .map(|s| self.effective(s))
            .collect()
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
        // Only the services of the agents that changed can gain, lose or
        // change a backend.
        let changed: Vec<&Agent> = differing(&agents, &self.agents)
            .chain(differing(&self.agents, &agents))
            .collect();
        let before = self.effective_of(&self.served_by(&changed));
        self.agents = agents;
        Ok(self.backend_events(before))
    }

    /// The backends the directors check: those of services with a health
    /// check whose host runs no realserver agent (an agent checks its own)
    /// or whose agent has gone silent.
    pub fn director_checks(&self) -> Vec<(String, SocketAddr)> {
        self.services
            .values()
            .flat_map(|s| {
                self.director_checks_of(s)
                    .into_iter()
                    .map(|a| (s.name.clone(), a))
            })
            .collect()
    }

    /// [`State::director_checks`] of one service.
    pub fn director_checks_of(&self, s: &Service) -> Vec<SocketAddr> {
        if s.health_check.is_none() {
            return Vec::new();
        }
        self.backends(s)
            .into_iter()
            .filter(|(rs, _, _)| {
                !self
                    .agents
                    .values()
                    .any(|a| a.address == rs.address && !a.lost)
            })
            .map(|(rs, _, _)| SocketAddr::new(rs.address, rs.port))
            .collect()
    }
}

/// The agents of `from` that `to` does not have as they are.
fn differing<'a>(
    from: &'a BTreeMap<String, Agent>,
    to: &'a BTreeMap<String, Agent>,
) -> impl Iterator<Item = &'a Agent> {
    from.iter()
        .filter(|(id, a)| to.get(*id) != Some(*a))
        .map(|(_, a)| a)
}
