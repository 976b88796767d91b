//! The Raft command schema: every change to the replicated configuration,
//! and what applying one answers.
//!
//! A new variant must also be given its storage: the exhaustive match in
//! `store::tables` does not compile until it is.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use lb_proto::model::{RealServer, RealServerPatch, Service};
use lb_proto::FieldError;
use serde::{Deserialize, Serialize};

use super::admins::AdminCert;
use super::agents::Agent;
use super::security::{CaKeys, JoinAttempt, JoinToken};

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
    /// An admin certificate for `name` was signed through the API.
    IssueAdmin {
        name: String,
        cert: AdminCert,
    },
    /// An operator revokes admin `name`'s certificates issued up to `at_ms`.
    RevokeAdmin {
        name: String,
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
    pub(super) fn in_batch(self, index: usize, name: &str) -> Rejected {
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
