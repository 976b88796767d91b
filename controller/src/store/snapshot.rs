//! The snapshot's format: the applied state in postcard's binary encoding
//! behind a magic line. An event that holds its service's current version
//! (an import's 10,000 creations, say) refers to the service by name
//! instead of carrying a copy: the snapshot is smaller, and a node that
//! installs it shares one copy between the service and its event, as the
//! node that applied the commands does. The services below quorum follow
//! the state, so that a snapshot written before they existed still reads
//! (as none below quorum). Earlier formats (the whole state
//! in postcard, before that JSON) are still read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lb_proto::model::{RealServer, Service};
use serde::{Deserialize, Serialize};

use super::{decode, StoreError};
use crate::state::{Admins, Agent, Event, EventKind, Security, State, VipOwner};

/// The keys of the snapshot table: its metadata and its data.
pub(super) const SNAPSHOT_META: &str = "meta";
pub(super) const SNAPSHOT_DATA: &str = "data";

/// What a snapshot starts with; the state follows in postcard's binary
/// encoding (a quarter of the JSON's size, and faster both ways; the state
/// is encoded under the read lock, which holds writes back meanwhile).
const SNAPSHOT_MAGIC: &[u8] = b"lbfabric-snapshot-2\n";
/// The format before: the whole [`State`], each event with its copy.
const SNAPSHOT_MAGIC_1: &[u8] = b"lbfabric-snapshot-1\n";

/// An event in a snapshot: `service` is `None` when the event holds the
/// service's current version (the one under `name` in the snapshot).
#[derive(Serialize, Deserialize)]
struct SnapEvent {
    revision: u64,
    kind: EventKind,
    name: String,
    service: Option<Arc<Service>>,
    realserver: Option<RealServer>,
}

/// The state as a snapshot holds it, borrowed to write ([`State`]'s fields,
/// the events as [`SnapEvent`]s).
#[derive(Serialize)]
struct SnapRef<'a> {
    revision: u64,
    services: &'a BTreeMap<String, Arc<Service>>,
    events: Vec<SnapEvent>,
    owners: &'a BTreeMap<IpAddr, VipOwner>,
    agents: &'a BTreeMap<String, Agent>,
    director_down: &'a BTreeMap<String, BTreeSet<SocketAddr>>,
    security: &'a Security,
}

/// The same, read back.
#[derive(Deserialize)]
struct Snap {
    revision: u64,
    services: BTreeMap<String, Arc<Service>>,
    events: Vec<SnapEvent>,
    owners: BTreeMap<IpAddr, VipOwner>,
    agents: BTreeMap<String, Agent>,
    director_down: BTreeMap<String, BTreeSet<SocketAddr>>,
    security: Security,
}

pub(super) fn snapshot_encode(state: &State) -> Result<Vec<u8>, StoreError> {
    // Every field by name: a field added to State fails to compile here
    // until the snapshot carries it.
    let State {
        revision,
        services,
        events,
        owners,
        agents,
        director_down,
        below_quorum,
        security,
        admins,
    } = state;
    let events = events
        .iter()
        .map(|e| SnapEvent {
            revision: e.revision,
            kind: e.kind,
            name: e.service.name.clone(),
            service: match services.get(&e.service.name) {
                Some(s) if Arc::ptr_eq(s, &e.service) => None,
                _ => Some(Arc::clone(&e.service)),
            },
            realserver: e.realserver.clone(),
        })
        .collect();
    let snap = SnapRef {
        revision: *revision,
        services,
        events,
        owners,
        agents,
        director_down,
        security,
    };
    let mut out = SNAPSHOT_MAGIC.to_vec();
    postcard::to_io(&snap, &mut out).map_err(StoreError::Binary)?;
    // Each part added since the format began follows the last, so that a
    // snapshot written before it still reads (as empty).
    postcard::to_io(below_quorum, &mut out).map_err(StoreError::Binary)?;
    postcard::to_io(admins, &mut out).map_err(StoreError::Binary)?;
    Ok(out)
}

