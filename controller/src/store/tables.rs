//! Where each command's changes are kept beyond the services and events
//! tables: the state-machine meta blobs it rewrites.

use crate::state::{Command, State};

pub(super) const OWNERS: &str = "owners";
/// Join tokens, revocations and the CA ([`crate::state::Security`]).
pub(super) const SECURITY: &str = "security";
/// Named admin certificates and revoked admin names, written with the
/// security blob ([`crate::state::Admins`]).
pub(super) const ADMINS: &str = "admins";
/// Registered realserver agents (with operators' drains) and the directors'
/// health verdicts: a restarted controller must not forget its backends
/// until every agent has reported again.
pub(super) const AGENTS: &str = "agents";
pub(super) const DIRECTOR_DOWN: &str = "director_down";
/// The services below quorum: a service's definition or its backends
/// change it.
pub(super) const BELOW_QUORUM: &str = "below_quorum";

/// The parts of the state kept in `SM_META` beside the tables, each as one
/// JSON value: written when a command changes them, all of them when a
/// snapshot is installed, read back at start.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Side {
    owners: bool,
    security: bool,
    backends: bool,
    quorum: bool,
}

impl Side {
    pub(super) const ALL: Side = Side {
        owners: true,
        security: true,
        backends: true,
        quorum: true,
    };

    /// What `cmd` may change.
    ///
    /// Exhaustive on purpose, with no wildcard: a new command does not
    /// compile until it is decided here where its changes are stored.
    pub(super) fn of(cmd: &Command) -> Side {
        const NONE: Side = Side {
            owners: false,
            security: false,
            backends: false,
            quorum: false,
        };
        match cmd {
            // Services and events: written from the events every applied
            // command makes (see `apply_entries`), and the quorum states.
            Command::CreateService { .. }
            | Command::UpdateService { .. }
            | Command::DeleteService { .. }
            | Command::ApplyServices { .. }
            | Command::AddRealServer { .. }
            | Command::UpdateRealServer { .. }
            | Command::RemoveRealServer { .. } => Side {
                quorum: true,
                ..NONE
            },
            Command::AssignVip { .. } => Side {
                owners: true,
                ..NONE
            },
            Command::RevokeNode { .. }
            | Command::CreateJoinToken { .. }
            | Command::DeleteJoinToken { .. }
            | Command::RedeemJoinToken { .. }
            | Command::SetCa { .. }
            | Command::IssueAdmin { .. }
            | Command::RevokeAdmin { .. } => Side {
                security: true,
                ..NONE
            },
            // Agents and verdicts change the backends: their events are
            // stored with the services, the agents and verdicts here.
            Command::RegisterRealServer { .. }
            | Command::SetAgentDrain { .. }
            | Command::SetAgentLost { .. }
            | Command::SetDirectorChecks { .. } => Side {
                backends: true,
                quorum: true,
                ..NONE
            },
        }
    }

    /// It may change who owns a VIP.
    pub(super) fn owners(self) -> bool {
        self.owners
    }

    pub(super) fn or(self, other: Side) -> Side {
        Side {
            owners: self.owners || other.owners,
            security: self.security || other.security,
            backends: self.backends || other.backends,
            quorum: self.quorum || other.quorum,
        }
    }

    /// The keys and values it names.
    pub(super) fn blobs(
        self,
        state: &State,
    ) -> Result<Vec<(&'static str, Vec<u8>)>, serde_json::Error> {
        let mut out = Vec::new();
        if self.owners {
            out.push((OWNERS, serde_json::to_vec(&state.owners)?));
        }
        if self.security {
            out.push((SECURITY, serde_json::to_vec(&state.security)?));
            out.push((ADMINS, serde_json::to_vec(&state.admins)?));
        }
        if self.backends {
            out.push((AGENTS, serde_json::to_vec(&state.agents)?));
            out.push((DIRECTOR_DOWN, serde_json::to_vec(&state.director_down)?));
        }
        if self.quorum {
            out.push((BELOW_QUORUM, serde_json::to_vec(&state.below_quorum)?));
        }
        Ok(out)
    }
}
