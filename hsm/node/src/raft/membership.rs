//! Changes to the cluster's membership: adding a node (as a learner, which then receives the
//! cluster's state as a snapshot), removing one, and promoting learners that have caught up
//! to voters. Every change runs on the leader; another node forwards it there.
//!
//! A new node must start from a snapshot, never from the first log entry: a cluster created by
//! `sealgate cluster init` begins with its engine already initialized in every node's store,
//! before the raft log's first entry. So before a learner is added, the leader builds a
//! snapshot and purges its log up to it, and openraft sends the learner that snapshot (the
//! engine's rows, secrets sealed under the domain key) followed by the entries after it.

use super::{NodeId, PeerNetwork, Raft};
use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use sealgate_hsm_proto::{self as proto, ErrorKind, Member};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Largest cluster.
const MAX_MEMBERS: usize = crate::config::MAX_NODES as usize;

/// How long the leader waits for the snapshot and the purge before adding a node.
const COMPACT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a node waits for the leader to take a membership change.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the leader looks for learners to promote.
const PROMOTE_INTERVAL: Duration = Duration::from_millis(500);

/// A learner is promoted once it has replicated up to this many entries behind the leader.
const PROMOTE_LAG: u64 = 16;

/// A membership change, as a node forwards it to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add node `id` at `address` as a learner.
    Add {
        /// The node's id.
        id: u32,
        /// `host:port`.
        address: String,
    },
    /// Remove node `id` (voter or learner).
    Remove {
        /// The node's id.
        id: u32,
    },
}

fn error(kind: ErrorKind, message: impl Into<String>) -> proto::Error {
    proto::Error::new(kind, message)
}

/// The membership in `metrics`, as the protocol reports it, and the log index it comes from.
pub fn members(metrics: &RaftMetrics<NodeId, BasicNode>) -> (Vec<Member>, u64) {
    let stored = &metrics.membership_config;
    let membership = stored.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .filter_map(|(id, node)| {
            Some(Member {
                id: u32::try_from(*id).ok()?,
                address: node.addr.clone(),
                voter: voters.contains(id),
            })
        })
        .collect();
    (members, stored.log_id().map_or(0, |id| id.index))
}

/// Whether `metrics` shows a membership that leaves this node out (it was removed).
pub fn removed(metrics: &RaftMetrics<NodeId, BasicNode>) -> bool {
    let membership = metrics.membership_config.membership();
    membership.nodes().next().is_some() && membership.get_node(&metrics.id).is_none()
}

/// What a node learns when it finds it was removed: the membership without it, and its log
/// index (reported in its health answers, so clients move to the members).
pub type Removal = std::sync::Arc<std::sync::Mutex<Option<(Vec<Member>, u64)>>>;

/// How often a node without a leader asks its peers whether it is still a member.
const REMOVAL_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Watches for this node's removal from the cluster, which it may never see in its own log:
/// the leader stops replicating to a node as soon as the membership without it is proposed.
/// A removed node then hears from no leader; so while this node has no leader, it asks its
/// peers for the membership they know, and a newer membership without it means it was
/// removed (also when it was stopped at the time and started again later). It then sets
/// `removed` (the node refuses clients) and shuts its raft down, so it does not disturb the
/// cluster with elections. Runs until `shutdown` or the removal.
pub async fn watch_removal(
    raft: Raft,
    network: PeerNetwork,
    removal: Removal,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REMOVAL_CHECK_INTERVAL) => {}
        }
        let metrics = raft.metrics().borrow().clone();
        let own = metrics.id;
        let (own_members, own_index) = members(&metrics);
        let mut gone = removed(&metrics).then_some((own, own_members, own_index));
        if gone.is_none() && metrics.current_leader.is_none() {
            let peers: Vec<(NodeId, BasicNode)> = metrics
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != own)
                .map(|(id, node)| (*id, node.clone()))
                .collect();
            for (id, node) in peers {
                let Ok(health) = network.health(id, &node, REMOVAL_CHECK_INTERVAL).await else {
                    continue;
                };
                let without_me = !health.members.is_empty()
                    && !health.members.iter().any(|m| NodeId::from(m.id) == own);
                if health.membership_index > own_index && without_me {
                    gone = Some((id, health.members, health.membership_index));
                    break;
                }
            }
        }
        if let Some((by, members, index)) = gone {
            warn!(
                node = own,
                told_by = by,
                "this node was removed from the cluster: it stops replicating and refuses clients; \
                 stop it and delete its data directory"
            );
            if let Ok(mut slot) = removal.lock() {
                *slot = Some((members, index));
            }
            let _ = raft.shutdown().await;
            return;
        }
    }
}

