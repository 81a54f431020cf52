//! The raft log on redb, in the node's store file: entries by index, plus the vote, the
//! committed log id and the last purged log id. Every write is one transaction committed with
//! immediate durability (fsync) before openraft is told it is done.

use super::{NodeId, StorageError, TypeConfig, io_error};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("raft_log");
const STATE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("raft_state");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The raft log of one node, sharing the node's redb database.
#[derive(Clone)]
pub struct RaftLogStore {
    db: Arc<Database>,
}

impl Debug for RaftLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLogStore").finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(value).map_err(|e| StorageIOError::write(io_error(&e)).into())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageIOError::read(io_error(&e)).into())
}

impl RaftLogStore {
    /// The log in `db` (tables are created on first write).
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn read_state<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let read = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::read(openraft::AnyError::error(e)).into()
        };
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let table = match tx.open_table(STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(read(&e)),
        };
        match table.get(key).map_err(|e| read(&e))? {
            Some(v) => decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Writes in one durable transaction: `f` gets the log and state tables.
    fn write(
        &self,
        f: impl FnOnce(
            &mut redb::Table<'_, u64, &'static [u8]>,
            &mut redb::Table<'_, &'static str, &'static [u8]>,
        ) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let fail = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::write_logs(openraft::AnyError::error(e)).into()
        };
        let tx = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut log = tx.open_table(LOG).map_err(|e| fail(&e))?;
            let mut state = tx.open_table(STATE).map_err(|e| fail(&e))?;
            f(&mut log, &mut state)?;
        }
        tx.commit().map_err(|e| fail(&e))
    }

    /// Writes one value of the raft state (vote, committed id) durably.
    fn save_state<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), StorageError> {
        let bytes = encode(value)?;
        self.write(|_, state| {
            state
                .insert(key, bytes.as_slice())
                .map(|_| ())
                .map_err(|e| fail_write(&e))
        })
    }

    /// The newest entry, read alone (not the whole log).
    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, StorageError> {
        let read = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::read_logs(openraft::AnyError::error(e)).into()
        };
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let table = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(read(&e)),
        };
        match table.last().map_err(|e| read(&e))? {
            Some((_, v)) => decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let read = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::read_logs(openraft::AnyError::error(e)).into()
        };
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let table = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(read(&e)),
        };
        let mut out = Vec::new();
        for row in table.range(range).map_err(|e| read(&e))? {
            let (_, v) = row.map_err(|e| read(&e))?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }
}

fn fail_write(e: &dyn std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(e)).into()
}

impl RaftLogReader<TypeConfig> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        self.entries((range.start_bound().cloned(), range.end_bound().cloned()))
    }
}

impl RaftLogStorage<TypeConfig> for RaftLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId<NodeId>> = self.read_state(LAST_PURGED)?;
        let last = self.last_entry()?.map(|e| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.save_state(VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_state(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        self.save_state(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self
            .read_state::<Option<LogId<NodeId>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let encoded = entries
            .into_iter()
            .map(|e| Ok((e.get_log_id().index, encode(&e)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let result = self.write(|log, _| {
            for (index, bytes) in &encoded {
                log.insert(*index, bytes.as_slice())
                    .map_err(|e| fail_write(&e))?;
            }
            Ok(())
        });
        // The transaction is durable (fsynced) once written: tell openraft, success or not.
        callback.log_io_completed(
            result
                .as_ref()
                .map(|&()| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.write(|log, _| {
            log.retain_in(log_id.index.., |_, _| false)
                .map_err(|e| fail_write(&e))
        })
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let bytes = encode(&log_id)?;
        self.write(|log, state| {
            state
                .insert(LAST_PURGED, bytes.as_slice())
                .map_err(|e| fail_write(&e))?;
            log.retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| fail_write(&e))
        })
    }
}
