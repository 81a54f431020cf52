//! The engine's store on redb: the command log plus one table per engine table (the state
//! after the last logged command: a snapshot). Each entry and its batch are one write
//! transaction, committed with immediate durability (fsync) before the command is acknowledged.
//! The next issue hands the log to openraft; until then it keeps the last [`LOG_KEEP`] entries.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use sealgate_hsm_core::{Snapshot, Store, StoreBatch, StoreError, StoreOp, Table};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const META: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("meta");
const USERS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("users");
const KEYS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("keys");
const TOMBSTONES: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("tombstones");
const QUORUM: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("quorum");
const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("log");
/// The replicated state machine's own record (last applied raft log id, membership).
const MACHINE: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("raft_machine");

/// How many log entries a store keeps behind its snapshot.
pub const LOG_KEEP: u64 = 4096;

fn definition(table: Table) -> TableDefinition<'static, u64, &'static [u8]> {
    match table {
        Table::Meta => META,
        Table::Users => USERS,
        Table::Keys => KEYS,
        Table::Tombstones => TOMBSTONES,
        Table::Quorum => QUORUM,
    }
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// A redb database file holding the engine's records.
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating it if absent.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| {
            StoreError::Backend(format!("cannot open store {}: {e}", path.display()).into())
        })?;
        Ok(Self {
            db: Arc::new(db),
            path: path.to_owned(),
        })
    }

    /// The file behind this store.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for RedbStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.rows()
    }

    fn commit(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        write_batch(&tx, batch)?;
        // Durability::Immediate (redb's default): the commit returns once fsynced.
        tx.commit().map_err(backend)
    }

    fn commit_entry(
        &mut self,
        index: u64,
        command: &[u8],
        batch: &StoreBatch,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut log = tx.open_table(LOG).map_err(backend)?;
            log.insert(index, command).map_err(backend)?;
            if let Some(below) = index.checked_sub(LOG_KEEP) {
                log.retain_in(..=below, |_, _| false).map_err(backend)?;
            }
        }
        write_batch(&tx, batch)?;
        tx.commit().map_err(backend)
    }
}

impl RedbStore {
    /// The database, shared with the raft log.
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// Every engine row (as [`Store::load`] gives them), without needing `&mut`.
    pub fn rows(&self) -> Result<Snapshot, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let mut snapshot = Snapshot::default();
        for table in Table::ALL {
            let t = match tx.open_table(definition(table)) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(backend(e)),
            };
            for row in t.iter().map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                snapshot.rows.insert((table, k.value()), v.value().to_vec());
            }
        }
        Ok(snapshot)
    }

    /// Writes the engine's `batch` and the state machine's record in one durable transaction.
    pub fn commit_applied(&mut self, batch: &StoreBatch, machine: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        write_batch(&tx, batch)?;
        tx.open_table(MACHINE)
            .map_err(backend)?
            .insert(0, machine)
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    /// The state machine's record, if one was written.
    pub fn machine(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let t = match tx.open_table(MACHINE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        Ok(t.get(0).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    /// Replaces every engine row with `rows` and writes the state machine's record, in one
    /// durable transaction (installing a snapshot).
    pub fn replace_all(&mut self, rows: &Snapshot, machine: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        for table in Table::ALL {
            let mut t = tx.open_table(definition(table)).map_err(backend)?;
            t.retain(|_, _| false).map_err(backend)?;
            for ((_, key), value) in rows.rows.iter().filter(|((t, _), _)| *t == table) {
                t.insert(*key, value.as_slice()).map_err(backend)?;
            }
        }
        tx.open_table(MACHINE)
            .map_err(backend)?
            .insert(0, machine)
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }
}

fn write_batch(tx: &redb::WriteTransaction, batch: &StoreBatch) -> Result<(), StoreError> {
    for table in Table::ALL {
        let mut t = tx.open_table(definition(table)).map_err(backend)?;
        for op in &batch.ops {
            match op {
                StoreOp::Put {
                    table: ot,
                    key,
                    value,
                } if *ot == table => {
                    t.insert(*key, value.as_slice()).map_err(backend)?;
                }
                StoreOp::Delete { table: ot, key } if *ot == table => {
                    t.remove(*key).map_err(backend)?;
                }
                _ => {}
            }
        }
        debug_assert_eq!(t.name(), table.name());
    }
    Ok(())
}