/// Checks `host:port`.
fn check_address(address: &str) -> Result<(), proto::Error> {
    let bad = || {
        error(
            ErrorKind::InvalidInput,
            format!("node address {address:?} is not host:port"),
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}

/// Runs `change` on the leader: here if this node leads, else forwarded to the leader.
/// Answers the membership after the change.
pub async fn change(
    raft: &Raft,
    network: &PeerNetwork,
    change: MembershipChange,
) -> Result<Vec<Member>, proto::Error> {
    let metrics = raft.metrics().borrow().clone();
    match metrics.current_leader {
        Some(leader) if leader == metrics.id => apply(raft, change).await,
        Some(leader) => {
            let node = metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .cloned()
                .ok_or_else(|| error(ErrorKind::Unavailable, "the leader is not known yet"))?;
            network
                .change_membership(leader, &node, &change, FORWARD_TIMEOUT)
                .await
                .map_err(|e| {
                    error(
                        ErrorKind::Unavailable,
                        format!(
                            "the leader did not take the change, which may or may not be made: {e}"
                        ),
                    )
                })?
        }
        None => Err(error(
            ErrorKind::Unavailable,
            "no leader is elected now; retry shortly",
        )),
    }
}

/// Makes `change` on this node, which must lead.
pub(super) async fn apply(
    raft: &Raft,
    change: MembershipChange,
) -> Result<Vec<Member>, proto::Error> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        return Err(error(
            ErrorKind::Unavailable,
            format!("node {} does not lead the cluster now; retry", metrics.id),
        ));
    }
    let membership = metrics.membership_config.membership().clone();
    if membership.get_joint_config().len() > 1 {
        return Err(error(
            ErrorKind::Unavailable,
            "another membership change is in progress; retry shortly",
        ));
    }
    match change {
        MembershipChange::Add { id, address } => {
            check_address(&address)?;
            let node_id = NodeId::from(id);
            if membership.get_node(&node_id).is_some() {
                return Err(error(
                    ErrorKind::AlreadyExists,
                    format!("node {id} is already a member of the cluster"),
                ));
            }
            let count = membership.nodes().count();
            if count >= MAX_MEMBERS {
                return Err(error(
                    ErrorKind::LimitReached,
                    format!("the cluster has {count} nodes, the most it can have"),
                ));
            }
            compact(raft).await?;
            raft.add_learner(node_id, BasicNode::new(&address), false)
                .await
                .map_err(|e| error(ErrorKind::Unavailable, format!("cannot add node {id}: {e}")))?;
            info!(node = id, %address, "node added as a learner; it becomes a voter once caught up");
        }
        MembershipChange::Remove { id } => {
            let node_id = NodeId::from(id);
            if membership.get_node(&node_id).is_none() {
                return Err(error(
                    ErrorKind::NotFound,
                    format!("node {id} is not a member of the cluster"),
                ));
            }
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let removal = if voters.contains(&node_id) {
                if voters.len() == 1 {
                    return Err(error(
                        ErrorKind::InvalidInput,
                        format!("node {id} is the cluster's only voter and cannot be removed"),
                    ));
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
            };
            raft.change_membership(removal, false).await.map_err(|e| {
                error(
                    ErrorKind::Unavailable,
                    format!("cannot remove node {id}: {e}"),
                )
            })?;
            info!(node = id, "node removed from the cluster");
        }
    }
    Ok(members(&raft.metrics().borrow()).0)
}

/// Builds a snapshot of everything applied and purges the log up to it, so that a node added
/// next starts from the snapshot.
async fn compact(raft: &Raft) -> Result<(), proto::Error> {
    let timeout = |what: &str| {
        error(
            ErrorKind::Unavailable,
            format!("the leader could not {what} within {COMPACT_TIMEOUT:?}; retry"),
        )
    };
    let deadline = tokio::time::Instant::now() + COMPACT_TIMEOUT;
    let applied = raft.metrics().borrow().last_applied;
    let Some(applied) = applied else {
        return Ok(());
    };
    // A snapshot already being built may end before `applied`: ask again until one covers it.
    loop {
        let _ = raft.trigger().snapshot().await;
        let covered = raft
            .wait(Some(Duration::from_secs(2)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
                "a snapshot covers the applied log",
            )
            .await;
        if covered.is_ok() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(timeout("build a snapshot"));
        }
    }
    let _ = raft.trigger().purge_log(applied.index).await;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    raft.wait(Some(left))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= applied.index),
            "the log is purged up to the snapshot",
        )
        .await
        .map_err(|_| timeout("purge its log"))?;
    Ok(())
}

/// While this node leads: promotes every learner that has caught up to a voter. Runs until
/// `shutdown`.
pub async fn promote_learners(raft: Raft, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PROMOTE_INTERVAL) => {}
        }
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            continue;
        }
        let membership = metrics.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            continue;
        }
        let Some(replication) = &metrics.replication else {
            continue;
        };
        let last = metrics.last_log_index.unwrap_or(0);
        let ready: Vec<NodeId> = membership
            .learner_ids()
            .filter(|id| {
                replication
                    .get(id)
                    .and_then(|matched| matched.as_ref())
                    .is_some_and(|matched| matched.index + PROMOTE_LAG >= last)
            })
            .collect();
        for id in ready {
            match raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
            {
                Ok(_) => info!(node = id, "node caught up and is now a voter"),
                Err(e) => warn!(node = id, "could not promote the node to voter: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        for ok in ["127.0.0.1:2228", "hsm4.example.com:2225", "[::1]:2225"] {
            check_address(ok).unwrap();
        }
        for bad in [
            "",
            "host",
            ":2225",
            "host:0",
            "host:99999",
            "a b:1",
            "host:port",
        ] {
            let e = check_address(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
        }
    }
}