pub(super) fn snapshot_decode(bytes: &[u8]) -> Result<State, StoreError> {
    let failed = |source| StoreError::Snapshot {
        bytes: bytes.len(),
        source,
    };
    if let Some(binary) = bytes.strip_prefix(SNAPSHOT_MAGIC) {
        let (snap, rest): (Snap, _) = postcard::take_from_bytes(binary).map_err(failed)?;
        let (below_quorum, rest) = match rest {
            [] => (BTreeSet::new(), rest),
            _ => postcard::take_from_bytes(rest).map_err(failed)?,
        };
        let admins = match rest {
            [] => Admins::default(),
            _ => postcard::from_bytes(rest).map_err(failed)?,
        };
        let mut events = VecDeque::with_capacity(snap.events.len());
        for e in snap.events {
            let service = match e.service {
                Some(s) => s,
                None => snap.services.get(&e.name).cloned().ok_or_else(|| {
                    StoreError::SnapshotEvent {
                        revision: e.revision,
                        name: e.name.clone(),
                    }
                })?,
            };
            events.push_back(Event {
                revision: e.revision,
                kind: e.kind,
                service,
                realserver: e.realserver,
            });
        }
        return Ok(State {
            revision: snap.revision,
            services: snap.services,
            events,
            owners: snap.owners,
            agents: snap.agents,
            director_down: snap.director_down,
            below_quorum,
            security: snap.security,
            admins,
        });
    }
    let mut state: State = match bytes.strip_prefix(SNAPSHOT_MAGIC_1) {
        Some(binary) => postcard::from_bytes(binary).map_err(failed)?,
        None => decode("snapshot (JSON)", bytes)?,
    };
    state.share_versions();
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Agent, Command};

    /// A snapshot carries every part of the state, and those written in
    /// the earlier formats (JSON, then postcard with a copy of the service
    /// in every event) are still read.
    #[test]
    fn a_snapshot_reads_back_whole_and_old_json_ones_still_read() {
        let mut state = State::default();
        let mut web = crate::state::tests::service("web", "10.0.0.1");
        web.realservers = vec![crate::state::tests::rs("10.2.0.1", 80)];
        web.health_check = Some(crate::state::tests::tcp_check());
        // Its only backend fails: below quorum, the sorry server in use.
        web.sorry_server = Some("10.9.0.9:80".parse().unwrap());
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
            Command::RevokeAdmin {
                name: "alice".into(),
                at_ms: 6,
            },
        ] {
            state.apply(cmd).expect("applies");
        }
        let bytes = snapshot_encode(&state).unwrap();
        assert!(state.below_quorum.contains("web"));
        let read = snapshot_decode(&bytes).unwrap();
        assert_eq!(read, state);
        // Written before the services below quorum were kept: none.
        let mut before = SNAPSHOT_MAGIC.to_vec();
        let quorum = postcard::to_stdvec(&state.below_quorum).unwrap();
        let admins = postcard::to_stdvec(&state.admins).unwrap();
        let tail = quorum.len() + admins.len();
        before.extend_from_slice(&bytes[SNAPSHOT_MAGIC.len()..bytes.len() - tail]);
        let read = snapshot_decode(&before).unwrap();
        assert!(read.below_quorum.is_empty());
        assert_eq!(read.services, state.services);
        // The event that created the service holds its current version:
        // one copy in memory, as before the snapshot.
        assert_eq!(read.events[0].kind, crate::state::EventKind::ServiceCreated);
        assert!(std::sync::Arc::ptr_eq(
            &read.services["web"],
            &read.events[0].service
        ));
        let json = serde_json::to_vec(&state).unwrap();
        assert!(
            bytes.len() < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        assert_eq!(snapshot_decode(&json).unwrap(), state);
        // The format before this one: every event with a copy of its service.
        let mut v1 = SNAPSHOT_MAGIC_1.to_vec();
        postcard::to_io(&state, &mut v1).unwrap();
        assert!(bytes.len() < v1.len(), "{} vs {}", bytes.len(), v1.len());
        let read = snapshot_decode(&v1).unwrap();
        assert_eq!(read, state);
        assert!(std::sync::Arc::ptr_eq(
            &read.services["web"],
            &read.events[0].service
        ));
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() - 3);
        let e = snapshot_decode(&cut).unwrap_err().to_string();
        assert!(e.starts_with("decoding a snapshot of"), "{e}");
    }
}
