//! A node joining a running cluster (`[cluster] join = true`, written by
//! `sealgate cluster add-node`) has no domain key on its first start: it asks the members for
//! it over the cluster's mutual TLS, with its node certificate. A member answers only a node
//! whose certificate chains to the cluster CA and names a node that is in the cluster's
//! membership, which only a crypto officer can change (`AddNode`). The key is then kept in
//! the node's `master.key` (mode 0600) like any node's.

use crate::raft::PeerNetwork;
use crate::server::NodeError;
use openraft::BasicNode;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};
use zeroize::Zeroizing;

/// How long a joining node keeps asking for the domain key before it gives up.
pub(crate) const JOIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause between rounds of asking every member.
const RETRY: Duration = Duration::from_secs(1);
/// How long one member has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the wait is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Asks the `members` (other than `node_id`) for the domain key, round after round, until one
/// gives it or `timeout` passes.
pub(crate) async fn fetch_domain_key(
    node_id: u32,
    members: &[(u32, String)],
    network: &PeerNetwork,
    timeout: Duration,
) -> Result<Zeroizing<[u8; 32]>, NodeError> {
    let deadline = Instant::now() + timeout;
    let mut logged: Option<Instant> = None;
    loop {
        let mut errors = Vec::new();
        for (id, address) in members.iter().filter(|(id, _)| *id != node_id) {
            let node = BasicNode::new(address);
            match network.domain_key(u64::from(*id), &node, ASK_TIMEOUT).await {
                Ok(key) => {
                    info!(from = id, "received the cluster's domain key");
                    return Ok(key);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let why = if errors.is_empty() {
            "the configuration lists no other member".to_owned()
        } else {
            errors.join("; ")
        };
        if Instant::now() >= deadline || errors.is_empty() {
            return Err(NodeError::Join(format!(
                "no member gave node {node_id} the cluster's domain key within {timeout:?}: \
                 {why}; add the node with `sealgate cluster add-node` and check that the \
                 members are running"
            )));
        }
        if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            warn!("waiting for the cluster to admit node {node_id}: {why}");
            logged = Some(Instant::now());
        }
        tokio::time::sleep(RETRY).await;
    }
}
