//! The replicated configuration and the commands that change it.
//!
//! This is pure, deterministic logic: every controller applies the same
//! commands in the same order and reaches the same [`State`]. A command that
//! breaks a rule changes nothing — not the services, not the revision — and
//! its error travels back to the client through the Raft response.
//!
//! - [`command`]: the Raft command schema and what applying one answers;
//! - [`services`]: the services' own rules (unique names and addresses,
//!   traffic claimed once, batches whole or not at all);
//! - [`agents`]: registered realserver agents and the derived view — each
//!   service's backends, their health, the effective table;
//! - [`derived`]: what is computed from the configuration (each VIP's
//!   needs, each service as the directors get it), kept up to date by
//!   recomputing only what a change touches;
//! - [`events`]: the revision-ordered event log `WatchEvents` resumes from;
//! - [`quorum`]: below quorum, the sorry server replaces the backends;
//! - [`owners`]: which director answers for each VIP, by epoch;
//! - [`security`]: join tokens, revocations and the CA;
//! - [`admins`]: named admin certificates and revoked admin names.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lb_proto::model::Service;
use serde::{Deserialize, Serialize};

pub mod admins;
pub mod agents;
pub mod command;
pub mod derived;
pub mod events;
pub mod owners;
mod quorum;
pub mod security;
mod services;

pub use admins::{AdminCert, Admins};
pub use agents::{Agent, Health};
pub use command::{Applied, Command, CommandResult, Rejected};
pub use derived::{Derived, Unit, Units};
pub use events::{share_version, Compacted, Event, EventKind, EVENT_HISTORY};
pub use owners::{vips, Needs, VipOwner};
pub use security::{CaKeys, JoinAttempt, JoinToken, Security};

/// The whole replicated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Grows by one with every applied change; never reused.
    pub revision: u64,
    /// Shared with the events that committed them: one copy of each
    /// service version in memory, however many refer to it.
    pub services: BTreeMap<String, Arc<Service>>,
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
    /// Services below quorum ([`quorum`]).
    #[serde(default)]
    pub below_quorum: BTreeSet<String>,
    /// Join tokens, joined nodes, revocations and the CA.
    #[serde(default)]
    pub security: Security,
    /// Named admin certificates and revoked admin names.
    #[serde(default)]
    pub admins: Admins,
}

impl State {
    /// Applies a command; on rejection nothing changed.
    pub fn apply(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::CreateService { service } => self.create_service(service),
            Command::UpdateService {
                service,
                expected_mod_revision,
            } => self.update_service(service, expected_mod_revision),
            Command::DeleteService { name } => self.delete_service(name),
            Command::ApplyServices { services, replace } => self.apply_services(services, replace),
            Command::AddRealServer {
                service,
                realserver,
            } => self.add_realserver(service, realserver),
            Command::UpdateRealServer {
                service,
                address,
                port,
                patch,
            } => self.update_realserver(service, address, port, patch),
            Command::RemoveRealServer {
                service,
                address,
                port,
            } => self.remove_realserver(service, address, port),
            Command::AssignVip {
                vip,
                director,
                expected_epoch,
            } => self.assign_vip(vip, director, expected_epoch),
            Command::RegisterRealServer { agent } => self.register_realserver(agent),
            Command::SetAgentDrain { node_id, drain } => self.set_agent_drain(node_id, drain),
            Command::SetAgentLost { node_id } => self.set_agent_lost(node_id),
            Command::SetDirectorChecks { service, down } => self.set_director_checks(service, down),
            // Not configuration changes: no revision, no event.
            Command::RevokeNode { node_id, at_ms } => {
                self.security.revoked.insert(node_id, at_ms);
                Ok(Applied::none())
            }
            Command::CreateJoinToken { id, token } => {
                self.security.add_token(id, token).map(|()| Applied::none())
            }
            Command::DeleteJoinToken { id } => {
                self.security.delete_token(&id).map(|()| Applied::none())
            }
            Command::RedeemJoinToken { attempt } => {
                self.security.redeem(&attempt).map(|()| Applied::none())
            }
            Command::SetCa { ca } => self.security.set_ca(ca).map(|()| Applied::none()),
            Command::IssueAdmin { name, cert } => {
                self.admins.issued.insert(name, cert);
                Ok(Applied::none())
            }
            Command::RevokeAdmin { name, at_ms } => {
                self.admins.revoked.insert(name, at_ms);
                Ok(Applied::none())
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
