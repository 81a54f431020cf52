//! The crypto pool: a fixed set of threads (one per core by default) taking jobs from one
//! queue of bounded length. Engine calls block (signatures, argon2, fsync), so they run here and
//! never on an async worker. A full queue is the node's `busy`: the job is refused at once
//! rather than queued without bound.
//!
//! A connection hands over every request it read in one go as one batch, and under load the
//! queue is never empty, so the threads go from job to job without sleeping, where tokio's
//! blocking pool costs a wake-up per call. Answers are
//! collected in an [`Outbox`] and handed to the connections' writers together when the queue
//! runs dry (or after [`BATCH_TIME`]), so one wake-up of a writer carries many answers instead
//! of each answer preempting the crypto thread (measured in BENCHMARKS.md).

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// One request's work: runs on a crypto thread and leaves its answer in the outbox.
pub(crate) type Job = Box<dyn FnOnce(&mut Outbox) + Send + 'static>;

/// Longest a finished answer waits in the outbox for the jobs behind it.
pub(crate) const BATCH_TIME: Duration = Duration::from_micros(200);

/// Answers of the jobs a crypto thread ran since its last flush.
pub(crate) struct Outbox {
    answers: Vec<Answer>,
    runtime: tokio::runtime::Handle,
}

/// One answer, with the in-flight slot of its request: the slot is freed only once the answer
/// is in its writer's channel, so a client that stops reading cannot make the node hold more
/// than `max_in_flight` answers for it.
struct Answer {
    to: mpsc::Sender<Bytes>,
    bytes: Bytes,
    slot: OwnedSemaphorePermit,
}

impl Outbox {
    /// Queues `answer` for the connection writer behind `to`; `slot` is freed when it is
    /// handed over.
    pub(crate) fn send(
        &mut self,
        to: mpsc::Sender<Bytes>,
        bytes: Bytes,
        slot: OwnedSemaphorePermit,
    ) {
        self.answers.push(Answer { to, bytes, slot });
    }

    /// Hands every answer to its writer. A writer's channel has room for every request in
    /// flight on its connection, so this does not wait unless the client stopped reading; then
    /// the answer waits on the runtime, holding its slot, not on this thread.
    fn flush(&mut self) {
        for Answer { to, bytes, slot } in self.answers.drain(..) {
            match to.try_send(bytes) {
                Ok(()) => drop(slot),
                Err(mpsc::error::TrySendError::Full(bytes)) => {
                    self.runtime.spawn(async move {
                        let _ = to.send(bytes).await;
                        drop(slot);
                    });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => drop(slot),
            }
        }
    }
}

/// A bounded pool of crypto threads. The threads end when the pool is dropped and the queue
/// has drained.
pub(crate) struct CryptoPool {
    batches: Sender<Vec<Job>>,
    /// Jobs queued or running, bounded by `capacity`.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    threads: usize,
}

impl CryptoPool {
    /// Starts `threads` threads sharing a queue of at most `capacity` jobs; answers are
    /// delivered on `runtime` when a writer's channel is full.
    pub(crate) fn new(
        threads: usize,
        capacity: usize,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (batches, queue) = crossbeam_channel::unbounded::<Vec<Job>>();
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..threads {
            let queue: Receiver<Vec<Job>> = queue.clone();
            let queued = Arc::clone(&queued);
            let mut outbox = Outbox {
                answers: Vec::new(),
                runtime: runtime.clone(),
            };
            std::thread::Builder::new()
                .name(format!("sealgate-crypto-{i}"))
                .spawn(move || work(&queue, &queued, &mut outbox))?;
        }
        Ok(Self {
            batches,
            queued,
            capacity,
            threads,
        })
    }

