//! The CloudWatch embedded metric format (EMF) writer: every flush interval, the process's
//! Prometheus exposition (its children's merged in, as `/metrics` serves it) is turned into EMF
//! JSON lines appended to a file, which the CloudWatch agent (or any log shipper feeding
//! CloudWatch Logs) tails; CloudWatch Logs then extracts the metrics.
//!
//! What is written, from the exposition:
//!
//! - **Names**: each Prometheus sample is mapped back to its metric of [`names::ALL`] and
//!   written under the CloudWatch name as it is (`sealgate_request_count_total` →
//!   `RequestCount`), with the unit of the table. Samples of any other name are skipped.
//! - **Gauges**: the value now.
//! - **Counters**: CloudWatch's counts are per period, so a counter is written as its increase
//!   since the previous flush. The first flush of a writer only records the baseline (it
//!   writes the gauges and no counter: the totals since the process started are not a count
//!   for one period). A series that first appears later counts from 0 (a counter appears at its
//!   first increment, a restarted node's at 0); a value below the previous one is a reset (a
//!   node restarted), and the increase is the new value. A series missing from one exposition
//!   (a node that did not answer in time) keeps its baseline until it comes back.
//! - **Histograms**: classic EMF takes plain numbers, not buckets, so a histogram is written as
//!   two counters, `<Name>Sum` (in its unit, seconds) and `<Name>Count` (a count), both as
//!   increases since the previous flush: CloudWatch's `Sum` of the first over `Sum` of the
//!   second is the mean over any period (`TargetResponseTimeSum / TargetResponseTimeCount`).
//!   Buckets are not written.
//! - **Dimensions**: each Prometheus label becomes a dimension: `pool` → `TargetGroup` (ELB's
//!   name), any other in PascalCase (`cluster_id` → `ClusterId`, `hsm_id` → `HsmId`,
//!   `operation` → `Operation`, `kind` → `Kind`, `follower` → `Follower`). An empty label value
//!   is no label (as in Prometheus). One line per distinct set of dimension values, holding
//!   every metric with that set under one dimension set; a line with no label has the empty
//!   dimension set `[[]]`. More than 100 metrics with the same set are split over several lines.
//!
//! [`validate_emf_line`] checks a line against the specification's rules (tests use it on what
//! the writer makes). This module makes no network call and does not talk to CloudWatch.

use crate::exporter::Exposition;
use crate::names::{ALL, Kind, Unit};
pub use sealgate_config::{
    EmfConfig, MAX_NAMESPACE_CHARS, NamespaceError, RawEmf, check_emf, check_namespace,
};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The most metrics one directive may declare (EMF).
pub const MAX_METRICS_PER_DIRECTIVE: usize = 100;
/// The most dimension names one dimension set may hold (EMF).
pub const MAX_DIMENSIONS_PER_SET: usize = 30;
/// The most values a metric's array may hold (EMF).
pub const MAX_VALUES_PER_METRIC: usize = 100;
/// The longest metric name, in characters (EMF).
pub const MAX_NAME_CHARS: usize = 1024;
/// The longest dimension value, in characters (EMF).
pub const MAX_DIMENSION_VALUE_CHARS: usize = 1024;
/// The units CloudWatch knows (EMF's `Unit`).
pub const CLOUDWATCH_UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// How often [`run`] warns at most about failed writes.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What a Prometheus sample name stands for.
#[derive(Debug)]
struct Target {
    /// The EMF metric name.
    name: String,
    /// The CloudWatch unit.
    unit: &'static str,
    /// Written as the increase since the previous flush (counters, histograms' sums and counts).
    cumulative: bool,
}

/// Every Prometheus sample name of [`ALL`] that is written, and as what.
fn targets() -> HashMap<String, Target> {
    let mut targets = HashMap::new();
    for m in ALL {
        match m.kind {
            Kind::Gauge | Kind::Counter => {
                targets.insert(
                    m.name.to_owned(),
                    Target {
                        name: m.cloudwatch.to_owned(),
                        unit: m.unit.cloudwatch(),
                        cumulative: m.kind == Kind::Counter,
                    },
                );
            }
            Kind::Histogram => {
                targets.insert(
                    format!("{}_sum", m.name),
                    Target {
                        name: format!("{}Sum", m.cloudwatch),
                        unit: m.unit.cloudwatch(),
                        cumulative: true,
                    },
                );
                targets.insert(
                    format!("{}_count", m.name),
                    Target {
                        name: format!("{}Count", m.cloudwatch),
                        unit: Unit::Count.cloudwatch(),
                        cumulative: true,
                    },
                );
            }
        }
    }
    targets
}

/// The CloudWatch dimension name of a Prometheus label: `pool` → `TargetGroup`, any other in
/// PascalCase (`hsm_id` → `HsmId`); `None` for a label that yields no name (`_`).
pub fn dimension_name(label: &str) -> Option<String> {
    if label == "pool" {
        return Some("TargetGroup".to_owned());
    }
    let mut name = String::with_capacity(label.len());
    for word in label.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.push(first.to_ascii_uppercase());
            name.extend(chars);
        }
    }
    (!name.is_empty()).then_some(name)
}

/// Dimension names and values, sorted by name.
type Dimensions = Vec<(String, String)>;

