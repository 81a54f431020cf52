//! Replication of the engine's command log with openraft: the type configuration, the log
//! store on redb, and the engine as openraft's state machine.
//!
//! Each log entry is one engine [`Command`](sealgate_hsm_core::Command), encoded, with the node
//! and session that prepared it (so that the preparing node can finish a login on the right
//! session). Every node applies every entry in log order with `Engine::apply`; commands carry
//! secrets only sealed under the cluster's domain key, so neither the log nor a snapshot holds
//! key material in clear.
//!
//! Nodes talk over the cluster's mutual TLS (`network`); followers forward writes and
//! membership changes to the leader; nodes are added as learners that start from a snapshot
//! and are promoted to voters once caught up (`membership`).

// openraft's storage traits return its `StorageError` (over 200 bytes); the helpers here do
// the same, as openraft's own examples do.
#![allow(clippy::result_large_err)]

mod log_store;
mod membership;
mod network;
mod state_machine;

pub use log_store::RaftLogStore;
pub use membership::{
    MembershipChange, Removal, change as change_membership, members, promote_learners, removed,
    watch_removal,
};
pub use network::{LinkError, PeerLink, PeerNetwork, serve};
pub use state_machine::{EngineStateMachine, Replica};

use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// One replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEntry {
    /// The node that prepared the command.
    pub origin_node: u64,
    /// Which run (process start) of that node prepared it: session numbers restart with each
    /// run, so a session is named by run and number ([`Replica::run_id`]).
    pub origin_run: u64,
    /// The session on that node on whose behalf it runs (0 for none).
    pub origin_session: u64,
    /// The encoded command (`Command::encode`).
    pub command: Vec<u8>,
}

/// What applying an entry gave: the engine's outcome, or its refusal as a protocol error.
pub type ApplyResult = Result<sealgate_hsm_core::Outcome, sealgate_hsm_proto::Error>;

/// The answer to one entry (blank and membership entries answer `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterResponse(pub Option<ApplyResult>);

openraft::declare_raft_types!(
    /// sealgate's raft types: node ids are the cluster's node ids, nodes are addresses.
    pub TypeConfig:
        D = ClusterEntry,
        R = ClusterResponse,
);

/// A node id in the raft group (the cluster's node id).
pub type NodeId = u64;
/// A raft instance of this configuration.
pub type Raft = openraft::Raft<TypeConfig>;

/// openraft's error for this configuration.
pub type StorageError = openraft::StorageError<NodeId>;

fn io_error<E: std::error::Error + 'static>(e: &E) -> openraft::AnyError {
    openraft::AnyError::new(e)
}
