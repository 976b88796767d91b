//! The snapshot's format: the applied state in postcard's binary encoding
//! behind a magic line; JSON (the format before it) is still read.

use super::{decode, StoreError};
use crate::state::State;

/// The keys of the snapshot table: its metadata and its data.
pub(super) const SNAPSHOT_META: &str = "meta";
pub(super) const SNAPSHOT_DATA: &str = "data";

/// What a snapshot starts with: the state follows in postcard's binary
/// encoding (a quarter of the JSON's size, and faster both ways; the state
/// is encoded under the read lock, which holds writes back meanwhile).
/// Snapshots written before it are JSON, and still read.
const SNAPSHOT_MAGIC: &[u8] = b"lbfabric-snapshot-1\n";

pub(super) fn snapshot_encode(state: &State) -> Result<Vec<u8>, StoreError> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    postcard::to_io(state, &mut out).map_err(StoreError::Binary)?;
    Ok(out)
}

pub(super) fn snapshot_decode(bytes: &[u8]) -> Result<State, StoreError> {
    match bytes.strip_prefix(SNAPSHOT_MAGIC) {
        Some(binary) => postcard::from_bytes(binary).map_err(|source| StoreError::Snapshot {
            bytes: bytes.len(),
            source,
        }),
        None => decode("snapshot (JSON)", bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Agent, Command};

    /// A snapshot carries every part of the state, and one written as
    /// JSON (before the binary format) is still read.
    #[test]
    fn a_snapshot_reads_back_whole_and_old_json_ones_still_read() {
        let mut state = State::default();
        let mut web = crate::state::tests::service("web", "10.0.0.1");
        web.realservers = vec![crate::state::tests::rs("10.2.0.1", 80)];
        web.health_check = Some(crate::state::tests::tcp_check());
        let agent = Agent {
            unhealthy: ["web".to_string()].into(),
            drained: true,
            ..crate::state::tests::agent("rs1", "10.2.0.2", "web")
        };
        for cmd in [
            Command::CreateService { service: web },
            Command::RegisterRealServer { agent },
            Command::AssignVip {
                vip: "10.0.0.1".parse().unwrap(),
                director: "d1".into(),
                expected_epoch: 0,
            },
            Command::SetDirectorChecks {
                service: "web".into(),
                down: ["10.2.0.1:80".parse().unwrap()].into(),
            },
            Command::RevokeNode {
                node_id: "d9".into(),
                at_ms: 5,
            },
        ] {
            state.apply(cmd).expect("applies");
        }
        let bytes = snapshot_encode(&state).unwrap();
        assert_eq!(snapshot_decode(&bytes).unwrap(), state);
        let json = serde_json::to_vec(&state).unwrap();
        assert!(
            bytes.len() < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        assert_eq!(snapshot_decode(&json).unwrap(), state);
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() - 3);
        let e = snapshot_decode(&cut).unwrap_err().to_string();
        assert!(e.starts_with("decoding a snapshot of"), "{e}");
    }
}