/// One sample of an exposition.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// Parses a sample line of the Prometheus text format (`name{label="value",...} value
/// [timestamp]`); `None` for a comment, a blank line or a line that does not parse.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = line.get(..name_end)?;
    let mut rest = line.get(name_end..)?;
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        loop {
            // A label name, or the end of the set.
            let (start, c) = chars.find(|&(_, c)| c != ',' && !c.is_ascii_whitespace())?;
            if c == '}' {
                rest = after.get(start + 1..)?;
                break;
            }
            let (eq, _) = chars.find(|&(_, c)| c == '=')?;
            let label = after.get(start..eq)?.trim();
            let (_, quote) = chars.find(|&(_, c)| !c.is_ascii_whitespace())?;
            if quote != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((label, value));
        }
    }
    let value = rest.split_ascii_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The dimensions of `labels`; `None` when they cannot be written (more than
/// [`MAX_DIMENSIONS_PER_SET`], a value over [`MAX_DIMENSION_VALUE_CHARS`], a label with no name).
fn dimensions(labels: Vec<(&str, String)>) -> Option<Dimensions> {
    let mut dims = Vec::with_capacity(labels.len());
    for (label, value) in labels {
        if value.is_empty() {
            continue;
        }
        if value.chars().count() > MAX_DIMENSION_VALUE_CHARS {
            return None;
        }
        dims.push((dimension_name(label)?, value));
    }
    dims.sort();
    dims.dedup_by(|a, b| a.0 == b.0);
    (dims.len() <= MAX_DIMENSIONS_PER_SET).then_some(dims)
}

/// A metric value for a line.
#[derive(Debug, Clone, PartialEq)]
struct Datum {
    name: String,
    unit: &'static str,
    value: f64,
}

/// A JSON number for `value`: an integer when it is one (counts read better), else a float.
fn number(value: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.fract() == 0.0 && value.abs() < EXACT {
        #[allow(clippy::cast_possible_truncation)]
        let int = value as i64;
        Value::from(int)
    } else {
        Value::from(value)
    }
}

/// The EMF lines of one dimension set: one per [`MAX_METRICS_PER_DIRECTIVE`] metrics.
fn lines_of(
    namespace: &str,
    timestamp_ms: u64,
    dims: &Dimensions,
    data: &[Datum],
    out: &mut Vec<String>,
) {
    let names: Vec<&str> = dims.iter().map(|(name, _)| name.as_str()).collect();
    for chunk in data.chunks(MAX_METRICS_PER_DIRECTIVE) {
        let mut root = Map::new();
        for (name, value) in dims {
            root.insert(name.clone(), Value::String(value.clone()));
        }
        let mut definitions = Vec::with_capacity(chunk.len());
        for datum in chunk {
            root.insert(datum.name.clone(), number(datum.value));
            definitions.push(json!({ "Name": datum.name, "Unit": datum.unit }));
        }
        root.insert(
            "_aws".to_owned(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": [names],
                    "Metrics": definitions,
                }],
            }),
        );
        if let Ok(line) = serde_json::to_string(&Value::Object(root)) {
            out.push(line);
        }
    }
}

/// A Prometheus series: its sample name and dimensions.
type SeriesKey = (String, Dimensions);

/// What one exposition yields: the lines, and the counters' values to remember once they are
/// written.
#[derive(Debug)]
struct Encoded {
    lines: Vec<String>,
    baseline: Vec<(SeriesKey, f64)>,
}

/// Turns Prometheus expositions into EMF lines, keeping each counter's previous value (see the
/// module's documentation). No I/O: [`EmfWriter`] writes what it makes.
#[derive(Debug)]
pub struct EmfEncoder {
    namespace: String,
    targets: HashMap<String, Target>,
    previous: HashMap<SeriesKey, f64>,
    /// Whether a baseline was recorded (after the first exposition).
    primed: bool,
}

impl EmfEncoder {
    /// An encoder for metrics in `namespace` (checked by the caller with [`check_namespace`]).
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            targets: targets(),
            previous: HashMap::new(),
            primed: false,
        }
    }

    /// The EMF lines of `exposition` at `timestamp_ms` (milliseconds since the Unix epoch);
    /// the counters' values are remembered as the next baseline.
    pub fn encode(&mut self, exposition: &str, timestamp_ms: u64) -> Vec<String> {
        let encoded = self.prepare(exposition, timestamp_ms);
        self.commit(encoded.baseline);
        encoded.lines
    }

    /// The lines of `exposition`, the baseline left as it is.
    fn prepare(&self, exposition: &str, timestamp_ms: u64) -> Encoded {
        let mut groups: BTreeMap<Dimensions, Vec<Datum>> = BTreeMap::new();
        let mut seen: HashSet<SeriesKey> = HashSet::new();
        let mut baseline = Vec::new();
        for line in exposition.lines() {
            let Some(sample) = parse_sample(line) else {
                continue;
            };
            let Some(target) = self.targets.get(sample.name) else {
                continue;
            };
            if !sample.value.is_finite() {
                continue;
            }
            let Some(dims) = dimensions(sample.labels) else {
                continue;
            };
            if dims.iter().any(|(name, _)| *name == target.name) {
                continue;
            }
            let key: SeriesKey = (sample.name.to_owned(), dims);
            if !seen.insert(key.clone()) {
                // The same series twice (two processes without telling labels): the first wins.
                continue;
            }
            let value = if target.cumulative {
                let previous = self.previous.get(&key).copied();
                baseline.push((key.clone(), sample.value));
                if !self.primed {
                    continue;
                }
                match previous {
                    Some(p) if sample.value >= p => sample.value - p,
                    _ => sample.value,
                }
            } else {
                sample.value
            };
            groups.entry(key.1).or_default().push(Datum {
                name: target.name.clone(),
                unit: target.unit,
                value,
            });
        }
        let mut lines = Vec::new();
        for (dims, data) in &groups {
            lines_of(&self.namespace, timestamp_ms, dims, data, &mut lines);
        }
        Encoded { lines, baseline }
    }

    /// Remembers the counters' values written.
    fn commit(&mut self, baseline: Vec<(SeriesKey, f64)>) {
        self.previous.extend(baseline);
        self.primed = true;
    }
}

