//! The node's metrics, under CloudHSM's names (`sealgate_monitoring::names`), every one labelled
//! with `cluster_id` and `hsm_id` (CloudWatch's `ClusterId` and `HsmId`).
//!
//! Gauges and the counters the node keeps anyway (signatures, busy answers, bytes) are set
//! from the node's state when a scrape comes ([`refresh`]); the per-operation latency
//! histograms are recorded as requests are answered ([`operation`]). Without an installed
//! recorder (`sealgate node` installs one when it has a metrics endpoint; tests and the
//! simulator do not) the calls do nothing.

use crate::server::Shared;
use metrics::{counter, gauge, histogram};
use openraft::ServerState;
use sealgate_monitoring::names as n;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The labels of every node metric.
fn labels(shared: &Shared) -> [(&'static str, String); 2] {
    [
        ("cluster_id", shared.hsm.cluster_id()),
        ("hsm_id", shared.config.id.to_string()),
    ]
}

/// Records one answered request: `exec` in the engine, `total` since it arrived.
pub(crate) fn operation(shared: &Shared, name: &'static str, exec: Duration, total: Duration) {
    let [cluster, hsm] = labels(shared);
    let labels = [cluster.clone(), hsm.clone(), ("operation", name.to_owned())];
    histogram!(n::HSM_OPERATION_EXEC_TIME.name, &labels).record(exec.as_secs_f64());
    histogram!(n::HSM_OPERATION_TOTAL_TIME.name, &labels).record(total.as_secs_f64());
}

/// Sets every gauge and kept counter from the node's state now.
pub(crate) fn refresh(shared: &Shared) {
    let labels = labels(shared);
    let set = |m: n::Metric, value: f64| gauge!(m.name, &labels).set(value);
    let total = |m: n::Metric, value: u64| counter!(m.name, &labels).absolute(value);

    let metrics = shared.hsm.raft().metrics().borrow().clone();
    let unhealthy =
        shared.hsm.serving().is_err() || !shared.hsm.writable() || metrics.current_leader.is_none();
    set(n::HSM_UNHEALTHY, if unhealthy { 1.0 } else { 0.0 });
    if let Some(stats) = shared.hsm.stats() {
        set(n::HSM_KEYS_TOKEN_OCCUPIED, stats.token_keys as f64);
        set(n::HSM_KEYS_SESSION_OCCUPIED, stats.session_keys as f64);
        set(n::HSM_SESSION_COUNT, stats.sessions as f64);
        set(n::HSM_USERS_MAX, stats.max_users as f64);
        set(
            n::HSM_USERS_AVAILABLE,
            stats.max_users.saturating_sub(stats.users) as f64,
        );
    }
    set(
        n::HSM_SSL_CTXS_OCCUPIED,
        shared.connections.load(Ordering::Relaxed) as f64,
    );
    set(n::HSM_QUEUE_DEPTH, shared.pool.queued() as f64);
    if let Some(celsius) = temperature() {
        set(n::HSM_TEMPERATURE, celsius);
    }
    total(
        n::INTERFACE_ETH2_OCTETS_INPUT,
        shared.octets.input.load(Ordering::Relaxed),
    );
    total(
        n::INTERFACE_ETH2_OCTETS_OUTPUT,
        shared.octets.output.load(Ordering::Relaxed),
    );
    total(n::HSM_SIGNATURES, shared.signs.load(Ordering::Relaxed));
    total(
        n::HSM_BUSY_REJECTIONS,
        shared.busy.load(Ordering::Relaxed) as u64,
    );

    let last_log = metrics.last_log_index.unwrap_or(0);
    let applied = metrics.last_applied.map_or(0, |l| l.index);
    let leader = metrics.state == ServerState::Leader;
    set(n::HSM_RAFT_TERM, metrics.current_term as f64);
    set(n::HSM_RAFT_LAST_LOG_INDEX, last_log as f64);
    set(n::HSM_RAFT_APPLIED_INDEX, applied as f64);
    set(n::HSM_RAFT_LEADER, if leader { 1.0 } else { 0.0 });
    let mut committed = applied;
    if let Some(replication) = metrics.replication.as_ref().filter(|_| leader) {
        // The index a majority holds: of the matched indexes (the leader's own log included),
        // sorted from the top, the one in the middle.
        let mut matched: Vec<u64> = replication
            .values()
            .map(|m| m.map_or(0, |l| l.index))
            .collect();
        if !replication.contains_key(&u64::from(shared.config.id)) {
            matched.push(last_log);
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&majority) = matched.get(matched.len() / 2) {
            committed = committed.max(majority);
        }
        for (follower, m) in replication {
            if *follower == u64::from(shared.config.id) {
                continue;
            }
            let behind = last_log.saturating_sub(m.map_or(0, |l| l.index));
            let mut with_follower = labels.to_vec();
            with_follower.push(("follower", follower.to_string()));
            gauge!(n::HSM_RAFT_REPLICATION_LAG.name, &with_follower).set(behind as f64);
        }
    }
    set(n::HSM_RAFT_COMMIT_INDEX, committed as f64);
}

/// The host's CPU temperature in °C, from the first thermal zone or hwmon sensor the kernel
/// exposes; none on hosts (like most virtual machines) that expose none.
fn temperature() -> Option<f64> {
    let read = |path: &str| -> Option<f64> {
        let milli: f64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        Some(milli / 1000.0)
    };
    read("/sys/class/thermal/thermal_zone0/temp")
        .or_else(|| read("/sys/class/hwmon/hwmon0/temp1_input"))
}
