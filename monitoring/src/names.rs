//! Every metric sealgate exports: its CloudWatch name (the EMF writer uses it as it is), its
//! Prometheus name, kind, unit and help text.
//!
//! The Prometheus name is `sealgate_` followed by the snake_case of the CloudWatch name (DESIGN.md
//! §5), then Prometheus's suffixes: `_seconds` for a duration and `_total` for a counter
//! (`RequestCount` → `sealgate_request_count_total`, `TargetResponseTime` →
//! `sealgate_target_response_time_seconds`), so `promtool check metrics` finds nothing to lint.
//! Dimensions are labels: `cluster_id` and `hsm_id` for the HSM's metrics (CloudWatch's
//! `ClusterId`, `HsmId`), `pool` for a target group's, `operation` for an HSM request's.
//! A test checks the rule for every entry of [`ALL`].

/// How a metric behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (until the process restarts).
    Counter,
    /// A value now.
    Gauge,
    /// A distribution of observations (durations in seconds).
    Histogram,
}

/// The CloudWatch unit (EMF's `Unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain count.
    Count,
    /// Bytes.
    Bytes,
    /// Seconds.
    Seconds,
    /// No unit (a state, an index).
    None,
}

impl Unit {
    /// The name EMF and CloudWatch use.
    pub fn cloudwatch(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Bytes => "Bytes",
            Self::Seconds => "Seconds",
            Self::None => "None",
        }
    }
}

/// One metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// CloudWatch's name (`RequestCount`), or sealgate's own in the same style.
    pub cloudwatch: &'static str,
    /// The Prometheus name (`sealgate_request_count_total`).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The unit.
    pub unit: Unit,
    /// What it measures (the Prometheus HELP text).
    pub help: &'static str,
}