/// Appends the EMF lines of each exposition it is given to a file.
#[derive(Debug)]
pub struct EmfWriter {
    path: PathBuf,
    encoder: EmfEncoder,
}

impl EmfWriter {
    /// A writer appending to `path` metrics in `namespace`. The file is opened at each
    /// [`write`](Self::write), so a log rotation that moves it away is followed.
    pub fn new(path: PathBuf, namespace: &str) -> Self {
        Self {
            path,
            encoder: EmfEncoder::new(namespace),
        }
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the EMF lines of `exposition` at `now_ms` (milliseconds since the Unix epoch),
    /// one JSON object per line, in one `write` call; returns how many lines were written. On
    /// an error the counters' baseline is kept, so the next write counts their increase since
    /// the last write that succeeded.
    pub fn write(&mut self, exposition: &str, now_ms: u64) -> std::io::Result<usize> {
        let encoded = self.encoder.prepare(exposition, now_ms);
        let mut buffer = String::with_capacity(encoded.lines.iter().map(|l| l.len() + 1).sum());
        for line in &encoded.lines {
            buffer.push_str(line);
            buffer.push('\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        file.write_all(buffer.as_bytes())?;
        file.flush()?;
        self.encoder.commit(encoded.baseline);
        Ok(encoded.lines.len())
    }
}

/// Milliseconds since the Unix epoch now.
fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes `exposition`'s metrics to `config.path` every `config.flush_interval` (the first at
/// once: it records the counters' baseline) until `stop` is cancelled, then once more, so the
/// last interval's counts are not lost. A failed write is logged (at most once a minute) and
/// retried at the next interval. The file is appended to with blocking calls on the task's
/// thread: a few kilobytes per interval.
pub async fn run(config: EmfConfig, exposition: Arc<Exposition>, stop: CancellationToken) {
    let mut writer = EmfWriter::new(config.path, &config.namespace);
    let mut ticks = tokio::time::interval(config.flush_interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_warning: Option<Instant> = None;
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = ticks.tick() => false,
        };
        let text = exposition.render().await;
        if let Err(e) = writer.write(&text, unix_ms_now())
            && last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY)
        {
            warn!(path = %writer.path().display(), "cannot write EMF metrics: {e}");
            last_warning = Some(Instant::now());
        }
        if stopping {
            return;
        }
    }
}

/// The JSON type of `value`, for messages.
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks one line against the EMF specification's rules: a JSON object whose `_aws` member
/// is an object with `Timestamp` (a non-negative number, milliseconds) and `CloudWatchMetrics`
/// (a non-empty array of directives). Each directive holds only `Namespace` (a valid
/// CloudWatch namespace), `Dimensions` (an array of dimension sets: arrays of at most 30
/// names, each a member of the root whose value is a string of 1 to 1024 characters) and
/// `Metrics` (1 to 100 definitions holding only `Name`, of 1 to 1024 characters, unique in the
/// directive, naming a member of the root that is a number or an array of 1 to 100 numbers
/// and not a dimension of the directive; `Unit`, one of CloudWatch's; and `StorageResolution`,
/// 1 or 60). Returns what is wrong first.
pub fn validate_emf_line(line: &str) -> Result<(), String> {
    if line.contains('\n') {
        return Err("the line holds a line feed".to_owned());
    }
    let root: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let root = root
        .as_object()
        .ok_or_else(|| format!("the root is {}, not an object", type_of(&root)))?;
    let aws = root
        .get("_aws")
        .ok_or("no _aws member")?
        .as_object()
        .ok_or("_aws is not an object")?;
    match aws.get("Timestamp") {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|t| t >= 0.0) => {}
        Some(other) => return Err(format!("_aws.Timestamp is {other}, not a number ≥ 0")),
        None => return Err("no _aws.Timestamp".to_owned()),
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .ok_or("no _aws.CloudWatchMetrics")?
        .as_array()
        .ok_or("_aws.CloudWatchMetrics is not an array")?;
    if directives.is_empty() {
        return Err("_aws.CloudWatchMetrics is empty".to_owned());
    }
    for (i, directive) in directives.iter().enumerate() {
        validate_directive(root, directive).map_err(|e| format!("directive {i}: {e}"))?;
    }
    Ok(())
}

/// Checks one `MetricDirective` of `root` (see [`validate_emf_line`]).
fn validate_directive(root: &Map<String, Value>, directive: &Value) -> Result<(), String> {
    let directive = directive.as_object().ok_or("not an object")?;
    if let Some(extra) = directive
        .keys()
        .find(|k| !matches!(k.as_str(), "Namespace" | "Dimensions" | "Metrics"))
    {
        return Err(format!("unknown member {extra}"));
    }
    let namespace = directive
        .get("Namespace")
        .ok_or("no Namespace")?
        .as_str()
        .ok_or("Namespace is not a string")?;
    check_namespace(namespace).map_err(|e| format!("Namespace {namespace:?}: {e}"))?;
    let sets = directive
        .get("Dimensions")
        .ok_or("no Dimensions")?
        .as_array()
        .ok_or("Dimensions is not an array")?;
    let mut dimension_names = HashSet::new();
    for set in sets {
        let set = set.as_array().ok_or("a dimension set is not an array")?;
        if set.len() > MAX_DIMENSIONS_PER_SET {
            return Err(format!(
                "a dimension set holds {} names, over {MAX_DIMENSIONS_PER_SET}",
                set.len()
            ));
        }
        for name in set {
            let name = name.as_str().ok_or("a dimension name is not a string")?;
            match root.get(name) {
                Some(Value::String(value))
                    if !value.is_empty() && value.chars().count() <= MAX_DIMENSION_VALUE_CHARS => {}
                Some(Value::String(_)) => {
                    return Err(format!(
                        "dimension {name}'s value is empty or over {MAX_DIMENSION_VALUE_CHARS} characters"
                    ));
                }
                Some(other) => {
                    return Err(format!(
                        "dimension {name} is {}, not a string",
                        type_of(other)
                    ));
                }
                None => return Err(format!("dimension {name} is not a member of the root")),
            }
            dimension_names.insert(name);
        }
    }
    let metrics = directive
        .get("Metrics")
        .ok_or("no Metrics")?
        .as_array()
        .ok_or("Metrics is not an array")?;
    if metrics.is_empty() || metrics.len() > MAX_METRICS_PER_DIRECTIVE {
        return Err(format!(
            "Metrics holds {} definitions, not 1 to {MAX_METRICS_PER_DIRECTIVE}",
            metrics.len()
        ));
    }
    let mut metric_names = HashSet::new();
    for definition in metrics {
        let definition = definition
            .as_object()
            .ok_or("a metric definition is not an object")?;
        if let Some(extra) = definition
            .keys()
            .find(|k| !matches!(k.as_str(), "Name" | "Unit" | "StorageResolution"))
        {
            return Err(format!("unknown member {extra} in a metric definition"));
        }
        let name = definition
            .get("Name")
            .ok_or("a metric definition has no Name")?
            .as_str()
            .ok_or("a metric's Name is not a string")?;
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(format!(
                "metric name {name:?} is empty or over {MAX_NAME_CHARS} characters"
            ));
        }
        if !metric_names.insert(name) {
            return Err(format!("metric {name} is defined twice"));
        }
        if dimension_names.contains(name) {
            return Err(format!("metric {name} is also a dimension"));
        }
        match definition.get("Unit") {
            None => {}
            Some(Value::String(unit)) if CLOUDWATCH_UNITS.contains(&unit.as_str()) => {}
            Some(other) => return Err(format!("metric {name}'s Unit {other} is not CloudWatch's")),
        }
        match definition.get("StorageResolution") {
            None => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|r| r == 1 || r == 60) => {}
            Some(other) => {
                return Err(format!(
                    "metric {name}'s StorageResolution {other} is not 1 or 60"
                ));
            }
        }
        match root.get(name) {
            Some(Value::Number(_)) => {}
            Some(Value::Array(values))
                if !values.is_empty()
                    && values.len() <= MAX_VALUES_PER_METRIC
                    && values.iter().all(Value::is_number) => {}
            Some(Value::Array(_)) => {
                return Err(format!(
                    "metric {name}'s values are not 1 to {MAX_VALUES_PER_METRIC} numbers"
                ));
            }
            Some(other) => {
                return Err(format!("metric {name} is {}, not a number", type_of(other)));
            }
            None => return Err(format!("metric {name} is not a member of the root")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names;

    /// What a serve process's `/metrics` looks like: its own metrics and two nodes' merged.
    const FIRST: &str = r#"# HELP sealgate_request_count_total HTTP requests received from clients
# TYPE sealgate_request_count_total counter
sealgate_request_count_total 10

# HELP sealgate_active_connections client connections open now
# TYPE sealgate_active_connections gauge
sealgate_active_connections 3

# TYPE sealgate_processed_bytes_total counter
sealgate_processed_bytes_total 4096

# TYPE sealgate_tls_handshakes_total counter
sealgate_tls_handshakes_total{kind="full"} 7
sealgate_tls_handshakes_total{kind="resumed"} 2

# TYPE sealgate_http_code_target_2xx_count_total counter
sealgate_http_code_target_2xx_count_total{pool="web"} 8
sealgate_http_code_target_2xx_count_total{pool="api"} 2

# TYPE sealgate_healthy_hosts gauge
sealgate_healthy_hosts{pool="web"} 2
sealgate_healthy_hosts{pool="api"} 1

# TYPE sealgate_target_response_time_seconds histogram
sealgate_target_response_time_seconds_bucket{pool="web",le="0.005"} 5
sealgate_target_response_time_seconds_bucket{pool="web",le="+Inf"} 8
sealgate_target_response_time_seconds_sum{pool="web"} 0.25
sealgate_target_response_time_seconds_count{pool="web"} 8

# TYPE sealgate_hsm_keys_token_occupied gauge
sealgate_hsm_keys_token_occupied{cluster_id="cluster-1",hsm_id="hsm-a"} 4
sealgate_hsm_keys_token_occupied{cluster_id="cluster-1",hsm_id="hsm-b"} 4

# TYPE sealgate_hsm_unhealthy gauge
sealgate_hsm_unhealthy{cluster_id="cluster-1",hsm_id="hsm-a"} 0
sealgate_hsm_unhealthy{cluster_id="cluster-1",hsm_id="hsm-b"} 0

# TYPE sealgate_hsm_signatures_total counter
sealgate_hsm_signatures_total{cluster_id="cluster-1",hsm_id="hsm-a"} 100
sealgate_hsm_signatures_total{cluster_id="cluster-1",hsm_id="hsm-b"} 50

# TYPE sealgate_hsm_operation_exec_time_seconds histogram
sealgate_hsm_operation_exec_time_seconds_bucket{cluster_id="cluster-1",hsm_id="hsm-a",operation="sign",le="+Inf"} 100
sealgate_hsm_operation_exec_time_seconds_sum{cluster_id="cluster-1",hsm_id="hsm-a",operation="sign"} 0.5
sealgate_hsm_operation_exec_time_seconds_count{cluster_id="cluster-1",hsm_id="hsm-a",operation="sign"} 100

# TYPE sealgate_hsm_raft_replication_lag gauge
sealgate_hsm_raft_replication_lag{cluster_id="cluster-1",hsm_id="hsm-a",follower="hsm-b"} 1

# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.5
sealgate_unknown_thing{pool="web"} 3
sealgate_hsm_temperature{cluster_id="cluster-1",hsm_id="hsm-a"} NaN
"#;

    /// The same a while later: counts up, node hsm-b restarted, a first 5xx.
    const SECOND: &str = r#"# TYPE sealgate_request_count_total counter
sealgate_request_count_total 15
sealgate_active_connections 1
sealgate_processed_bytes_total 6144
sealgate_tls_handshakes_total{kind="full"} 9
sealgate_tls_handshakes_total{kind="resumed"} 2
sealgate_http_code_target_2xx_count_total{pool="web"} 12
sealgate_http_code_target_2xx_count_total{pool="api"} 2
sealgate_http_code_target_5xx_count_total{pool="api"} 1
sealgate_healthy_hosts{pool="web"} 2
sealgate_healthy_hosts{pool="api"} 0
sealgate_target_response_time_seconds_bucket{pool="web",le="+Inf"} 12
sealgate_target_response_time_seconds_sum{pool="web"} 0.75
sealgate_target_response_time_seconds_count{pool="web"} 12
sealgate_hsm_keys_token_occupied{cluster_id="cluster-1",hsm_id="hsm-a"} 5
sealgate_hsm_keys_token_occupied{cluster_id="cluster-1",hsm_id="hsm-b"} 5
sealgate_hsm_signatures_total{cluster_id="cluster-1",hsm_id="hsm-a"} 130
sealgate_hsm_signatures_total{cluster_id="cluster-1",hsm_id="hsm-b"} 10
sealgate_hsm_operation_exec_time_seconds_sum{cluster_id="cluster-1",hsm_id="hsm-a",operation="sign"} 0.8
sealgate_hsm_operation_exec_time_seconds_count{cluster_id="cluster-1",hsm_id="hsm-a",operation="sign"} 130
process_cpu_seconds_total 2.5
"#;

    fn parse(lines: &[String]) -> Vec<Map<String, Value>> {
        lines
            .iter()
            .map(|line| {
                validate_emf_line(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                serde_json::from_str::<Value>(line)
                    .unwrap()
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect()
    }

    /// The dimension names of a line's single directive.
    fn dimension_names(line: &Map<String, Value>) -> Vec<String> {
        let sets = &line["_aws"]["CloudWatchMetrics"][0]["Dimensions"];
        assert_eq!(sets.as_array().unwrap().len(), 1, "one dimension set");
        sets[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    /// The line whose dimensions are exactly `dims`.
    fn line_with<'a>(
        lines: &'a [Map<String, Value>],
        dims: &[(&str, &str)],
    ) -> &'a Map<String, Value> {
        let mut want: Vec<&str> = dims.iter().map(|(n, _)| *n).collect();
        want.sort_unstable();
        lines
            .iter()
            .find(|line| {
                dimension_names(line) == want
                    && dims.iter().all(|(n, v)| line[*n].as_str() == Some(*v))
            })
            .unwrap_or_else(|| panic!("no line with {dims:?} in {lines:#?}"))
    }

    /// The metric definitions of a line: name → unit.
    fn units(line: &Map<String, Value>) -> BTreeMap<String, String> {
        line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["Name"].as_str().unwrap().to_owned(),
                    d["Unit"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_first_flush_writes_gauges_and_records_the_counters_baseline() {
        let mut encoder = EmfEncoder::new("Sealgate");
        let lines = parse(&encoder.encode(FIRST, 1_700_000_000_000));
        for line in &lines {
            assert_eq!(line["_aws"]["Timestamp"], 1_700_000_000_000_u64);
            assert_eq!(
                line["_aws"]["CloudWatchMetrics"][0]["Namespace"],
                "Sealgate"
            );
            for name in units(line).keys() {
                let metric = ALL
                    .iter()
                    .find(|m| m.cloudwatch == name)
                    .unwrap_or_else(|| panic!("{name} written on the first flush"));
                assert_eq!(metric.kind, Kind::Gauge, "{name}");
            }
        }
        let none = line_with(&lines, &[]);
        assert_eq!(none["ActiveConnectionCount"], 3);
        assert!(!none.contains_key("RequestCount"));
        let hsm_a = line_with(&lines, &[("ClusterId", "cluster-1"), ("HsmId", "hsm-a")]);
        assert_eq!(hsm_a["HsmKeysTokenOccupied"], 4);
        assert_eq!(hsm_a["HsmUnhealthy"], 0);
        assert!(
            !hsm_a.contains_key("HsmTemperature"),
            "NaN is not a number EMF takes"
        );
        let lag = line_with(
            &lines,
            &[
                ("ClusterId", "cluster-1"),
                ("HsmId", "hsm-a"),
                ("Follower", "hsm-b"),
            ],
        );
        assert_eq!(lag["HsmRaftReplicationLag"], 1);
        assert_eq!(
            line_with(&lines, &[("TargetGroup", "api")])["HealthyHostCount"],
            1
        );
    }

    #[test]
    fn counters_and_histograms_are_written_as_increases_since_the_last_flush() {
        let mut encoder = EmfEncoder::new("Sealgate");
        encoder.encode(FIRST, 1_700_000_000_000);
        let lines = parse(&encoder.encode(SECOND, 1_700_000_060_000));

        let none = line_with(&lines, &[]);
        assert_eq!(none["RequestCount"], 5);
        assert_eq!(none["ProcessedBytes"], 2048);
        assert_eq!(none["ActiveConnectionCount"], 1, "a gauge is its value");
        let none_units = units(none);
        assert_eq!(none_units["RequestCount"], "Count");
        assert_eq!(none_units["ProcessedBytes"], "Bytes");
        assert_eq!(none_units["ActiveConnectionCount"], "Count");

        assert_eq!(line_with(&lines, &[("Kind", "full")])["TlsHandshakes"], 2);
        assert_eq!(
            line_with(&lines, &[("Kind", "resumed")])["TlsHandshakes"],
            0,
            "no increase is a count of 0, not a gap"
        );

        let web = line_with(&lines, &[("TargetGroup", "web")]);
        assert_eq!(web["HTTPCode_Target_2XX_Count"], 4);
        assert_eq!(web["TargetResponseTimeSum"], 0.5);
        assert_eq!(web["TargetResponseTimeCount"], 4);
        assert_eq!(web["HealthyHostCount"], 2);
        let web_units = units(web);
        assert_eq!(web_units["TargetResponseTimeSum"], "Seconds");
        assert_eq!(web_units["TargetResponseTimeCount"], "Count");
        assert_eq!(web_units["HTTPCode_Target_2XX_Count"], "Count");
        assert!(
            !web.contains_key("TargetResponseTime"),
            "no bucket is written"
        );

        let api = line_with(&lines, &[("TargetGroup", "api")]);
        assert_eq!(api["HTTPCode_Target_2XX_Count"], 0);
        assert_eq!(
            api["HTTPCode_Target_5XX_Count"], 1,
            "a series first seen after the first flush counts from 0"
        );
        assert_eq!(api["HealthyHostCount"], 0);

        let hsm_a = line_with(&lines, &[("ClusterId", "cluster-1"), ("HsmId", "hsm-a")]);
        assert_eq!(hsm_a["HsmSignatures"], 30);
        assert_eq!(hsm_a["HsmKeysTokenOccupied"], 5);
        let hsm_b = line_with(&lines, &[("ClusterId", "cluster-1"), ("HsmId", "hsm-b")]);
        assert_eq!(
            hsm_b["HsmSignatures"], 10,
            "a counter that went down was reset: its increase is its value"
        );
        let sign = line_with(
            &lines,
            &[
                ("ClusterId", "cluster-1"),
                ("HsmId", "hsm-a"),
                ("Operation", "sign"),
            ],
        );
        let sum = sign["HsmOperationExecTimeSum"].as_f64().unwrap();
        assert!((sum - 0.3).abs() < 1e-9, "{sum}");
        assert_eq!(sign["HsmOperationExecTimeCount"], 30);

        // A series missing from one exposition keeps its baseline.
        let lines = parse(&encoder.encode("sealgate_request_count_total 20\n", 1_700_000_120_000));
        assert_eq!(line_with(&lines, &[])["RequestCount"], 5);
        let lines = parse(&encoder.encode(
            "sealgate_hsm_signatures_total{cluster_id=\"cluster-1\",hsm_id=\"hsm-a\"} 131\n",
            1_700_000_180_000,
        ));
        assert_eq!(
            line_with(&lines, &[("ClusterId", "cluster-1"), ("HsmId", "hsm-a")])["HsmSignatures"],
            1
        );
    }

    #[test]
    fn samples_of_unknown_names_are_skipped() {
        let mut encoder = EmfEncoder::new("Sealgate");
        encoder.encode(FIRST, 0);
        let lines = encoder.encode(SECOND, 60_000);
        let text = lines.join("\n");
        assert!(!text.contains("process_cpu"), "{text}");
        assert!(!text.contains("sealgate_"), "{text}");
        assert!(!text.contains("Unknown"), "{text}");
        for line in parse(&lines) {
            for key in line.keys() {
                let known = key == "_aws"
                    || [
                        "ClusterId",
                        "HsmId",
                        "TargetGroup",
                        "Operation",
                        "Kind",
                        "Follower",
                    ]
                    .contains(&key.as_str())
                    || targets().values().any(|t| t.name == *key);
                assert!(known, "{key}");
            }
        }
        assert!(
            EmfEncoder::new("Sealgate")
                .encode("up 1\nfoo{a=\"b\"} 2\n", 0)
                .is_empty()
        );
    }

    #[test]
    fn cloudwatch_names_are_written_as_they_are() {
        let mut encoder = EmfEncoder::new("Sealgate");
        encoder.encode(FIRST, 0);
        let text = encoder.encode(SECOND, 60_000).join("\n");
        for name in [
            "\"HsmKeysTokenOccupied\":",
            "\"RequestCount\":",
            "\"HTTPCode_Target_2XX_Count\":",
            "\"HTTPCode_Target_5XX_Count\":",
            "\"ActiveConnectionCount\":",
            "\"Name\":\"HsmKeysTokenOccupied\"",
            "\"Name\":\"HTTPCode_Target_2XX_Count\"",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }

    #[test]
    fn metric_names_are_unique_and_never_dimensions() {
        let targets = targets();
        let mut names: Vec<&str> = targets.values().map(|t| t.name.as_str()).collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            all,
            "two samples would be written under one name"
        );
        for label in [
            "cluster_id",
            "hsm_id",
            "pool",
            "operation",
            "kind",
            "follower",
        ] {
            let dim = dimension_name(label).unwrap();
            assert!(!names.contains(&dim.as_str()), "{dim}");
        }
        assert_eq!(dimension_name("cluster_id").as_deref(), Some("ClusterId"));
        assert_eq!(dimension_name("hsm_id").as_deref(), Some("HsmId"));
        assert_eq!(dimension_name("pool").as_deref(), Some("TargetGroup"));
        assert_eq!(dimension_name("follower").as_deref(), Some("Follower"));
        assert_eq!(dimension_name("_"), None);
        for t in targets.values() {
            assert!(CLOUDWATCH_UNITS.contains(&t.unit), "{t:?}");
        }
    }

    #[test]
    fn samples_are_parsed_with_escapes_and_timestamps() {
        let sample =
            parse_sample(r#"m_total{a="x\"y\\z",b = "line\nfeed", } 12.5 1700000000000"#).unwrap();
        assert_eq!(sample.name, "m_total");
        assert_eq!(
            sample.labels,
            vec![("a", "x\"y\\z".to_owned()), ("b", "line\nfeed".to_owned())]
        );
        assert_eq!(sample.value, 12.5);
        assert_eq!(parse_sample("m 3").unwrap().value, 3.0);
        assert!(parse_sample("m{} +Inf").unwrap().value.is_infinite());
        for bad in [
            "# TYPE m counter",
            "",
            "m",
            "m{a=\"b\" 1",
            "m{a=b} 1",
            "m x",
        ] {
            assert_eq!(parse_sample(bad), None, "{bad}");
        }
    }

    #[test]
    fn more_than_100_metrics_are_split_over_lines() {
        let data: Vec<Datum> = (0..150)
            .map(|i| Datum {
                name: format!("Metric{i}"),
                unit: "Count",
                value: f64::from(i),
            })
            .collect();
        let dims = vec![("HsmId".to_owned(), "hsm-a".to_owned())];
        let mut lines = Vec::new();
        lines_of("Sealgate", 0, &dims, &data, &mut lines);
        let lines = parse(&lines);
        assert_eq!(lines.len(), 2);
        assert_eq!(units(&lines[0]).len(), 100);
        assert_eq!(units(&lines[1]).len(), 50);
        assert_eq!(lines[1]["Metric149"], 149);
        assert_eq!(lines[1]["HsmId"], "hsm-a");
    }

    #[test]
    fn the_validator_rejects_what_emf_refuses() {
        let good = r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["D"]],"Metrics":[{"Name":"M","Unit":"Count"}]}]},"D":"d","M":[1,2]}"#;
        validate_emf_line(good).unwrap();
        validate_emf_line(
            r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[[]],"Metrics":[{"Name":"M"}]}]},"M":1}"#,
        )
        .unwrap();
        let many: Vec<String> = (0..101).map(|i| format!("{{\"Name\":\"M{i}\"}}")).collect();
        let members: Vec<String> = (0..101).map(|i| format!("\"M{i}\":1")).collect();
        let too_many = format!(
            r#"{{"_aws":{{"Timestamp":1,"CloudWatchMetrics":[{{"Namespace":"N","Dimensions":[[]],"Metrics":[{}]}}]}},{}}}"#,
            many.join(","),
            members.join(",")
        );
        let dims: Vec<String> = (0..31).map(|i| format!("\"D{i}\"")).collect();
        let dim_members: Vec<String> = (0..31).map(|i| format!("\"D{i}\":\"v\"")).collect();
        let too_many_dims = format!(
            r#"{{"_aws":{{"Timestamp":1,"CloudWatchMetrics":[{{"Namespace":"N","Dimensions":[[{}]],"Metrics":[{{"Name":"M"}}]}}]}},"M":1,{}}}"#,
            dims.join(","),
            dim_members.join(",")
        );
        let values: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        let too_many_values = good.replace("[1,2]", &format!("[{}]", values.join(",")));
        let long_name = "N".repeat(1025);
        let bad = [
            ("not json".to_owned(), "not JSON"),
            ("[1]".to_owned(), "not an object"),
            (r#"{"M":1}"#.to_owned(), "no _aws"),
            (good.replace("\"Timestamp\":1,", ""), "Timestamp"),
            (
                good.replace("\"Timestamp\":1", "\"Timestamp\":\"1\""),
                "Timestamp",
            ),
            (good.replace("\"Namespace\":\"N\",", ""), "Namespace"),
            (
                good.replace("\"Namespace\":\"N\"", "\"Namespace\":\"AWS/ELB\""),
                "reserved",
            ),
            (
                good.replace("\"Namespace\":\"N\"", "\"Namespace\":\"\""),
                "empty",
            ),
            (good.replace("[[\"D\"]]", "[\"D\"]"), "not an array"),
            (good.replace("\"D\":\"d\"", "\"D\":1"), "not a string"),
            (good.replace("\"D\":\"d\",", ""), "dimension D"),
            (good.replace("\"D\":\"d\"", "\"D\":\"\""), "empty"),
            (
                good.replace("\"Unit\":\"Count\"", "\"Unit\":\"Apples\""),
                "Unit",
            ),
            (
                good.replace("\"Unit\":\"Count\"", "\"Unit\":\"Count\",\"X\":1"),
                "unknown member X",
            ),
            (good.replace(",\"M\":[1,2]", ""), "not a member"),
            (good.replace("[1,2]", "\"1\""), "not a number"),
            (good.replace("[1,2]", "[1,\"2\"]"), "numbers"),
            (good.replace("[1,2]", "[]"), "numbers"),
            (too_many_values, "numbers"),
            (
                good.replace("\"Name\":\"M\"", "\"Name\":\"D\""),
                "also a dimension",
            ),
            (good.replace("\"Name\":\"M\"", "\"Name\":\"\""), "empty"),
            (
                good.replace("\"Name\":\"M\"", &format!("\"Name\":\"{long_name}\"")),
                "over 1024",
            ),
            (
                good.replace(
                    "{\"Name\":\"M\",\"Unit\":\"Count\"}",
                    "{\"Name\":\"M\"},{\"Name\":\"M\"}",
                ),
                "twice",
            ),
            (
                good.replace(
                    "\"Metrics\":[{\"Name\":\"M\",\"Unit\":\"Count\"}]",
                    "\"Metrics\":[]",
                ),
                "Metrics holds 0",
            ),
            (
                good.replace(
                    "\"CloudWatchMetrics\":[{",
                    "\"CloudWatchMetrics\":[],\"X\":[{",
                ),
                "empty",
            ),
            (too_many, "Metrics holds 101"),
            (too_many_dims, "31 names"),
            (
                good.replace("\"Unit\":\"Count\"", "\"StorageResolution\":5"),
                "StorageResolution",
            ),
        ];
        for (line, why) in bad {
            let e = validate_emf_line(&line).expect_err(&line);
            assert!(e.contains(why), "{e:?} should say {why:?}: {line}");
        }
    }

