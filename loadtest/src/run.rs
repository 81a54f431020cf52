//! The scheduler: runs callers in a closed loop (each starts its next request when the last
//! one ends) or an open loop (each request has an intended start on a fixed schedule), skips
//! the warm-up, and measures the window: counts, latency, CPU, wire bytes.
//!
//! Open loop, after wrk2: slot `j` of the schedule starts at `t0 + j / rate`; caller `i` of `C`
//! takes slots `i, i + C, i + 2C, …`, so the rate is spread evenly over the callers. A caller
//! that falls behind sends at once, and its latency is counted from the slot's intended start,
//! not from when it was sent: a stalled server shows up as latency, not as fewer requests
//! (coordinated omission). Slots are timed by [`Pacer`]'s thread, not tokio's 1 ms timer, so
//! the schedule's own lateness adds tens of microseconds, not a millisecond, to latencies.

use crate::cpu::{self, TreeSnapshot};
use crate::net::WireSnapshot;
use crate::pacer::Pacer;
use crate::stats::{Failure, Measured, Stats};
use anyhow::Context;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Makes one request at a time, keeping whatever state it needs between requests (a
/// connection, a buffer). A request dropped mid-way (timeout, end of the run) must leave the
/// caller usable: it makes a new connection next time.
pub(crate) trait Caller: Send + 'static {
    /// One request, until its whole answer is read.
    fn call(&mut self) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// A load: the callers of a run and, for HTTP, the wire counters.
pub(crate) trait Load: Send + Sync + 'static {
    /// What one concurrent caller is.
    type Caller: Caller;
    /// The `index`-th caller.
    fn caller(&self, index: usize) -> Self::Caller;
    /// The wire counters now, if this load has any.
    fn wire(&self) -> Option<WireSnapshot>;
    /// Whether its connections speak TLS (so handshakes are counted).
    fn tls(&self) -> bool;
}

/// When a run stops and how requests are paced.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Concurrent callers.
    pub(crate) callers: usize,
    /// Measure for this long (after the warm-up); requests in flight at the end are dropped
    /// and not counted.
    pub(crate) duration: Option<Duration>,
    /// Measure this many requests (after the warm-up).
    pub(crate) requests: Option<u64>,
    /// Open loop at this many requests per second in total.
    pub(crate) rate: Option<f64>,
    /// Requests before this are not counted.
    pub(crate) warmup: Duration,
    /// Longest wait for one request.
    pub(crate) timeout: Duration,
    /// The live progress line (only if stderr is a terminal).
    pub(crate) progress: bool,
}

/// What the workers share.
struct Shared {
    plan: Plan,
    t0: Instant,
    measure_start: Instant,
    deadline: Option<Instant>,
    /// Measured requests started so far (closed loop with a request budget).
    tickets: AtomicU64,
    /// Counts, sharded so callers on different threads rarely meet on a lock.
    shards: Vec<Mutex<Stats>>,
    stop: AtomicBool,
    /// The open loop's timer.
    pacer: Option<Pacer>,
}

fn lock(shard: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn record(&self, index: usize, result: &Result<(), Failure>, latency: Duration) {
        if let Some(shard) = self.shards.get(index % self.shards.len().max(1)) {
            lock(shard).record(result, latency);
        }
    }

    fn merged(&self) -> anyhow::Result<Stats> {
        let mut all = Stats::new()?;
        for shard in &self.shards {
            all.merge(&lock(shard));
        }
        Ok(all)
    }

    /// Runs one request, with the timeout; `None` if the run's deadline came first.
    async fn one<C: Caller>(&self, caller: &mut C) -> Option<Result<(), Failure>> {
        let request = async {
            match tokio::time::timeout(self.plan.timeout, caller.call()).await {
                Ok(result) => result,
                Err(_) => Err(Failure::Timeout),
            }
        };
        match self.deadline {
            Some(deadline) => tokio::select! {
                result = request => Some(result),
                () = tokio::time::sleep_until(deadline) => None,
            },
            None => Some(request.await),
        }
    }

    async fn closed_loop<C: Caller>(&self, index: usize, mut caller: C) {
        while !self.stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            if self.deadline.is_some_and(|d| start >= d) {
                break;
            }
            let measured = start >= self.measure_start;
            if measured
                && let Some(budget) = self.plan.requests
                && self.tickets.fetch_add(1, Ordering::Relaxed) >= budget
            {
                break;
            }
            let Some(result) = self.one(&mut caller).await else {
                break;
            };
            if measured {
                self.record(index, &result, start.elapsed());
            }
        }
    }

    async fn open_loop<C: Caller>(&self, index: usize, mut caller: C, rate: f64) {
        let warmup_slots = slots_before(self.plan.warmup, rate);
        let mut end = u64::MAX;
        if let Some(n) = self.plan.requests {
            end = end.min(warmup_slots.saturating_add(n));
        }
        if let Some(duration) = self.plan.duration {
            end = end.min(slots_before(self.plan.warmup + duration, rate));
        }
        let step = self.plan.callers.max(1) as u64;
        let mut slot = index as u64;
        while slot < end && !self.stop.load(Ordering::Relaxed) {
            let intended = self.t0 + Duration::from_secs_f64(slot as f64 / rate);
            match &self.pacer {
                Some(pacer) => pacer.sleep_until(intended.into_std()).await,
                None => tokio::time::sleep_until(intended).await,
            }
            let Some(result) = self.one(&mut caller).await else {
                break;
            };
            if slot >= warmup_slots {
                self.record(index, &result, intended.elapsed());
            }
            slot += step;
        }
    }
}

