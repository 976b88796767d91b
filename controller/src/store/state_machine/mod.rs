//! The applied configuration: kept in memory for reads, mirrored in redb.
//!
//! Each `apply` batch is one redb transaction holding the changed services,
//! the new events and the applied log id, so after a crash the tables and
//! `last_applied` always agree and openraft re-applies whatever came after.
//!
//! Apply commits skip the fsync (`Durability::None`): every applied entry is
//! already durable in the log, and the next durable commit (the following log
//! append, or a snapshot) makes them durable too. A crash can only roll the
//! state machine back to an earlier `last_applied`, never past a log entry
//! that is still needed: the log is purged only up to a snapshot, which is
//! written durably. This halves the fsyncs on the write path.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot::{snapshot_decode, snapshot_encode, SNAPSHOT_DATA, SNAPSHOT_META};
use super::tables::{Side, ADMINS, AGENTS, BELOW_QUORUM, DIRECTOR_DOWN, OWNERS, SECURITY};
use super::{decode, encode, StoreError, EVENTS, SERVICES, SM_META, SNAPSHOT};
use crate::state::{share_version, CommandResult, Derived, Event, State};
use crate::typ::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use lb_proto::model::Service;

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
const REVISION: &str = "revision";

/// What the state machine holds: the configuration and where in the log it stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub state: State,
    /// Computed from `state` whenever a change is applied.
    #[serde(skip)]
    pub derived: Derived,
    /// Moves whenever an applied change may move a VIP: one added, removed
    /// or asking other directors, an owner assigned, a snapshot installed.
    /// While it stands, the leader's placement needs no new pass over the
    /// VIPs (see `leader::placement`).
    #[serde(skip)]
    pub placement_inputs: u64,
}

impl SmData {
    /// The VIPs `node` owns among those the configuration still has.
    pub fn owned_by(&self, node: &str) -> Vec<(std::net::IpAddr, u64)> {
        self.state.owned_by(&self.derived, node)
    }
}

/// The applied state, shared with the API for reads and watches.
#[derive(Debug)]
pub struct SharedState {
    data: RwLock<SmData>,
    revision: watch::Sender<u64>,
    /// The last snapshot this node built, for metrics.
    built: std::sync::Mutex<Option<SnapshotBuilt>>,
}

/// What building a snapshot cost.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotBuilt {
    pub bytes: usize,
    pub took: std::time::Duration,
}

