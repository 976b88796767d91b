//! Raft peer RPCs, client side: openraft messages over `lb.v1.Raft`, as
//! JSON, except AppendEntries requests, which are binary (see
//! [`BINARY_RPC`]).
//!
//! Anything that prevents a reply (connection refused, reset, deadline) is
//! reported as `Unreachable` so openraft backs off instead of hammering a dead
//! peer; an error the peer itself returned is passed on as a remote error.

use lb_proto::pb;
use lb_proto::pb::raft_client::RaftClient;
use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::typ::*;

/// Peer messages carry whole log batches and snapshot chunks.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Creates one [`PeerClient`] per target node.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// mTLS to peers with this controller's certificate; `None`: plaintext.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// How long dialling a peer (TCP and the TLS handshake) may take.
    pub connect_timeout: std::time::Duration,
}

impl Network {
    /// Dialling a peer may take 500 ms, or the longest election timeout
    /// when that is longer: a connection that cannot be set up within it is
    /// dropped and dialled again, so on a slow host (the emulated CPUs of
    /// the VM test bed, where a TLS handshake takes seconds) a shorter limit
    /// would never let a new leader reach its followers.
    pub fn connect_timeout(election_max: std::time::Duration) -> std::time::Duration {
        election_max.max(std::time::Duration::from_millis(500))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            client: None,
        }
    }
}

/// A lazily connected client to one peer controller.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
    connect_timeout: std::time::Duration,
    client: Option<RaftClient<Channel>>,
}

impl PeerClient {
    fn client(&mut self) -> Result<RaftClient<Channel>, NetworkError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoint = lb_proto::client::endpoint(&self.addr, self.tls.as_ref())
            .map_err(|e| NetworkError::new(&e))?
            .connect_timeout(self.connect_timeout);
        let client = RaftClient::new(lb_proto::client::connect_lazy(&endpoint))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Sends one RPC and decodes `Result<Resp, RaftError<E>>` from the reply.
    async fn call<Resp, E, F, Fut>(
        &mut self,
        option: &RPCOption,
        send: F,
    ) -> Result<Resp, RpcError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, std::time::Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::RaftPayload>, tonic::Status>>,
    {
        let client = self.client().map_err(RpcError::Network)?;
        let reply = match send(client, option.hard_ttl()).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                if status.code() == tonic::Code::Unavailable {
                    // Drop the channel so the next call dials afresh.
                    self.client = None;
                    return Err(RpcError::Unreachable(Unreachable::new(&status)));
                }
                if status.code() == tonic::Code::DeadlineExceeded {
                    // Keep the channel: a connection still being set up (a
                    // TLS handshake can outlast a heartbeat-long deadline on
                    // a slow host) finishes for the next call, instead of
                    // starting over every time.
                    return Err(RpcError::Unreachable(Unreachable::new(&status)));
                }
                return Err(RpcError::Network(NetworkError::new(&status)));
            }
        };
        let result: Result<Resp, RaftError<E>> = serde_json::from_slice(&reply.json)
            .map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, NetworkError> {
    serde_json::to_vec(value).map_err(|e| NetworkError::new(&e))
}

/// What a binary peer message starts with; postcard's encoding follows.
///
/// openraft gives an AppendEntries call one heartbeat interval (50 ms by
/// default) to come back, whatever it carries, and retries the same batch
/// when it does not. An import of 10,000 services is one entry of several
/// megabytes: as JSON, encoding, sending and decoding it took longer than
/// that, every time, and the followers never got it (the write hung until
/// its deadline). In postcard it is a fraction of the bytes and several
/// times faster both ways. Replies and the other messages are small and
/// stay JSON; the receiver tells the two apart by this prefix.
pub const BINARY_RPC: &[u8] = b"\0lbr1";

fn encode_binary<T: Serialize>(value: &T) -> Result<Vec<u8>, NetworkError> {
    let mut out = BINARY_RPC.to_vec();
    postcard::to_io(value, &mut out).map_err(|e| NetworkError::new(&e))?;
    Ok(out)
}

fn with_deadline<T>(msg: T, ttl: std::time::Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(ttl);
    req
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RpcError> {
        let json = encode_binary(&rpc).map_err(RpcError::Network)?;
        self.call(&option, |mut c, ttl| async move {
            c.append_entries(with_deadline(pb::RaftPayload { json }, ttl))
                .await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        let json = encode(&rpc).map_err(RpcError::Network)?;
        self.call(&option, |mut c, ttl| async move {
            c.vote(with_deadline(pb::RaftPayload { json }, ttl)).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse, RpcError<InstallSnapshotError>> {
        // Snapshot bytes travel in their own field, not inflated by JSON.
        let data = std::mem::take(&mut rpc.data);
        let json = encode(&rpc).map_err(RpcError::Network)?;
        self.call(&option, |mut c, ttl| async move {
            c.install_snapshot(with_deadline(pb::SnapshotChunk { json, data }, ttl))
                .await
        })
        .await
    }
}