/// How many slots of a schedule at `rate` start before `offset`.
fn slots_before(offset: Duration, rate: f64) -> u64 {
    (offset.as_secs_f64() * rate).ceil() as u64
}

/// What a run gives back: the counts and the other figures of the window.
pub(crate) struct Outcome {
    pub(crate) stats: Stats,
    pub(crate) measured: Measured,
}

/// CPU and wire readings at one end of the window.
struct Reading {
    at: Instant,
    server: Option<TreeSnapshot>,
    client_ticks: u64,
    wire: Option<WireSnapshot>,
}

fn read<L: Load>(load: &L, server_pids: &[u32]) -> anyhow::Result<Reading> {
    let server = if server_pids.is_empty() {
        None
    } else {
        Some(TreeSnapshot::take(server_pids)?)
    };
    Ok(Reading {
        at: Instant::now(),
        server,
        client_ticks: cpu::self_ticks()?,
        wire: load.wire(),
    })
}

/// Runs `load` as `plan` says; `server_pids` are the processes whose CPU is measured.
pub(crate) async fn run<L: Load>(
    load: Arc<L>,
    plan: &Plan,
    server_pids: &[u32],
) -> anyhow::Result<Outcome> {
    let ticks_per_second = cpu::ticks_per_second();
    // Fail early on a pid that does not exist.
    if !server_pids.is_empty() {
        TreeSnapshot::take(server_pids)?;
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shard_count = plan.callers.clamp(1, 4 * threads);
    let t0 = Instant::now();
    let measure_start = t0 + plan.warmup;
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        t0,
        measure_start,
        deadline: plan.duration.map(|d| measure_start + d),
        tickets: AtomicU64::new(0),
        shards: (0..shard_count)
            .map(|_| Stats::new().map(Mutex::new))
            .collect::<anyhow::Result<_>>()?,
        stop: AtomicBool::new(false),
        pacer: match plan.rate {
            Some(_) => Some(Pacer::start().context("cannot start the pacer thread")?),
            None => None,
        },
    });
    let start_reading = if plan.warmup.is_zero() {
        Some(read(&*load, server_pids)?)
    } else {
        None
    };
    let workers: Vec<_> = (0..plan.callers)
        .map(|index| {
            let shared = Arc::clone(&shared);
            let caller = load.caller(index);
            tokio::spawn(async move {
                match shared.plan.rate {
                    Some(rate) => shared.open_loop(index, caller, rate).await,
                    None => shared.closed_loop(index, caller).await,
                }
            })
        })
        .collect();
    let progress = (plan.progress && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(progress(Arc::clone(&shared))));
    let interrupt = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let start_reading = match start_reading {
        Some(reading) => reading,
        None => {
            tokio::time::sleep_until(measure_start).await;
            read(&*load, server_pids)?
        }
    };
    for worker in workers {
        worker.await?;
    }
    let end_reading = read(&*load, server_pids)?;
    interrupt.abort();
    if let Some(progress) = progress {
        progress.abort();
        let _ = writeln!(std::io::stderr());
    }
    let window = match shared.deadline {
        Some(deadline) if !shared.stop.load(Ordering::Relaxed) => {
            deadline.min(end_reading.at) - start_reading.at
        }
        _ => end_reading.at - start_reading.at,
    };
    let wire = match (end_reading.wire, start_reading.wire) {
        (Some(end), Some(start)) => Some(end.since(start)),
        _ => None,
    };
    let server_cpu = match (&end_reading.server, &start_reading.server) {
        (Some(end), Some(start)) => Some((
            end.cpu_ticks_since(start) as f64 / ticks_per_second,
            end.processes(),
        )),
        _ => None,
    };
    let tls = wire.filter(|_| load.tls());
    Ok(Outcome {
        stats: shared.merged()?,
        measured: Measured {
            window,
            server_cpu,
            client_cpu: end_reading
                .client_ticks
                .saturating_sub(start_reading.client_ticks) as f64
                / ticks_per_second,
            bytes_received: wire.map(|w| w.received),
            bytes_sent: wire.map(|w| w.sent),
            tls_handshakes: tls.map(|w| w.handshakes),
            tls_resumed: tls.map(|w| w.resumed),
        },
    })
}

