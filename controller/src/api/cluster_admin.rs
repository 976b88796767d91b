//! `lb.v1.ClusterAdmin`: this node's view of the Raft cluster, and membership changes.

use std::collections::BTreeSet;
use std::sync::Arc;

use lb_proto::{pb, FieldError};
use openraft::error::ClientWriteError as WriteError;
use openraft::{ChangeMembers, ServerState};
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::error::{status, ApiError};
use crate::typ::{ClientWriteError, Node, NodeId, RaftError};

pub(super) struct ClusterAdmin {
    app: Arc<App>,
}

impl ClusterAdmin {
    pub(super) fn new(app: Arc<App>) -> Self {
        ClusterAdmin { app }
    }

    fn status(&self) -> pb::ClusterStatus {
        let m = self.app.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                node_id: *id,
                address: node.addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_string(),
            })
            .collect();
        let leader_address = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        pb::ClusterStatus {
            node_id: m.id,
            state: state.to_string(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or_default(),
            leader_address,
            has_leader: m.current_leader.is_some(),
            members,
            last_log_index: m.last_log_index.unwrap_or_default(),
            last_applied_index: m.last_applied.map(|l| l.index).unwrap_or_default(),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or_default(),
            purged_index: m.purged.map(|l| l.index).unwrap_or_default(),
            revision: self.app.state.read().state.revision,
        }
    }

    async fn change(
        &self,
        members: ChangeMembers<NodeId, Node>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let result = self.app.raft.change_membership(members, false).await;
        membership_result(result)?;
        Ok(Response::new(self.status()))
    }
}

fn membership_result<T>(result: Result<T, RaftError<ClientWriteError>>) -> Result<T, Status> {
    result.map_err(|e| {
        status(match e {
            RaftError::APIError(WriteError::ForwardToLeader(f)) => ApiError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(WriteError::ChangeMembershipError(c)) => {
                ApiError::Membership(c.to_string())
            }
            other => ApiError::Raft(other.to_string()),
        })
    })
}

fn node_id(id: u64) -> Result<NodeId, Status> {
    if id == 0 {
        return Err(status(
            FieldError::new("node_id", "must be at least 1").into(),
        ));
    }
    Ok(id)
}

#[tonic::async_trait]
impl pb::cluster_admin_server::ClusterAdmin for ClusterAdmin {
    async fn status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(self.status()))
    }

    #[tracing::instrument(skip_all, err)]
    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let req = req.into_inner();
        let id = node_id(req.node_id)?;
        let port_ok = req.address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Err(status(
                FieldError::new("address", format!("{:?} must be host:port", req.address)).into(),
            ));
        }
        tracing::info!(node_id = id, address = %req.address, "adding learner");
        membership_result(
            self.app
                .raft
                .add_learner(id, Node::new(req.address), true)
                .await,
        )?;
        Ok(Response::new(self.status()))
    }

    #[tracing::instrument(skip_all, err)]
    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let id = node_id(req.into_inner().node_id)?;
        tracing::info!(node_id = id, "promoting to voter");
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    #[tracing::instrument(skip_all, err)]
    async fn remove(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let id = node_id(req.into_inner().node_id)?;
        let (is_voter, is_member) = {
            let m = self.app.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let is_voter = membership.voter_ids().any(|v| v == id);
            (is_voter, membership.get_node(&id).is_some())
        };
        tracing::info!(node_id = id, voter = is_voter, "removing member");
        if is_voter {
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await
        } else if is_member {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await
        } else {
            Err(Status::not_found(format!("node {id} is not a member")))
        }
    }

    #[tracing::instrument(skip_all, err)]
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        super::enrollment::create_token(&self.app, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_join_tokens(
        &self,
        _req: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        self.app.read_barrier(false).await.map_err(status)?;
        Ok(Response::new(super::enrollment::list_tokens(&self.app)))
    }

    #[tracing::instrument(skip_all, err)]
    async fn delete_join_token(
        &self,
        req: Request<pb::DeleteJoinTokenRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        super::enrollment::delete_token(&self.app, req.into_inner())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all, err)]
    async fn issue_admin(
        &self,
        req: Request<pb::IssueAdminRequest>,
    ) -> Result<Response<pb::IssueAdminResponse>, Status> {
        super::admins::issue(&self.app, req)
            .await
            .map(Response::new)
    }

    async fn list_admins(
        &self,
        _req: Request<pb::ListAdminsRequest>,
    ) -> Result<Response<pb::ListAdminsResponse>, Status> {
        self.app.read_barrier(false).await.map_err(status)?;
        Ok(Response::new(super::admins::list(&self.app)))
    }

    #[tracing::instrument(skip_all, err)]
    async fn revoke_admin(
        &self,
        req: Request<pb::RevokeAdminRequest>,
    ) -> Result<Response<pb::ListAdminsResponse>, Status> {
        super::admins::revoke(&self.app, req)
            .await
            .map(Response::new)
    }

    type BackupStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    #[tracing::instrument(skip_all, err)]
    async fn backup(
        &self,
        _req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        // Linearizable: this node still leads and has applied everything
        // committed before the call.
        self.app.require_leader().map_err(status)?;
        self.app.read_barrier(false).await.map_err(status)?;
        let (backup, services) =
            crate::store::backup(&self.app.state).map_err(|e| Status::internal(e.to_string()))?;
        let bytes = backup.to_bytes();
        tracing::info!(
            revision = backup.revision,
            bytes = bytes.len(),
            services,
            "backup taken"
        );
        let (revision, total_bytes) = (backup.revision, bytes.len() as u64);
        let chunks: Vec<Result<pb::BackupChunk, Status>> = bytes
            .chunks(BACKUP_CHUNK_BYTES)
            .enumerate()
            .map(|(i, data)| {
                let first = i == 0;
                Ok(pb::BackupChunk {
                    data: data.to_vec(),
                    revision: if first { revision } else { 0 },
                    total_bytes: if first { total_bytes } else { 0 },
                    services: if first { services as u64 } else { 0 },
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// A backup goes out in parts of this size, well under the message limit.
const BACKUP_CHUNK_BYTES: usize = 1 << 20;
