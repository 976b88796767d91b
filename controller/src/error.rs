//! What an API call can fail with, and the one place a domain error becomes
//! the gRPC status a client sees (a leader redirect is `UNAVAILABLE` with the
//! leader's address in metadata).

use lb_proto::FieldError;
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::state::Rejected;

/// Metadata key carrying the leader's address on a redirect.
pub const LEADER_METADATA: &str = lb_proto::client::LEADER_METADATA;

/// What an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error("this controller is not the leader")]
    NotLeader { leader: Option<String> },
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Maps a domain error to the status a client sees.
pub fn status(e: ApiError) -> Status {
    match e {
        ApiError::Invalid(f) => Status::invalid_argument(f.to_string()),
        ApiError::Rejected(r) => match r {
            Rejected::Invalid(f) => Status::invalid_argument(f.to_string()),
            Rejected::AlreadyExists { .. } => Status::already_exists(r.to_string()),
            Rejected::NotFound { .. } => Status::not_found(r.to_string()),
            Rejected::Conflict { .. } | Rejected::StaleEpoch { .. } => {
                Status::aborted(r.to_string())
            }
            Rejected::Unauthenticated { why } => Status::unauthenticated(why),
            Rejected::PermissionDenied { why } => Status::permission_denied(why),
        },
        ApiError::NotLeader { leader: Some(addr) } => {
            let mut s = Status::unavailable(format!("not the leader; the leader is at {addr}"));
            if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                s.metadata_mut().insert(LEADER_METADATA, v);
            }
            s
        }
        ApiError::NotLeader { leader: None } => {
            Status::unavailable("no leader elected yet; retry shortly")
        }
        ApiError::Membership(m) => Status::failed_precondition(m),
        ApiError::Raft(m) => Status::internal(m),
    }
}