impl SharedState {
    /// A consistent view of the applied state; hold it briefly.
    pub fn read(&self) -> RwLockReadGuard<'_, SmData> {
        self.data.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last snapshot this node built (none yet: `None`).
    pub fn last_snapshot(&self) -> Option<SnapshotBuilt> {
        *self.built.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fires whenever a change has been applied on this node.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Changes the data with `f`, which returns the services its changes
    /// touched and whether they assigned a VIP (`None`: it set the derived
    /// view itself).
    fn replace(&self, f: impl FnOnce(&mut SmData) -> Option<(BTreeSet<String>, bool)>) {
        let mut data = self.data.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((touched, assigned)) = f(&mut data) {
            let SmData { state, derived, .. } = &mut *data;
            if derived.update(state, &touched) || assigned {
                data.placement_inputs += 1;
            }
        }
        self.revision.send_replace(data.state.revision);
    }
}

/// The state-machine half of the store.
pub struct StateMachineStore {
    db: Arc<Database>,
    shared: Arc<SharedState>,
    snapshot_seq: u64,
    /// The oldest event row the table may still hold (`None`: not known).
    events_from: Option<u64>,
}

/// The event rows that fell out of the history are deleted this many at a
/// time. Once the history is full (10,000 services imported make 10,000
/// events), each change pushes one event out; deleting its row at once
/// copied the front of the events B-tree in every write — an
/// N-dependent cost beside the row the change adds at the other end.
/// The rows past the history are skipped when the store is loaded.
const EVENT_ROWS_TRIMMED: u64 = 16;

impl StateMachineStore {
    pub(super) fn load(db: Arc<Database>) -> Result<Self, StoreError> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(SM_META)?;
        let read_meta = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta.get(key)?.map(|v| v.value().to_vec()))
        };
        let mut data = SmData::default();
        if let Some(b) = read_meta(LAST_APPLIED)? {
            data.last_applied = decode(LAST_APPLIED, &b)?;
        }
        if let Some(b) = read_meta(MEMBERSHIP)? {
            data.membership = decode(MEMBERSHIP, &b)?;
        }
        if let Some(b) = read_meta(REVISION)? {
            data.state.revision = decode(REVISION, &b)?;
        }
        if let Some(b) = read_meta(OWNERS)? {
            data.state.owners = decode(OWNERS, &b)?;
        }
        if let Some(b) = read_meta(SECURITY)? {
            data.state.security = decode(SECURITY, &b)?;
        }
        if let Some(b) = read_meta(ADMINS)? {
            data.state.admins = decode(ADMINS, &b)?;
        }
        if let Some(b) = read_meta(AGENTS)? {
            data.state.agents = decode(AGENTS, &b)?;
        }
        if let Some(b) = read_meta(DIRECTOR_DOWN)? {
            data.state.director_down = decode(DIRECTOR_DOWN, &b)?;
        }
        if let Some(b) = read_meta(BELOW_QUORUM)? {
            data.state.below_quorum = decode(BELOW_QUORUM, &b)?;
        }
        for item in txn.open_table(SERVICES)?.iter()? {
            let (name, bytes) = item?;
            let service = decode(format_args!("service {}", name.value()), bytes.value())?;
            data.state
                .services
                .insert(name.value().to_string(), service);
        }
        let events = txn.open_table(EVENTS)?;
        let events_from = events.first()?.map(|(rev, _)| rev.value());
        let skipped = events
            .len()?
            .saturating_sub(crate::state::EVENT_HISTORY as u64);
        for item in events
            .iter()?
            .skip(usize::try_from(skipped).unwrap_or(usize::MAX))
        {
            let (rev, bytes) = item?;
            let mut event: Event = decode(format_args!("event {}", rev.value()), bytes.value())?;
            // One copy of a service's current version, as when the
            // commands applied; the event's own is dropped at once.
            share_version(&data.state.services, &mut event);
            data.state.events.push_back(event);
        }
        data.derived = Derived::of(&data.state);
        let (revision, _) = watch::channel(data.state.revision);
        Ok(StateMachineStore {
            db,
            shared: Arc::new(SharedState {
                data: RwLock::new(data),
                revision,
                built: Default::default(),
            }),
            snapshot_seq: 0,
            events_from,
        })
    }

    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn apply_entries(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<CommandResult>, StoreError> {
        let mut results = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        let mut changed = Side::default();
        let mut snapshot = None;
        let mut touched = BTreeSet::new();
        let started = std::time::Instant::now();
        self.shared.replace(|data| {
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(Ok(crate::state::Applied::none())),
                    EntryPayload::Normal(cmd) => {
                        let touches = Side::of(&cmd);
                        let services = data.state.touches(&cmd);
                        let revision = data.state.revision;
                        let result = data.state.apply(cmd);
                        // Every event the command made (a batch makes several),
                        // the newest: read from the end, not through the
                        // whole history (10,000 events).
                        if result.is_ok() && data.state.revision != revision {
                            let all = &data.state.events;
                            let made = all.iter().rev().take_while(|e| e.revision > revision);
                            events.extend(all.range(all.len() - made.count()..).cloned());
                        }
                        if result.is_ok() {
                            changed = changed.or(touches);
                            touched.extend(services);
                        }
                        results.push(result);
                    }
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m);
                        results.push(Ok(crate::state::Applied::none()));
                    }
                }
            }
            // The configured services the events name (events carry the
            // effective service, agents' backends included, which must not
            // be stored as configuration); `None`: deleted.
            let services: Vec<(String, Option<Arc<Service>>)> = events
                .iter()
                .map(|e| e.service.name.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|name| {
                    let configured = data.state.services.get(&name).cloned();
                    (name, configured)
                })
                .collect();
            snapshot = Some((
                data.last_applied,
                data.membership.clone(),
                data.state.revision,
                data.state.events.front().map(|e| e.revision),
                changed.blobs(&data.state),
                services,
            ));
            Some((touched, changed.owners()))
        });
        let Some((last_applied, membership, revision, oldest_event, blobs, changed_services)) =
            snapshot
        else {
            return Ok(results);
        };
        let applied = started.elapsed();
        let trim = oldest_event.filter(|oldest| {
            self.events_from
                .is_none_or(|from| *oldest >= from + EVENT_ROWS_TRIMMED)
        });
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut services = txn.open_table(SERVICES)?;
            let mut table = txn.open_table(EVENTS)?;
            for (name, configured) in &changed_services {
                match configured {
                    Some(service) => services.insert(name.as_str(), encode(service)?.as_slice())?,
                    None => services.remove(name.as_str())?,
                };
            }
            for event in &events {
                table.insert(event.revision, encode(event)?.as_slice())?;
            }
            if let Some(oldest) = trim {
                table.retain_in(..oldest, |_, _| false)?;
            }
        }
        write_sm_meta(&txn, last_applied, &membership, revision)?;
        {
            let mut meta = txn.open_table(SM_META)?;
            for (key, bytes) in blobs? {
                meta.insert(key, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        if trim.is_some() {
            self.events_from = trim;
        }
        // Where a slow write's time went: the state (under the lock every
        // reader waits for) or the store.
        tracing::debug!(
            revision,
            applied_us = applied.as_micros() as u64,
            stored_us = (started.elapsed() - applied).as_micros() as u64,
            "entries applied"
        );
        Ok(results)
    }

    fn install(&mut self, meta: &SnapshotMeta, bytes: Vec<u8>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let state = snapshot_decode(&bytes)?;
        let txn = self.db.begin_write()?;
        write_state(&txn, &state)?;
        {
            let mut snap = txn.open_table(SNAPSHOT)?;
            snap.insert(SNAPSHOT_META, serde_json::to_vec(meta)?.as_slice())?;
            snap.insert(SNAPSHOT_DATA, bytes.as_slice())?;
        }
        write_sm_meta(
            &txn,
            meta.last_log_id,
            &meta.last_membership,
            state.revision,
        )?;
        txn.commit()?;
        self.events_from = state.events.front().map(|e| e.revision);
        self.shared.replace(|data| {
            *data = SmData {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                derived: Derived::of(&state),
                state,
                placement_inputs: data.placement_inputs + 1,
            };
            None
        });
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = bytes.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let (Some(meta), Some(data)) = (table.get(SNAPSHOT_META)?, table.get(SNAPSHOT_DATA)?)
        else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta: decode(SNAPSHOT_META, meta.value())?,
            snapshot: Box::new(Cursor::new(data.value().to_vec())),
        }))
    }
}