macro_rules! metrics_table {
    ($( $(#[$doc:meta])* $id:ident = $cw:literal, $name:literal, $kind:ident, $unit:ident, $help:literal; )*) => {
        $( $(#[$doc])* pub const $id: Metric = Metric {
            cloudwatch: $cw,
            name: $name,
            kind: Kind::$kind,
            unit: Unit::$unit,
            help: $help,
        }; )*
        /// Every metric, in the order of this file.
        pub const ALL: &[Metric] = &[$($id),*];
    };
}

metrics_table! {
    // --- the HSM nodes (labels: cluster_id, hsm_id) ---------------------------------------
    /// CloudHSM's `HsmUnhealthy`.
    HSM_UNHEALTHY = "HsmUnhealthy", "sealgate_hsm_unhealthy", Gauge, Count,
        "1 when the HSM node cannot serve requests (joining, removed, store failed, no leader known), else 0";
    /// CloudHSM's `HsmTemperature` (only where the host exposes a temperature).
    HSM_TEMPERATURE = "HsmTemperature", "sealgate_hsm_temperature", Gauge, None,
        "the host's CPU temperature in degrees Celsius, where the host exposes one";
    /// CloudHSM's `HsmKeysSessionOccupied`.
    HSM_KEYS_SESSION_OCCUPIED = "HsmKeysSessionOccupied", "sealgate_hsm_keys_session_occupied", Gauge, Count,
        "session (non-token) keys held by the node";
    /// CloudHSM's `HsmKeysTokenOccupied`.
    HSM_KEYS_TOKEN_OCCUPIED = "HsmKeysTokenOccupied", "sealgate_hsm_keys_token_occupied", Gauge, Count,
        "token keys held by the node (replicated: the same on every node)";
    /// CloudHSM's `HsmSslCtxsOccupied`.
    HSM_SSL_CTXS_OCCUPIED = "HsmSslCtxsOccupied", "sealgate_hsm_ssl_ctxs_occupied", Gauge, Count,
        "end-to-end encrypted channels open: mutual-TLS client connections to the node";
    /// CloudHSM's `HsmSessionCount`.
    HSM_SESSION_COUNT = "HsmSessionCount", "sealgate_hsm_sessions", Gauge, Count,
        "open sessions on the node";
    /// CloudHSM's `HsmUsersAvailable`.
    HSM_USERS_AVAILABLE = "HsmUsersAvailable", "sealgate_hsm_users_available", Gauge, Count,
        "users that can still be created (HsmUsersMax minus the users that exist)";
    /// CloudHSM's `HsmUsersMax`.
    HSM_USERS_MAX = "HsmUsersMax", "sealgate_hsm_users_max", Gauge, Count,
        "the most users the HSM can hold";
    /// CloudHSM's `InterfaceEth2OctetsInput`.
    INTERFACE_ETH2_OCTETS_INPUT = "InterfaceEth2OctetsInput", "sealgate_interface_eth2_octets_input_total", Counter, Bytes,
        "bytes received on the node's connections (TCP payload: TLS records)";
    /// CloudHSM's `InterfaceEth2OctetsOutput`.
    INTERFACE_ETH2_OCTETS_OUTPUT = "InterfaceEth2OctetsOutput", "sealgate_interface_eth2_octets_output_total", Counter, Bytes,
        "bytes sent on the node's connections (TCP payload: TLS records)";
    /// Beyond CloudWatch: time running an operation (labels + operation).
    HSM_OPERATION_EXEC_TIME = "HsmOperationExecTime", "sealgate_hsm_operation_exec_time_seconds", Histogram, Seconds,
        "time the node spent executing a request, by operation";
    /// Beyond CloudWatch: time from a request's arrival to its answer, queueing included.
    HSM_OPERATION_TOTAL_TIME = "HsmOperationTotalTime", "sealgate_hsm_operation_total_time_seconds", Histogram, Seconds,
        "time from a request's arrival at the node to its answer being queued for sending, by operation";
    /// Beyond CloudWatch: requests queued or running on the crypto pool.
    HSM_QUEUE_DEPTH = "HsmQueueDepth", "sealgate_hsm_queue_depth", Gauge, Count,
        "requests queued or running on the node's crypto threads";
    /// Beyond CloudWatch: requests refused because the queue was full.
    HSM_BUSY_REJECTIONS = "HsmBusyRejections", "sealgate_hsm_busy_rejections_total", Counter, Count,
        "requests the node refused as busy (its queue was full)";
    /// Beyond CloudWatch: signatures made.
    HSM_SIGNATURES = "HsmSignatures", "sealgate_hsm_signatures_total", Counter, Count,
        "signatures the node made";
    /// Beyond CloudWatch: the raft term.
    HSM_RAFT_TERM = "HsmRaftTerm", "sealgate_hsm_raft_term", Gauge, None,
        "the node's raft term";
    /// Beyond CloudWatch: the last log index this node knows to be committed.
    HSM_RAFT_COMMIT_INDEX = "HsmRaftCommitIndex", "sealgate_hsm_raft_commit_index", Gauge, None,
        "the last committed log index the node knows: on the leader the highest index a majority holds, on the others their applied index (only committed entries are applied)";
    /// Beyond CloudWatch: the last index in the node's log.
    HSM_RAFT_LAST_LOG_INDEX = "HsmRaftLastLogIndex", "sealgate_hsm_raft_last_log_index", Gauge, None,
        "the last index in the node's log (committed or not)";
    /// Beyond CloudWatch: the last log index applied to the node's state.
    HSM_RAFT_APPLIED_INDEX = "HsmRaftAppliedIndex", "sealgate_hsm_raft_applied_index", Gauge, None,
        "the last log index applied to the node's state";
    /// Beyond CloudWatch: how far each follower is behind (on the leader; label: follower).
    HSM_RAFT_REPLICATION_LAG = "HsmRaftReplicationLag", "sealgate_hsm_raft_replication_lag", Gauge, Count,
        "log entries a follower is behind the leader's log (reported by the leader, label follower)";
    /// Beyond CloudWatch: 1 on the leader.
    HSM_RAFT_LEADER = "HsmRaftLeader", "sealgate_hsm_raft_leader", Gauge, None,
        "1 on the raft leader, else 0";

    // --- the client SDK in the proxy (labels: hsm_id) ---------------------------------------
    /// Beyond CloudWatch: requests sent again after a failure.
    HSM_CLIENT_RETRIES = "HsmClientRetries", "sealgate_hsm_client_retries_total", Counter, Count,
        "HSM requests the client SDK sent again after a failure or a busy answer, by the node that failed";
    /// Beyond CloudWatch: a node marked down.
    HSM_CLIENT_FAILOVERS = "HsmClientFailovers", "sealgate_hsm_client_failovers_total", Counter, Count,
        "times the client SDK marked a node down and moved its requests to the others";
    /// Beyond CloudWatch: time to get a handshake's signature from the HSM.
    HANDSHAKE_SIGN_TIME = "HandshakeSignTime", "sealgate_handshake_sign_time_seconds", Histogram, Seconds,
        "time the proxy waited for the HSM to sign a TLS handshake";

    // --- the proxy: the load balancer's names (labels: pool for target groups) ------------
    /// ELB's `RequestCount`.
    REQUEST_COUNT = "RequestCount", "sealgate_request_count_total", Counter, Count,
        "HTTP requests received from clients";
    /// ELB's `NewConnectionCount`.
    NEW_CONNECTION_COUNT = "NewConnectionCount", "sealgate_new_connection_count_total", Counter, Count,
        "TCP connections accepted from clients";
    /// ELB's `ActiveConnectionCount`.
    ACTIVE_CONNECTION_COUNT = "ActiveConnectionCount", "sealgate_active_connections", Gauge, Count,
        "client connections open now";
    /// ELB's `ClientTLSNegotiationErrorCount`.
    CLIENT_TLS_NEGOTIATION_ERROR_COUNT = "ClientTLSNegotiationErrorCount", "sealgate_client_tls_negotiation_error_count_total", Counter, Count,
        "client connections whose TLS handshake failed or timed out";
    /// ELB's `ProcessedBytes`.
    PROCESSED_BYTES = "ProcessedBytes", "sealgate_processed_bytes_total", Counter, Bytes,
        "bytes received from and sent to clients (TCP payload: TLS records)";
    /// Beyond CloudWatch: full handshakes and resumed ones.
    TLS_HANDSHAKES = "TlsHandshakes", "sealgate_tls_handshakes_total", Counter, Count,
        "TLS handshakes completed with clients, by kind (full: signed by the HSM, resumed)";
    /// ELB's `TargetResponseTime`.
    TARGET_RESPONSE_TIME = "TargetResponseTime", "sealgate_target_response_time_seconds", Histogram, Seconds,
        "time from sending a request to an upstream server to receiving its response head, by pool";
    /// ELB's `HTTPCode_Target_2XX_Count`.
    HTTP_CODE_TARGET_2XX_COUNT = "HTTPCode_Target_2XX_Count", "sealgate_http_code_target_2xx_count_total", Counter, Count,
        "2xx responses from upstream servers, by pool";
    /// ELB's `HTTPCode_Target_3XX_Count`.
    HTTP_CODE_TARGET_3XX_COUNT = "HTTPCode_Target_3XX_Count", "sealgate_http_code_target_3xx_count_total", Counter, Count,
        "3xx responses from upstream servers, by pool";
    /// ELB's `HTTPCode_Target_4XX_Count`.
    HTTP_CODE_TARGET_4XX_COUNT = "HTTPCode_Target_4XX_Count", "sealgate_http_code_target_4xx_count_total", Counter, Count,
        "4xx responses from upstream servers, by pool";
    /// ELB's `HTTPCode_Target_5XX_Count`.
    HTTP_CODE_TARGET_5XX_COUNT = "HTTPCode_Target_5XX_Count", "sealgate_http_code_target_5xx_count_total", Counter, Count,
        "5xx responses from upstream servers, by pool";
    /// ELB's `HTTPCode_ELB_4XX_Count`.
    HTTP_CODE_ELB_4XX_COUNT = "HTTPCode_ELB_4XX_Count", "sealgate_http_code_elb_4xx_count_total", Counter, Count,
        "4xx responses the proxy made itself (no route, headers too many)";
    /// ELB's `HTTPCode_ELB_5XX_Count`.
    HTTP_CODE_ELB_5XX_COUNT = "HTTPCode_ELB_5XX_Count", "sealgate_http_code_elb_5xx_count_total", Counter, Count,
        "5xx responses the proxy made itself (502 upstream unreachable, 504 upstream timeout)";
    /// ELB's `HealthyHostCount`.
    HEALTHY_HOST_COUNT = "HealthyHostCount", "sealgate_healthy_hosts", Gauge, Count,
        "upstream servers considered healthy, by pool";
    /// ELB's `UnHealthyHostCount`.
    UN_HEALTHY_HOST_COUNT = "UnHealthyHostCount", "sealgate_un_healthy_hosts", Gauge, Count,
        "upstream servers considered unhealthy (failed health checks or ejected), by pool";
    /// ELB's `TargetConnectionErrorCount`.
    TARGET_CONNECTION_ERROR_COUNT = "TargetConnectionErrorCount", "sealgate_target_connection_error_count_total", Counter, Count,
        "connections to upstream servers that could not be made, by pool";
}

/// `HsmKeysTokenOccupied` → `hsm_keys_token_occupied`, `ClientTLSNegotiationErrorCount` →
/// `client_tls_negotiation_error_count`, `HTTPCode_ELB_4XX_Count` → `http_code_elb_4xx_count`:
/// a word starts at an upper-case letter after a lower-case one, or at an upper-case letter
/// followed by a lower-case one after a digit or a capital (the end of an acronym); all
/// lower-cased.
pub fn snake_case(cloudwatch: &str) -> String {
    let chars: Vec<char> = cloudwatch.chars().collect();
    let mut out = String::with_capacity(cloudwatch.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
        let next = chars.get(i + 1).copied();
        if c.is_ascii_uppercase() {
            let starts_word = next.is_some_and(|n| n.is_ascii_lowercase());
            let after_lower = prev.is_some_and(|p| p.is_ascii_lowercase());
            let after_digit_or_acronym =
                prev.is_some_and(|p| p.is_ascii_digit() || p.is_ascii_uppercase());
            if after_lower || (after_digit_or_acronym && starts_word) {
                out.push('_');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The Prometheus name the rule gives `metric` (see the module's documentation).
pub fn prometheus_name(cloudwatch: &str, kind: Kind, unit: Unit) -> String {
    let mut name = format!("sealgate_{}", snake_case(cloudwatch));
    if kind == Kind::Gauge
        && let Some(counted) = name.strip_suffix("_count")
    {
        name = format!("{counted}s");
    }
    if unit == Unit::Seconds {
        name.push_str("_seconds");
    }
    if kind == Kind::Counter {
        name.push_str("_total");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_follows_the_rule() {
        for m in ALL {
            assert_eq!(
                m.name,
                prometheus_name(m.cloudwatch, m.kind, m.unit),
                "{m:?}"
            );
        }
        assert_eq!(
            snake_case("ClientTLSNegotiationErrorCount"),
            "client_tls_negotiation_error_count"
        );
        assert_eq!(
            snake_case("HTTPCode_ELB_4XX_Count"),
            "http_code_elb_4xx_count"
        );
        assert_eq!(
            snake_case("InterfaceEth2OctetsInput"),
            "interface_eth2_octets_input"
        );
        assert_eq!(snake_case("UnHealthyHostCount"), "un_healthy_host_count");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
