//! The engine as openraft's state machine: applies committed entries with `Engine::apply` and
//! writes each batch of entries durably together with the last applied log id and membership;
//! snapshots are the engine's rows (sealed secrets and integrity tags as stored), checked on
//! install by the same code that checks a store on start.

use super::{ClusterEntry, ClusterResponse, NodeId, StorageError, TypeConfig, io_error};
use crate::audit::{AuditEntry, AuditLog};
use crate::convert;
use crate::store::RedbStore;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use sealgate_hsm_core::crypto::MasterKey;
use sealgate_hsm_core::{
    Command, CommandOp, Engine, EngineConfig, SessionId, Snapshot as Rows, StoreBatch, StoreError,
    Table,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// What the state machine records beside the engine's rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MachineRecord {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

/// A snapshot's data: every engine row.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    rows: Vec<(u8, u64, Vec<u8>)>,
}

/// One node's engine and store, as the state machine (and, through the lock, the node's
/// request handling) sees them.
pub struct Replica {
    node_id: NodeId,
    /// Drawn at random when the replica is opened: names this run of the node.
    run_id: u64,
    engine: Engine,
    store: RedbStore,
    machine: MachineRecord,
    /// Where changes prepared by other nodes (or by an earlier run of this one) are audited.
    audit: Option<Arc<AuditLog>>,
}

impl Replica {
    /// Audits, from now on, every change this replica applies for another node.
    pub(crate) fn attach_audit(&mut self, audit: Arc<AuditLog>) {
        self.audit = Some(audit);
    }

    /// Loads the engine and the state machine's record from `store`.
    pub fn open(
        node_id: NodeId,
        store: RedbStore,
        master: MasterKey,
        config: EngineConfig,
    ) -> Result<Self, StoreError> {
        let engine = Engine::restore(master, config, &store.rows()?)?;
        let machine = match store.machine()? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|_| StoreError::Corrupt {
                table: "raft_machine",
                key: 0,
                reason: "does not decode",
            })?,
            None => MachineRecord::default(),
        };
        let run_id = sealgate_hsm_core::crypto::random_bytes(8)
            .ok()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
            .ok_or(StoreError::Corrupt {
                table: "raft_machine",
                key: 0,
                reason: "no random run id (the random number generator failed)",
            })?;
        Ok(Self {
            node_id,
            run_id,
            engine,
            store,
            machine,
            audit: None,
        })
    }

    /// This run of the node (random, drawn at open). An entry finishes a login on this node's
    /// session only if this run prepared it: after a restart, session numbers start again and
    /// name other clients' sessions.
    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, for session changes and preparing commands.
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    fn record(&self) -> Result<Vec<u8>, StorageError> {
        postcard::to_stdvec(&self.machine)
            .map_err(|e| StorageIOError::write_state_machine(io_error(&e)).into())
    }
}

/// The last snapshot built or installed: its metadata and data.
type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

/// The state machine handle openraft drives; clones share the replica.
#[derive(Clone)]
pub struct EngineStateMachine {
    replica: Arc<RwLock<Replica>>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    built: Arc<AtomicU64>,
}