    #[test]
    fn namespaces_follow_cloudwatch_rules() {
        check_namespace("Sealgate/Proxy prod-1#a:b_c.d").unwrap();
        assert_eq!(check_namespace(""), Err(NamespaceError::Empty));
        assert_eq!(
            check_namespace(&"a".repeat(256)),
            Err(NamespaceError::TooLong)
        );
        assert_eq!(check_namespace("a\"b"), Err(NamespaceError::BadChar('"')));
        assert_eq!(check_namespace("AWS/ELB"), Err(NamespaceError::Reserved));
    }

    #[test]
    fn the_writer_appends_lines_to_a_file_created_0640() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emf.log");
        let mut writer = EmfWriter::new(path.clone(), "Sealgate");
        let first = writer.write(FIRST, 1_000).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "{mode:o}");
        let second = writer.write(SECOND, 61_000).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), first + second);
        let parsed = parse(&lines);
        assert_eq!(
            parsed
                .iter()
                .filter_map(|l| l.get("RequestCount"))
                .collect::<Vec<_>>(),
            [5]
        );

        // An existing file is appended to and keeps its mode.
        let other = dir.path().join("existing.log");
        std::fs::write(&other, "earlier\n").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
        EmfWriter::new(other.clone(), "Sealgate")
            .write(FIRST, 1_000)
            .unwrap();
        let text = std::fs::read_to_string(&other).unwrap();
        assert!(text.starts_with("earlier\n{"), "{text}");
        let mode = std::fs::metadata(&other).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_write_keeps_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EmfWriter::new(dir.path().join("missing/emf.log"), "Sealgate");
        writer.write(FIRST, 0).unwrap_err();
        writer.path = dir.path().join("emf.log");
        writer.write(FIRST, 1).unwrap();
        writer.path = dir.path().join("missing/emf.log");
        writer.write(SECOND, 2).unwrap_err();
        writer.path = dir.path().join("emf.log");
        writer.write(SECOND, 3).unwrap();
        let text = std::fs::read_to_string(dir.path().join("emf.log")).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let parsed = parse(&lines);
        let counts: Vec<&Value> = parsed
            .iter()
            .filter_map(|l| l.get("RequestCount"))
            .collect();
        assert_eq!(counts, [&Value::from(5)]);
    }

    #[tokio::test]
    async fn run_writes_until_stopped_and_flushes_at_the_end() {
        use metrics_exporter_prometheus::PrometheusBuilder;
        let recorder = PrometheusBuilder::new().build_recorder();
        let (requests, connections) = metrics::with_local_recorder(&recorder, || {
            (
                metrics::counter!(names::REQUEST_COUNT.name),
                metrics::gauge!(names::ACTIVE_CONNECTION_COUNT.name),
            )
        });
        requests.increment(3);
        connections.set(2.0);
        let exposition = Arc::new(Exposition::new(
            recorder.handle(),
            Arc::new(|| {}),
            Arc::new(|| Ok(())),
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emf.log");
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            EmfConfig {
                path: path.clone(),
                namespace: "Sealgate".to_owned(),
                flush_interval: Duration::from_secs(3600),
            },
            exposition,
            stop.clone(),
        ));
        // The first flush, at once, records the baseline (3 requests).
        tokio::time::timeout(Duration::from_secs(10), async {
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        requests.increment(4);
        stop.cancel();
        task.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let parsed = parse(&lines);
        let counts: Vec<&Value> = parsed
            .iter()
            .filter_map(|l| l.get("RequestCount"))
            .collect();
        assert_eq!(counts, [&Value::from(4)]);
        assert!(parsed.iter().all(|l| l["ActiveConnectionCount"] == 2));
        assert_eq!(
            parsed.len(),
            2,
            "the first flush's gauges and the last one's"
        );
    }
}