/// The CA (with its key) in the replicated state as this node last stored
/// it; `None` when `data_dir` has no store yet, or the state no CA. Read
/// before the node starts, so that a controller without `ca.key` on disk
/// can still renew its own certificate.
pub fn stored_ca(data_dir: &std::path::Path) -> Result<Option<crate::state::CaKeys>, StoreError> {
    let path = data_dir.join(super::DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let db = Database::open(&path)?;
    let txn = db.begin_read()?;
    let meta = match txn.open_table(SM_META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(bytes) = meta.get(SECURITY)? else {
        return Ok(None);
    };
    let security: crate::state::Security = decode(SECURITY, bytes.value())?;
    Ok(security.ca)
}

/// Replaces the state machine's tables and blobs with `state` (a snapshot
/// being installed, a backup being restored).
pub(super) fn write_state(txn: &WriteTransaction, state: &State) -> Result<(), StoreError> {
    let mut services = txn.open_table(SERVICES)?;
    services.retain(|_, _| false)?;
    for (name, service) in &state.services {
        services.insert(name.as_str(), encode(service)?.as_slice())?;
    }
    let mut events = txn.open_table(EVENTS)?;
    events.retain(|_, _| false)?;
    for event in &state.events {
        events.insert(event.revision, encode(event)?.as_slice())?;
    }
    // What lives outside the tables.
    let mut meta = txn.open_table(SM_META)?;
    for (key, bytes) in Side::ALL.blobs(state)? {
        meta.insert(key, bytes.as_slice())?;
    }
    Ok(())
}

pub(super) fn write_sm_meta(
    txn: &WriteTransaction,
    last_applied: Option<LogId>,
    membership: &StoredMembership,
    revision: u64,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(SM_META)?;
    meta.insert(LAST_APPLIED, serde_json::to_vec(&last_applied)?.as_slice())?;
    meta.insert(MEMBERSHIP, serde_json::to_vec(membership)?.as_slice())?;
    meta.insert(REVISION, serde_json::to_vec(&revision)?.as_slice())?;
    Ok(())
}

/// Builds a snapshot from a copy of the applied state taken when it starts.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    shared: Arc<SharedState>,
    seq: u64,
}

impl SnapshotBuilder {
    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let started = std::time::Instant::now();
        let (last_applied, membership, data) = {
            let d = self.shared.read();
            (
                d.last_applied,
                d.membership.clone(),
                snapshot_encode(&d.state)?,
            )
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.seq),
            None => format!("none-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let txn = self.db.begin_write()?;
        {
            let mut snap = txn.open_table(SNAPSHOT)?;
            snap.insert(SNAPSHOT_META, serde_json::to_vec(&meta)?.as_slice())?;
            snap.insert(SNAPSHOT_DATA, data.as_slice())?;
        }
        txn.commit()?;
        let built = SnapshotBuilt {
            bytes: data.len(),
            took: started.elapsed(),
        };
        *self
            .shared
            .built
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(built);
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = built.bytes,
            took_ms = built.took.as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.build()
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let d = self.shared.read();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries)
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            db: self.db.clone(),
            shared: self.shared.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        tracing::info!(snapshot = %meta.snapshot_id, "installing snapshot");
        self.install(meta, snapshot.into_inner())
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

#[cfg(test)]
mod tests;
