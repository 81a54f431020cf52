//! Persistence contract: what the engine asks a store to write, and the in-memory store.
//!
//! The engine turns every applied [`Command`](crate::Command) into a [`StoreBatch`] of puts and
//! deletes of encoded records in three tables. A store writes a batch atomically and durably
//! before the driver acknowledges the command, and hands every row back on [`Store::load`].
//! Records hold key material and password hashes only sealed under the master key; the store
//! never sees them in clear and never sees the master key.

use std::collections::BTreeMap;
use std::fmt;

/// The tables of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Cluster-wide counters and settings (one row).
    Meta,
    /// Users by id.
    Users,
    /// Token key objects by handle.
    Keys,
    /// Unique ids of deleted keys, so a masked copy cannot bring a deleted key back.
    Tombstones,
    /// Quorum values, users' registered keys and MFA, keys' quorum values.
    Quorum,
}

impl Table {
    /// Every table.
    pub const ALL: [Self; 5] = [
        Self::Meta,
        Self::Users,
        Self::Keys,
        Self::Tombstones,
        Self::Quorum,
    ];

    /// The table's name in stores that name tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Users => "users",
            Self::Keys => "keys",
            Self::Tombstones => "tombstones",
            Self::Quorum => "quorum",
        }
    }
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace a row.
    Put {
        /// Table.
        table: Table,
        /// Row key.
        key: u64,
        /// Encoded record.
        value: Vec<u8>,
    },
    /// Remove a row (absent rows are fine).
    Delete {
        /// Table.
        table: Table,
        /// Row key.
        key: u64,
    },
}

/// Writes that must land together, atomically and durably.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreBatch {
    /// The writes, in order.
    pub ops: Vec<StoreOp>,
}

/// Every row of a store, as read back on start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Rows by table and key.
    pub rows: BTreeMap<(Table, u64), Vec<u8>>,
}

impl Snapshot {
    /// Whether the store holds nothing (a new node).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Applies a batch to this in-memory image.
    pub fn apply(&mut self, batch: &StoreBatch) {
        for op in &batch.ops {
            match op {
                StoreOp::Put { table, key, value } => {
                    self.rows.insert((*table, *key), value.clone());
                }
                StoreOp::Delete { table, key } => {
                    self.rows.remove(&(*table, *key));
                }
            }
        }
    }
}

/// Why a store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage backend failed (I/O, database error).
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A row could not be decoded.
    #[error("store is damaged: {table} row {key}: {reason}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Row key.
        key: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The store was written under a different master key.
    #[error(
        "the master key does not match this store (fingerprint {expected} expected, {found} given)"
    )]
    MasterKeyMismatch {
        /// Fingerprint recorded in the store.
        expected: Fingerprint,
        /// Fingerprint of the key given.
        found: Fingerprint,
    },
    /// The store's format is newer or older than this build understands.
    #[error("store format version {found} is not supported (this build reads version {supported})")]
    UnsupportedFormat {
        /// Version in the store.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// An earlier write failed; the store refuses further writes until reopened.
    #[error("an earlier write failed; restart to reload the store")]
    Poisoned,
}

/// A master-key fingerprint, printed in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 8]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Durable storage for the engine's records.
pub trait Store {
    /// Reads every row.
    fn load(&mut self) -> Result<Snapshot, StoreError>;

    /// Writes `batch` atomically; returns only once it is durable.
    fn commit(&mut self, batch: &StoreBatch) -> Result<(), StoreError>;

    /// Writes log entry `index` (the encoded [`Command`](crate::Command)) together with the
    /// `batch` it produced, atomically and durably: the store is then the command log plus the
    /// state after applying it (the snapshot at `index`). Stores without a log keep only the
    /// state.
    fn commit_entry(
        &mut self,
        index: u64,
        command: &[u8],
        batch: &StoreBatch,
    ) -> Result<(), StoreError> {
        let _ = (index, command);
        self.commit(batch)
    }
}

/// A store in memory: for tests, simulations and throwaway nodes.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    image: Snapshot,
    fail_next: bool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every row, for inspection in tests.
    pub fn rows(&self) -> &BTreeMap<(Table, u64), Vec<u8>> {
        &self.image.rows
    }

    /// Makes the next commit fail (to test that failures lose nothing).
    pub fn fail_next_commit(&mut self) {
        self.fail_next = true;
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(self.image.clone())
    }

    fn commit(&mut self, batch: &StoreBatch) -> Result<(), StoreError> {
        if std::mem::take(&mut self.fail_next) {
            return Err(StoreError::Backend("injected failure".into()));
        }
        self.image.apply(batch);
        Ok(())
    }
}
