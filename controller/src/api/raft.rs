//! `lb.v1.Raft`, server side: decodes peer messages and hands them to openraft.

use std::sync::Arc;

use lb_proto::pb;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::typ::InstallSnapshotRequest;

pub(super) struct RaftPeer {
    app: Arc<App>,
}

impl RaftPeer {
    pub(super) fn new(app: Arc<App>) -> Self {
        RaftPeer { app }
    }
}

/// A peer message: binary after [`crate::network::BINARY_RPC`], else JSON.
fn decode<T: DeserializeOwned>(json: &[u8]) -> Result<T, Status> {
    if let Some(binary) = json.strip_prefix(crate::network::BINARY_RPC) {
        return postcard::from_bytes(binary).map_err(|e| {
            Status::invalid_argument(format!("json: undecodable binary raft message: {e}"))
        });
    }
    serde_json::from_slice(json)
        .map_err(|e| Status::invalid_argument(format!("json: undecodable raft message: {e}")))
}

/// Encodes openraft's own result, errors included, for the peer to decode.
fn reply<T: Serialize>(result: &T) -> Result<Response<pb::RaftPayload>, Status> {
    let json = serde_json::to_vec(result)
        .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
    Ok(Response::new(pb::RaftPayload { json }))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftPeer {
    async fn append_entries(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = decode(&req.into_inner().json)?;
        reply(&self.app.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = decode(&req.into_inner().json)?;
        reply(&self.app.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::SnapshotChunk>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let chunk = req.into_inner();
        let mut rpc: InstallSnapshotRequest = decode(&chunk.json)?;
        rpc.data = chunk.data;
        reply(&self.app.raft.install_snapshot(rpc).await)
    }
}
