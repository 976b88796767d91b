//! The Raft log, vote and commit index in redb.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{decode, encode, StoreError, LOGS, RAFT_META};
use crate::typ::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";

/// The log half of the store; cheap to clone (it is also the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn encode_entry(entry: &Entry) -> Result<Vec<u8>, StoreError> {
    encode(entry)
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StoreError> {
    decode(format_args!("log entry {index}"), bytes)
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RAFT_META)?;
        let value = table.get(key)?;
        value.map(|v| decode(key, v.value())).transpose()
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)?;
        let txn = self.db.begin_write()?;
        txn.open_table(RAFT_META)?.insert(key, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let mut out = Vec::new();
        for item in table.range(range)? {
            let (index, bytes) = item?;
            out.push(decode_entry(index.value(), bytes.value())?);
        }
        Ok(out)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let last = table.last()?;
        last.map(|(index, bytes)| {
            decode_entry(index.value(), bytes.value()).map(|e| *e.get_log_id())
        })
        .transpose()
    }

    fn append_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LOGS)?;
            for entry in entries {
                let bytes = encode_entry(&entry)?;
                table.insert(entry.get_log_id().index, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        let took_us = started.elapsed().as_micros() as u64;
        tracing::debug!(took_us, "log entries appended");
        Ok(())
    }

    fn delete_since(&self, index: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(LOGS)?.retain_in(index.., |_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    fn purge_upto(&self, log_id: LogId) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&log_id)?;
        let txn = self.db.begin_write()?;
        txn.open_table(RAFT_META)?
            .insert(LAST_PURGED, bytes.as_slice())?;
        txn.open_table(LOGS)?
            .retain_in(..=log_id.index, |_, _| false)?;
        txn.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(range)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

/// The commit index is not stored (openraft's `save_committed` is left as
/// the no-op it is by default): an entry is on disk before it counts as
/// appended, so a restarted node loses nothing by not knowing the commit
/// index. Its state machine may restart behind (applies skip the fsync, see
/// [`super::StateMachineStore`]); it applies the rest once it learns the
/// commit index again, from the leader or by committing as leader. Storing
/// the index was a second fsync in the path of every write.
impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = || -> Result<_, StoreError> {
            let last_purged: Option<LogId> = self.read_meta(LAST_PURGED)?;
            let last = self.last_entry_id()?.or(last_purged);
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        };
        read().map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The commit has fsynced before the callback tells openraft the entries are durable.
        self.append_entries(entries)
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(index = log_id.index, "truncating log");
        self.delete_since(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(index = log_id.index, "purging log");
        self.purge_upto(log_id)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use openraft::EntryPayload;

    /// An entry reads back from the binary form, and one written as JSON
    /// by an older version still reads.
    #[test]
    fn entries_read_back_binary_and_json() {
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 7),
            payload: EntryPayload::Normal(Command::DeleteService { name: "web".into() }),
        };
        let binary = encode_entry(&entry).unwrap();
        let json = serde_json::to_vec(&entry).unwrap();
        assert!(binary.len() < json.len());
        for bytes in [&binary, &json] {
            let back = decode_entry(7, bytes).unwrap();
            assert_eq!(back.log_id, entry.log_id);
            assert!(matches!(
                back.payload,
                EntryPayload::Normal(Command::DeleteService { ref name }) if name == "web"
            ));
        }
        let e = decode_entry(7, &binary[..binary.len() - 2]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("decoding stored record log entry 7"),
            "{e}"
        );
    }
}