impl EngineStateMachine {
    /// A state machine over `replica`.
    pub fn new(replica: Arc<RwLock<Replica>>) -> Self {
        Self {
            replica,
            current: Arc::new(Mutex::new(None)),
            built: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The shared replica.
    pub fn replica(&self) -> &Arc<RwLock<Replica>> {
        &self.replica
    }
}

fn poisoned() -> StorageError {
    StorageIOError::read_state_machine(openraft::AnyError::error("the engine lock is poisoned"))
        .into()
}

fn store_failed(e: &StoreError) -> StorageError {
    StorageIOError::write_state_machine(openraft::AnyError::error(e)).into()
}

fn table_code(table: Table) -> u8 {
    Table::ALL
        .iter()
        .position(|t| *t == table)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(u8::MAX)
}

impl RaftSnapshotBuilder<TypeConfig> for EngineStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (rows, machine) = {
            let replica = self.replica.read().map_err(|_| poisoned())?;
            let rows = replica.store.rows().map_err(|e| {
                StorageError::from(StorageIOError::read_state_machine(
                    openraft::AnyError::error(&e),
                ))
            })?;
            (rows, replica.machine.clone())
        };
        let data = SnapshotData {
            rows: rows
                .rows
                .into_iter()
                .map(|((t, k), v)| (table_code(t), k, v))
                .collect(),
        };
        let bytes = postcard::to_stdvec(&data)
            .map_err(|e| StorageIOError::write_snapshot(None, io_error(&e)))?;
        let n = self.built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match machine.last_applied {
            Some(id) => format!("{}-{}-{n}", id.leader_id, id.index),
            None => format!("--{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: machine.last_applied,
            last_membership: machine.membership,
            snapshot_id,
        };
        if let Ok(mut current) = self.current.lock() {
            *current = Some((meta.clone(), bytes.clone()));
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for EngineStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let replica = self.replica.read().map_err(|_| poisoned())?;
        Ok((
            replica.machine.last_applied,
            replica.machine.membership.clone(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ClusterResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut replica = self.replica.write().map_err(|_| poisoned())?;
        let mut batch = StoreBatch::default();
        let mut responses = Vec::new();
        let mut audited = Vec::new();
        for entry in entries {
            replica.machine.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(ClusterResponse(None)),
                EntryPayload::Membership(m) => {
                    replica.machine.membership = StoredMembership::new(Some(entry.log_id), m);
                    responses.push(ClusterResponse(None));
                }
                EntryPayload::Normal(ClusterEntry {
                    origin_node,
                    origin_run,
                    origin_session,
                    command,
                }) => {
                    let result = match Command::decode(&command) {
                        Err(e) => Err(convert::error(&e)),
                        // A node that joined a cluster starts from a snapshot of the cluster's
                        // state; entries applied to an empty engine would silently diverge.
                        Ok(cmd)
                            if !replica.engine.is_initialized()
                                && !matches!(cmd.op, CommandOp::Initialize { .. }) =>
                        {
                            return Err(StorageIOError::write_state_machine(
                                openraft::AnyError::error(
                                    "this node has no cluster state: it must receive a snapshot \
                                     before log entries (was it added with `cluster add-node`?)",
                                ),
                            )
                            .into());
                        }
                        Ok(cmd) => {
                            let origin = (origin_node == replica.node_id
                                && origin_run == replica.run_id
                                && origin_session != 0)
                                .then_some(SessionId(origin_session));
                            // The engine numbers the commands it applied on its own: a node
                            // cloned from another's rows starts a new raft log whose indexes
                            // restart, while raft's own record (written with every batch)
                            // already guarantees that an entry is applied once.
                            let index = replica.engine.applied_index() + 1;
                            // The node that served the request audited it; the others record
                            // the change as they apply it (read first: a deleted user's name
                            // is gone after).
                            let described = origin
                                .is_none()
                                .then(|| replica.engine.audit_command(&cmd))
                                .flatten();
                            let applied = replica.engine.apply(index, &cmd, origin);
                            batch.ops.extend(applied.batch.ops);
                            if let Some(d) = described {
                                let mut entry = AuditEntry::new(d.opcode);
                                entry.actor = d.actor;
                                entry.user = d.user;
                                entry.key_handle = d.key_handle;
                                entry.origin_node = u32::try_from(origin_node).ok();
                                entry.response = match (&applied.result, &cmd.op) {
                                    (Ok(_), CommandOp::LoginAttempt { success: false, .. }) => {
                                        Err(sealgate_hsm_proto::ErrorKind::LoginFailed)
                                    }
                                    (Ok(_), _) => Ok(()),
                                    (Err(e), _) => Err(convert::error(e).kind),
                                };
                                if let Ok(outcome) = &applied.result {
                                    match outcome.handles() {
                                        [public, private] => {
                                            entry.public_key_handle = Some(*public);
                                            entry.key_handle = Some(*private);
                                        }
                                        [one] => entry.key_handle = Some(*one),
                                        _ => {}
                                    }
                                }
                                audited.push(entry);
                            }
                            applied.result.map_err(|e| convert::error(&e))
                        }
                    };
                    responses.push(ClusterResponse(Some(result)));
                }
            }
        }
        let record = replica.record()?;
        replica
            .store
            .commit_applied(&batch, &record)
            .map_err(|e| store_failed(&e))?;
        if let Some(audit) = &replica.audit {
            for entry in audited {
                if let Err(e) = audit.record(entry) {
                    tracing::error!("{e}");
                }
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let bad = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::error(e))
                .into()
        };
        let data: SnapshotData = postcard::from_bytes(&bytes).map_err(|e| bad(&e))?;
        let mut rows = Rows::default();
        for (code, key, value) in data.rows {
            let table = Table::ALL
                .get(usize::from(code))
                .copied()
                .ok_or_else(|| bad(&"unknown table"))?;
            rows.rows.insert((table, key), value);
        }
        let mut replica = self.replica.write().map_err(|_| poisoned())?;
        // Checks every row's integrity tag and the rows digest; nothing changes if they fail.
        replica.engine.reload(&rows).map_err(|e| bad(&e))?;
        replica.machine = MachineRecord {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let record = replica.record()?;
        replica
            .store
            .replace_all(&rows, &record)
            .map_err(|e| store_failed(&e))?;
        if let Some(audit) = &replica.audit {
            let mut entry = AuditEntry::new(sealgate_hsm_core::Opcode::CloneTarget);
            entry.detail = Some(format!(
                "received the cluster's state up to log index {} from node {}",
                meta.last_log_id.map_or(0, |id| id.index),
                meta.last_log_id.map_or(0, |id| id.leader_id.node_id),
            ));
            if let Err(e) = audit.record(entry) {
                tracing::error!("{e}");
            }
        }
        drop(replica);
        if let Ok(mut current) = self.current.lock() {
            *current = Some((meta.clone(), bytes));
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.current.lock().map_err(|_| poisoned())?;
        Ok(current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::RaftLogStore;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, RaftLogStore, EngineStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, RaftLogStore, EngineStateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(io_error(&e)))?;
            let store =
                RedbStore::open(&dir.path().join("store.redb")).map_err(|e| store_failed(&e))?;
            let log = RaftLogStore::new(store.database());
            let (master, _) = MasterKey::generate()
                .map_err(|e| StorageIOError::write(openraft::AnyError::error(e)))?;
            let replica = Replica::open(1, store, master, EngineConfig::default())
                .map_err(|e| store_failed(&e))?;
            Ok((
                dir,
                log,
                EngineStateMachine::new(Arc::new(RwLock::new(replica))),
            ))
        }
    }

    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(Builder)
    }

    use openraft::{CommittedLeaderId, EntryPayload as Payload};
    use sealgate_hsm_core::Timestamp;
    use sealgate_hsm_core::crypto::Password;

    fn replica(dir: &std::path::Path, node: u64, key: &[u8; 32]) -> EngineStateMachine {
        let store = RedbStore::open(&dir.join(format!("node-{node}.redb"))).unwrap();
        let master = MasterKey::from_bytes(key).unwrap();
        let replica = Replica::open(node, store, master, EngineConfig::default()).unwrap();
        EngineStateMachine::new(Arc::new(RwLock::new(replica)))
    }

    fn entry(index: u64, origin: u64, command: &Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: Payload::Normal(ClusterEntry {
                origin_node: origin,
                origin_run: 0,
                origin_session: 0,
                command: command.encode().unwrap(),
            }),
        }
    }

    fn users(sm: &EngineStateMachine) -> usize {
        sm.replica().read().unwrap().engine().stats().users
    }

    #[tokio::test]
    async fn replicas_apply_the_same_commands_and_a_snapshot_clones_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = MasterKey::generate().unwrap();
        let mut a = replica(dir.path(), 1, &key);
        let mut b = replica(dir.path(), 2, &key);
        // Node 1 prepares the initialization; both apply it from the log.
        let init = a
            .replica()
            .read()
            .unwrap()
            .engine()
            .initialize(&Password::from("one-time-preco-pw"), Timestamp(1))
            .unwrap();
        for sm in [&mut a, &mut b] {
            let answers = sm.apply(vec![entry(1, 1, &init)]).await.unwrap();
            assert!(matches!(answers[0].0, Some(Ok(_))), "{answers:?}");
        }
        assert_eq!(users(&a), users(&b));
        assert_eq!(users(&a), 2, "PRECO and the appliance user");
        // Applying the same entry again is refused by the engine, not applied twice.
        let again = a.apply(vec![entry(1, 1, &init)]).await.unwrap();
        assert!(matches!(again[0].0, Some(Err(_))));

        // A third node, cloned from a snapshot of node 1, keeps its open sessions.
        let snapshot = a.build_snapshot().await.unwrap();
        let mut c = replica(dir.path(), 3, &key);
        let session = c
            .replica()
            .write()
            .unwrap()
            .engine_mut()
            .open_session()
            .unwrap();
        c.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(users(&c), 2);
        assert!(
            c.replica()
                .read()
                .unwrap()
                .engine()
                .info(session)
                .unwrap()
                .initialized
        );
        let (applied, _) = c.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1));
        // And after a restart from its store.
        drop(c);
        let c = replica(dir.path(), 3, &key);
        assert_eq!(users(&c), 2);
    }

