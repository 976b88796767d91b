//! Backup and restore of the replicated state (`lbctl cluster backup`,
//! `lb-controller --restore`): a backup is the leader's applied state in
//! the snapshot format, at a revision; a restore writes it into a new
//! store as the state machine of a new one-node cluster. What is not in
//! the state is not restored: the Raft log and membership start anew (the
//! restored node bootstraps alone; add controllers as for any cluster),
//! while services, events, VIP owners and their epochs, agents, join
//! tokens, revocations, admins and the CA carry over, so directors and
//! agents re-attach with the certificates they have.

use std::path::Path;

use lb_proto::backup::Backup;

use super::snapshot::{snapshot_decode, snapshot_encode};
use super::state_machine::{write_sm_meta, write_state};
use super::{open_db, SharedState, StoreError, DB_FILE};
use crate::state::CaKeys;
use crate::typ::StoredMembership;

/// The applied state as it stands, as a backup, and how many services it
/// holds (read under the same lock as the state).
pub fn backup(shared: &SharedState) -> Result<(Backup, usize), StoreError> {
    let data = shared.read();
    let backup = Backup {
        revision: data.state.revision,
        state: snapshot_encode(&data.state)?,
    };
    Ok((backup, data.state.services.len()))
}

/// What [`restore`] put in place.
#[derive(Debug)]
pub struct Restored {
    pub revision: u64,
    pub services: usize,
    /// The fabric's CA, when the controllers held its key: the restored
    /// node's TLS needs it in `<data-dir>/pki`.
    pub ca: Option<CaKeys>,
}

/// Seeds a new store in `data_dir` with `backup`'s state: nothing applied
/// from a log yet, no membership (the node's bootstrap adds itself).
/// Refuses a data directory that already holds a store.
pub fn restore(data_dir: &Path, backup: &Backup) -> Result<Restored, StoreError> {
    let path = data_dir.join(DB_FILE);
    if path.exists() {
        return Err(StoreError::NotEmpty { path });
    }
    let state = snapshot_decode(&backup.state)?;
    let db = open_db(data_dir)?;
    let txn = db.begin_write()?;
    write_state(&txn, &state)?;
    write_sm_meta(&txn, None, &StoredMembership::default(), state.revision)?;
    txn.commit()?;
    Ok(Restored {
        revision: state.revision,
        services: state.services.len(),
        ca: state.security.ca.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    #[tokio::test]
    async fn a_restored_store_reads_back_the_backed_up_state() {
        let mut state = crate::state::State::default();
        let mut web = crate::state::tests::service("web", "10.0.0.1");
        web.realservers = vec![crate::state::tests::rs("10.2.0.1", 80)];
        state
            .apply(Command::CreateService { service: web })
            .unwrap();
        state
            .apply(Command::RevokeNode {
                node_id: "d9".into(),
                at_ms: 5,
            })
            .unwrap();
        let backup = Backup {
            revision: state.revision,
            state: super::super::snapshot::snapshot_encode(&state).unwrap(),
        };
        let to = tempfile::tempdir().unwrap();
        let restored = restore(to.path(), &backup).unwrap();
        assert_eq!((restored.revision, restored.services), (1, 1));
        let (_log, sm) = super::super::open(to.path()).unwrap();
        let read = sm.shared().read().state.clone();
        assert_eq!(read, state);
        assert!(sm.shared().read().last_applied.is_none());
        // Not over a store.
        let e = restore(to.path(), &backup).unwrap_err().to_string();
        assert!(e.contains("already holds a store"), "{e}");
    }
}
