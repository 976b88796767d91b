//! The running controller node: its Raft handle and its applied state, with
//! the two operations every API handler needs — a replicated write, and a
//! read barrier that makes a read linearizable.

use std::sync::{Arc, Mutex};

use openraft::error::ClientWriteError as WriteError;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::grants::Grants;
use crate::state::{Applied, Command};
use crate::store::SharedState;
use crate::timing::LeaseTiming;
use crate::typ::{NodeId, Raft, RaftError};

pub struct App {
    pub id: NodeId,
    pub leases: LeaseTiming,
    pub raft: Raft,
    pub state: Arc<SharedState>,
    /// Leader-only soft state: what the directors and agents last reported.
    pub fleet: Fleet,
    /// How long an agent may be silent before its backends drain.
    pub agent_grace: std::time::Duration,
    /// Turns true when the node shuts down; long streams end on it.
    pub shutdown: watch::Receiver<bool>,
    /// The VIP lease grants this node gave (see [`crate::grants`]).
    pub grants: Mutex<Grants>,
    /// The CA certificate this node serves TLS under (what join tokens pin);
    /// `None` on a plaintext listener.
    pub ca_pem: Option<String>,
    /// How long the certificates agents get by joining or renewing last.
    pub agent_cert_lifetime: std::time::Duration,
    pub metrics: crate::metrics::Metrics,
}

impl App {
    /// Replicates a command and returns what applying it answered.
    pub async fn write(&self, cmd: Command) -> Result<Applied, ApiError> {
        let started = std::time::Instant::now();
        let written = self.raft.client_write(cmd).await;
        let took = started.elapsed();
        self.metrics.write_seconds.observe(took.as_secs_f64());
        tracing::debug!(took_us = took.as_micros() as u64, "raft write");
        match written {
            Ok(resp) => Ok(resp.data?),
            Err(RaftError::APIError(WriteError::ForwardToLeader(f))) => Err(ApiError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            }),
            Err(e) => Err(ApiError::Raft(e.to_string())),
        }
    }

    /// The grant book; hold the guard briefly, and never across an await.
    pub fn grants(&self) -> std::sync::MutexGuard<'_, Grants> {
        self.grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Succeeds only on the leader; otherwise names the leader to redirect to.
    pub fn require_leader(&self) -> Result<(), ApiError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state == openraft::ServerState::Leader {
            return Ok(());
        }
        let leader = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        Err(ApiError::NotLeader { leader })
    }

    /// Waits until this node's state reflects every write acknowledged before
    /// the call (only the leader can answer); `stale` skips the wait.
    pub async fn read_barrier(&self, stale: bool) -> Result<(), ApiError> {
        if stale {
            return Ok(());
        }
        // A quorum that did not answer one heartbeat round in time (openraft
        // gives it one heartbeat interval) may answer the next: try a few
        // rounds before telling the client. Each round is a full check.
        let mut rounds = 0;
        loop {
            let e = match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if let Some(f) = e.forward_to_leader() {
                return Err(ApiError::NotLeader {
                    leader: f.leader_node.clone().map(|n| n.addr),
                });
            }
            let quorum_slow = matches!(
                &e,
                openraft::error::RaftError::APIError(
                    openraft::error::CheckIsLeaderError::QuorumNotEnough(_)
                )
            );
            rounds += 1;
            if !quorum_slow || rounds == 3 {
                return Err(ApiError::Raft(e.to_string()));
            }
        }
    }
}