    #[tokio::test]
    async fn a_tampered_or_foreign_snapshot_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = MasterKey::generate().unwrap();
        let mut a = replica(dir.path(), 1, &key);
        let init = a
            .replica()
            .read()
            .unwrap()
            .engine()
            .initialize(&Password::from("one-time-preco-pw"), Timestamp(1))
            .unwrap();
        a.apply(vec![entry(1, 1, &init)]).await.unwrap();
        let snapshot = a.build_snapshot().await.unwrap();
        let mut bytes = snapshot.snapshot.into_inner();
        // Another cluster's node (another domain key) cannot install it.
        let (_, other_key) = MasterKey::generate().unwrap();
        let mut foreign = replica(dir.path(), 2, &other_key);
        let refused = foreign
            .install_snapshot(&snapshot.meta, Box::new(Cursor::new(bytes.clone())))
            .await;
        assert!(refused.is_err());
        assert_eq!(users(&foreign), 0);
        // One flipped byte in a row: refused by the row's integrity tag.
        let last = bytes.len() - 5;
        bytes[last] ^= 1;
        let mut b = replica(dir.path(), 3, &key);
        assert!(
            b.install_snapshot(&snapshot.meta, Box::new(Cursor::new(bytes)))
                .await
                .is_err()
        );
        assert_eq!(users(&b), 0);
    }
}
