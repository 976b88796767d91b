//! Durable storage for one controller: the Raft log and the state machine in a
//! single redb file (`<data-dir>/lbfabric.redb`).
//!
//! A write costs one fsync: its log append commits with redb's default
//! durability (on disk before openraft's callback fires). Applying it
//! commits without one (see [`StateMachineStore`]): the next durable commit
//! carries it to disk, and after a crash openraft applies again what the
//! log holds beyond the stored `last_applied`. The commit index is not
//! stored either (see [`LogStore`]).
//! Calls into redb are made inline from openraft's storage tasks, as the
//! reference stores do: each is one short transaction.

mod backup;
mod log;
mod snapshot;
mod state_machine;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, TableDefinition};

pub use backup::{backup, restore, Restored};
pub use log::LogStore;
pub use state_machine::{stored_ca, SharedState, SmData, StateMachineStore};

/// The one redb file in the data directory.
const DB_FILE: &str = "lbfabric.redb";
const LOGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const RAFT_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");
const SM_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_meta");
const SERVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("services");
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("decoding stored record {what}: {source}")]
    Decode {
        what: String,
        source: serde_json::Error,
    },
    #[error("encoding record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("encoding a snapshot or log entry: {0}")]
    Binary(postcard::Error),
    #[error("decoding stored record {what} ({bytes} bytes): {source}")]
    Record {
        what: String,
        bytes: usize,
        source: postcard::Error,
    },
    #[error("decoding a snapshot of {bytes} bytes: {source}")]
    Snapshot {
        bytes: usize,
        source: postcard::Error,
    },
    #[error("--restore: {path} already holds a store; restore into a new, empty data directory")]
    NotEmpty { path: PathBuf },
    #[error(
        "the snapshot's event at revision {revision} refers to service {name}, which it lacks"
    )]
    SnapshotEvent { revision: u64, name: String },
}

/// redb returns a different error type per call; all of them fold into `redb::Error`.
macro_rules! from_redb {
    ($($t:ty),+) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )+};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn decode<T: serde::de::DeserializeOwned>(
    what: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    if let Some(binary) = bytes.strip_prefix(BINARY) {
        return postcard::from_bytes(binary).map_err(|source| StoreError::Record {
            what: what.to_string(),
            bytes: bytes.len(),
            source,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        what: what.to_string(),
        source,
    })
}

/// What a binary record starts with: the value follows in postcard's
/// encoding. Log entries and the services' and events' rows are binary —
/// an import of 10,000 services writes an entry of 8 MB and 20,000 rows,
/// a third of the bytes and several times faster than JSON. Records
/// written before (JSON, which starts with `{`) are still read.
const BINARY: &[u8] = b"\0lb1";

/// A record in the binary form [`decode`] reads.
fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = BINARY.to_vec();
    postcard::to_io(value, &mut out).map_err(StoreError::Binary)?;
    Ok(out)
}

/// redb's page cache. Its default (1 GiB) keeps every page written in
/// memory: after importing 10,000 services the whole store file stayed
/// resident. The state is in memory anyway; the store is read at start
/// and written a change at a time, so a small cache costs nothing.
const CACHE_BYTES: usize = 16 << 20;

/// Opens (or creates) the store under `data_dir` and returns its two halves.
pub fn open(data_dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = open_db(data_dir)?;
    let sm = StateMachineStore::load(db.clone())?;
    Ok((LogStore::new(db), sm))
}

/// The redb file under `data_dir`, created with every table if new.
fn open_db(data_dir: &Path) -> Result<Arc<Database>, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let db = Arc::new(
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(data_dir.join(DB_FILE))?,
    );
    // Create every table once so readers never meet a missing one.
    let txn = db.begin_write()?;
    txn.open_table(LOGS)?;
    txn.open_table(RAFT_META)?;
    txn.open_table(SM_META)?;
    txn.open_table(SERVICES)?;
    txn.open_table(EVENTS)?;
    txn.open_table(SNAPSHOT)?;
    txn.commit()?;
    Ok(db)
}
