//! A precise timer for the open loop's schedule. tokio's timer fires on 1 ms ticks, which
//! would add up to a millisecond to every open-loop latency (measured from the intended
//! start); a dedicated thread waiting on a condition variable wakes within tens of
//! microseconds instead. It costs one thread and one small allocation per sleep, and is
//! only used with `--rate`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// One sleeper: whether its time came, and whom to wake.
#[derive(Debug, Default)]
struct Slot(Mutex<(bool, Option<Waker>)>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, (bool, Option<Waker>)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A heap entry: deadline, a sequence number to order equal deadlines, the slot.
struct Entry(Instant, u64, Arc<Slot>);

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    next_seq: u64,
    closed: bool,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The timer thread; it stops when the pacer is dropped.
pub(crate) struct Pacer {
    inner: Arc<Inner>,
}

impl Pacer {
    /// Starts the timer thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let thread = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || run(&thread))?;
        Ok(Self { inner })
    }

    /// A future ready at `deadline`.
    pub(crate) fn sleep_until(&self, deadline: Instant) -> Sleep<'_> {
        Sleep {
            pacer: self,
            deadline,
            slot: None,
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.changed.notify_one();
    }
}

fn run(inner: &Inner) {
    let mut state = inner.lock();
    loop {
        if state.closed {
            // Wake whoever still waits; their futures see the pacer gone only by being
            // dropped, so this is for tidiness.
            for Reverse(Entry(_, _, slot)) in state.heap.drain() {
                wake(&slot);
            }
            return;
        }
        let now = Instant::now();
        while let Some(Reverse(Entry(deadline, _, _))) = state.heap.peek() {
            if *deadline > now {
                break;
            }
            if let Some(Reverse(Entry(_, _, slot))) = state.heap.pop() {
                wake(&slot);
            }
        }
        state = match state.heap.peek() {
            Some(Reverse(Entry(deadline, _, _))) => {
                let wait = deadline.saturating_duration_since(now);
                inner
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => inner
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

fn wake(slot: &Slot) {
    let waker = {
        let mut s = slot.lock();
        s.0 = true;
        s.1.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// [`Pacer::sleep_until`].
pub(crate) struct Sleep<'a> {
    pacer: &'a Pacer,
    deadline: Instant,
    slot: Option<Arc<Slot>>,
}

impl Future for Sleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let slot = match &self.slot {
            Some(slot) => Arc::clone(slot),
            None => {
                let slot = Arc::new(Slot::default());
                let inner = &self.pacer.inner;
                let mut state = inner.lock();
                let seq = state.next_seq;
                state.next_seq += 1;
                let earliest = state
                    .heap
                    .peek()
                    .is_none_or(|Reverse(Entry(d, _, _))| self.deadline < *d);
                state
                    .heap
                    .push(Reverse(Entry(self.deadline, seq, Arc::clone(&slot))));
                drop(state);
                if earliest {
                    inner.changed.notify_one();
                }
                self.slot = Some(Arc::clone(&slot));
                slot
            }
        };
        let mut s = slot.lock();
        if s.0 {
            return Poll::Ready(());
        }
        s.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_on_time_and_in_order() {
        let pacer = Pacer::start().unwrap();
        let start = Instant::now();
        let late = pacer.sleep_until(start + Duration::from_millis(30));
        let early = pacer.sleep_until(start + Duration::from_millis(10));
        early.await;
        let woke = start.elapsed();
        assert!(
            woke >= Duration::from_millis(10) && woke < Duration::from_millis(25),
            "{woke:?}"
        );
        late.await;
        assert!(start.elapsed() >= Duration::from_millis(30));
        pacer.sleep_until(start).await; // already past
    }
}