    /// Queues as many of `jobs` as the queue has room for, in order, and returns the rest
    /// (refused: the node is busy). Jobs of one call are spread over the threads in a few
    /// hand-offs rather than one per job.
    pub(crate) fn run_batch(&self, mut jobs: Vec<Job>) -> Vec<Job> {
        let mut accepted = 0;
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                accepted = jobs.len().min(self.capacity.saturating_sub(queued));
                Some(queued + accepted)
            });
        let refused = jobs.split_off(accepted);
        if !jobs.is_empty() {
            let chunk = jobs.len().div_ceil(self.threads);
            while !jobs.is_empty() {
                let rest = jobs.split_off(chunk.min(jobs.len()));
                if let Err(e) = self.batches.send(std::mem::replace(&mut jobs, rest)) {
                    // No thread is left (cannot happen while the pool lives): undo the count.
                    self.queued.fetch_sub(e.0.len(), Ordering::AcqRel);
                }
            }
        }
        refused
    }

    /// Jobs queued or running.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// A crypto thread: runs jobs while there are any (for at most [`BATCH_TIME`] between
/// flushes), then delivers their answers.
fn work(queue: &Receiver<Vec<Job>>, queued: &AtomicUsize, outbox: &mut Outbox) {
    while let Ok(batch) = queue.recv() {
        let mut started = Instant::now();
        let mut batch = Some(batch);
        while let Some(jobs) = batch.take() {
            for job in jobs {
                // A job answers its own panics (see the server); this is the last line, so a
                // bug cannot take a crypto thread or the queue count with it.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(outbox)));
                queued.fetch_sub(1, Ordering::AcqRel);
                if started.elapsed() >= BATCH_TIME {
                    outbox.flush();
                    started = Instant::now();
                }
            }
            batch = queue.try_recv().ok();
        }
        outbox.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;

    fn job(f: impl FnOnce(&mut Outbox) + Send + 'static) -> Job {
        Box::new(f)
    }

    #[tokio::test]
    async fn runs_jobs_in_order_and_refuses_beyond_capacity() {
        let pool = CryptoPool::new(1, 2, &tokio::runtime::Handle::current()).expect("threads");
        let (gate_tx, gate_rx) = std_mpsc::channel::<()>();
        let (done_tx, done_rx) = std_mpsc::channel();
        let (d1, d2) = (done_tx.clone(), done_tx.clone());
        let refused = pool.run_batch(vec![
            job(move |_| {
                let _ = gate_rx.recv();
                let _ = d1.send(1);
            }),
            job(move |_| {
                let _ = d2.send(2);
            }),
            job(|_| {}),
        ]);
        assert_eq!(refused.len(), 1, "the third is beyond the capacity of 2");
        assert_eq!(pool.queued(), 2);
        assert_eq!(pool.run_batch(vec![job(|_| {})]).len(), 1, "still full");
        gate_tx.send(()).expect("open the gate");
        let got: Vec<i32> = done_rx.iter().take(2).collect();
        assert_eq!(got, vec![1, 2]);
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_take_the_thread_or_the_count() {
        let pool = CryptoPool::new(1, 4, &tokio::runtime::Handle::current()).expect("threads");
        let (done_tx, done_rx) = std_mpsc::channel();
        let refused = pool.run_batch(vec![
            job(|_| panic!("a bug")),
            job(move |_| {
                let _ = done_tx.send(());
            }),
        ]);
        assert!(refused.is_empty());
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the job after the panic ran");
        for _ in 0..100 {
            if pool.queued() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.queued(), 0);
    }

    #[tokio::test]
    async fn answers_reach_their_writers() {
        let pool = CryptoPool::new(2, 64, &tokio::runtime::Handle::current()).expect("threads");
        // A channel with room for one answer: the rest wait on the runtime, none is lost.
        let (tx, mut rx) = mpsc::channel(1);
        let slots = Arc::new(tokio::sync::Semaphore::new(20));
        let jobs = (0..20u8)
            .map(|i| {
                let tx = tx.clone();
                let slot = Arc::clone(&slots).try_acquire_owned().expect("slot");
                job(move |out| out.send(tx, Bytes::from(vec![i]), slot))
            })
            .collect();
        assert!(pool.run_batch(jobs).is_empty());
        drop(tx);
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.push(b[0]);
        }
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<u8>>());
        assert_eq!(pool.queued(), 0);
        // Every slot was freed once its answer was handed over.
        assert_eq!(slots.available_permits(), 20);
    }
}