/// Once a second on stderr: elapsed time, rate, errors and p99 of the last second's totals.
async fn progress(shared: Arc<Shared>) {
    let mut tick =
        tokio::time::interval_at(shared.t0 + Duration::from_secs(1), Duration::from_secs(1));
    let mut last_count = 0;
    loop {
        let now = tick.tick().await;
        let Ok(stats) = shared.merged() else { return };
        let line = if now < shared.measure_start {
            format!(
                "\rwarm-up {:.0} s",
                (shared.measure_start - now).as_secs_f64()
            )
        } else {
            let count = stats.ok() + stats.errors();
            let rate = count - last_count;
            last_count = count;
            format!(
                "\r{:>4.0} s  {rate:>7} req/s  {:>6} errors  p99 {:<10}",
                (now - shared.measure_start).as_secs_f64(),
                stats.errors(),
                crate::stats::micros(stats.latency_at(0.99)),
            )
        };
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counting(Arc<AtomicUsize>, bool);

    impl Caller for Counting {
        async fn call(&mut self) -> Result<(), Failure> {
            let n = self.0.fetch_add(1, Ordering::Relaxed);
            if self.1 && n.is_multiple_of(4) {
                return Err(Failure::Timeout);
            }
            Ok(())
        }
    }

    struct CountingLoad(Arc<AtomicUsize>, bool);

    impl Load for CountingLoad {
        type Caller = Counting;
        fn caller(&self, _: usize) -> Counting {
            Counting(Arc::clone(&self.0), self.1)
        }
        fn wire(&self) -> Option<WireSnapshot> {
            None
        }
        fn tls(&self) -> bool {
            false
        }
    }

    fn plan() -> Plan {
        Plan {
            callers: 3,
            duration: None,
            requests: None,
            rate: None,
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
            progress: false,
        }
    }

    #[tokio::test]
    async fn closed_loop_makes_exactly_the_requests_asked() {
        let calls = Arc::new(AtomicUsize::new(0));
        let load = Arc::new(CountingLoad(Arc::clone(&calls), true));
        let plan = Plan {
            requests: Some(100),
            ..plan()
        };
        let out = run(load, &plan, &[]).await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 100);
        assert_eq!((out.stats.ok(), out.stats.errors()), (75, 25));
    }

    #[tokio::test]
    async fn open_loop_follows_the_schedule_and_skips_the_warmup() {
        let calls = Arc::new(AtomicUsize::new(0));
        let load = Arc::new(CountingLoad(Arc::clone(&calls), false));
        let plan = Plan {
            rate: Some(100.0),
            duration: Some(Duration::from_millis(300)),
            warmup: Duration::from_millis(200),
            ..plan()
        };
        let started = Instant::now();
        let out = run(load, &plan, &[]).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(calls.load(Ordering::Relaxed), 50);
        assert_eq!(out.stats.ok(), 30);
        assert!(elapsed >= Duration::from_millis(490), "{elapsed:?}");
        assert!((out.measured.window.as_secs_f64() - 0.3).abs() < 0.05);
    }

    #[test]
    fn counts_slots() {
        assert_eq!(slots_before(Duration::from_secs(3), 200.0), 600);
        assert_eq!(slots_before(Duration::from_millis(1), 200.0), 1);
        assert_eq!(slots_before(Duration::ZERO, 200.0), 0);
    }
}
