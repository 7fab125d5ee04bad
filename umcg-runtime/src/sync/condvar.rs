//! [`Condvar`]: a condition variable whose waits park the worker through its server.
//!
//! # Protocol
//!
//! 1. `wait`: push a waiter record on the condvar's FIFO (queue lock, inside
//!    `no_preempt`), *then* unlock the mutex, then park until the record's outcome is
//!    `NOTIFIED` (looping on spurious returns), then lock the mutex again. Because the
//!    record is queued before the mutex is released, a notifier that changed the predicate
//!    under the mutex after the waiter checked it always finds the record: no lost wakeup.
//! 2. `notify_one`: pop the front record and set `NOTIFIED` under the queue lock, unpark it
//!    after releasing the lock. `notify_all`: take the whole queue the same way.
//! 3. `wait_timeout`: the same with a timed record (the caller sleeps in
//!    `std::thread::park_timeout`, inside `blocking` on a worker so its server runs others;
//!    see `waiter.rs`). On timeout it removes its record under the queue lock; if the record
//!    is gone, a notifier popped it first and the wait counts as notified (so a
//!    `notify_one` is never swallowed by a waiter that then reports a timeout).
//!
//! Waiters wake and then contend for the mutex (no requeueing onto the mutex queue as
//! parking_lot does; a `notify_all` of N waiters costs N wakeups).
//!
//! # Memory ordering
//!
//! The outcome store/load is the `Waiter` protocol (Release/Acquire, see `waiter.rs`). The
//! waiter count lets `notify_*` skip the queue lock when nobody waits; it is written under
//! the queue lock and read `Relaxed`: a waiter registers before unlocking the mutex
//! (Release) and a notifier that changed the predicate under the mutex locked it after
//! (Acquire), so the notifier's read happens after the registration and sees it. A
//! notifier that changes the predicate without the mutex gets no guarantee (as with std).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::kernel::no_preempt;

use super::mutex::MutexGuard;
use super::waiter::{WaitQueue, Waiter};

/// Waiter outcome: notified.
const NOTIFIED: u32 = 1;

/// A condition variable for workers and plain threads, used with [`Mutex`](super::Mutex).
///
/// As [`std::sync::Condvar`], without poisoning (the methods return the guard directly).
/// Waiting workers park through their server. Waits may wake spuriously: check the
/// condition in a loop, or use [`wait_while`](Condvar::wait_while). One condvar may be
/// used with several mutexes.
///
/// [`wait_timeout`](Condvar::wait_timeout) works on workers too: there the timed sleep is
/// a blocking call (`std::thread::park_timeout` inside [`blocking`](crate::blocking)), so
/// the server runs other workers meanwhile, at the cost of a kernel sleep instead of a park
/// through the server.
///
/// ```
/// use std::sync::Arc;
/// use umcg_runtime::sync::{Condvar, Mutex};
///
/// let pair = Arc::new((Mutex::new(false), Condvar::new()));
/// let p2 = pair.clone();
/// std::thread::spawn(move || {
///     *p2.0.lock() = true;
///     p2.1.notify_one();
/// });
/// let g = pair.1.wait_while(pair.0.lock(), |ready| !*ready);
/// assert!(*g);
/// ```
pub struct Condvar {
    queue: WaitQueue<Arc<Waiter>>,
    /// Length of the queue (written under the queue lock).
    waiters: AtomicUsize,
}

/// Whether a timed wait returned because its time ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// True if the wait timed out (it was not notified).
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

impl Condvar {
    /// A condvar with no waiters.
    pub const fn new() -> Self {
        Condvar {
            queue: WaitQueue::new(),
            waiters: AtomicUsize::new(0),
        }
    }

    /// Unlock the guard's mutex, park until notified, lock it again. May wake spuriously.
    pub fn wait<'a, T: ?Sized>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        let m = MutexGuard::mutex(&guard);
        let w = Waiter::new();
        self.register(&w);
        drop(guard);
        let outcome = w.wait();
        debug_assert_eq!(outcome, NOTIFIED);
        m.lock()
    }

    /// Wait while `condition` holds (checked under the lock, first before waiting).
    pub fn wait_while<'a, T: ?Sized, F>(
        &self,
        mut guard: MutexGuard<'a, T>,
        mut condition: F,
    ) -> MutexGuard<'a, T>
    where
        F: FnMut(&mut T) -> bool,
    {
        while condition(&mut *guard) {
            guard = self.wait(guard);
        }
        guard
    }

    /// As [`wait`](Condvar::wait), giving up after `dur`. May wake spuriously (then
    /// `timed_out()` is false).
    pub fn wait_timeout<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        dur: Duration,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
        let Some(deadline) = Instant::now().checked_add(dur) else {
            // Too far to represent: wait without a deadline.
            return (self.wait(guard), WaitTimeoutResult(false));
        };
        let m = MutexGuard::mutex(&guard);
        let w = Waiter::new_timed();
        self.register(&w);
        drop(guard);
        let timed_out = match w.wait_until(deadline) {
            Some(_) => false,
            None => no_preempt(|| {
                let mut q = self.queue.lock();
                match q.iter().position(|x| Arc::ptr_eq(x, &w)) {
                    Some(i) => {
                        q.remove(i);
                        self.waiters.store(q.len(), Ordering::Relaxed);
                        true
                    }
                    None => {
                        // Popped by a notifier, which set the outcome under this lock.
                        debug_assert_eq!(w.outcome(), NOTIFIED);
                        false
                    }
                }
            }),
        };
        (m.lock(), WaitTimeoutResult(timed_out))
    }

    /// Wait while `condition` holds, for at most `dur` in total. Returns the guard and
    /// whether the time ran out with the condition still true.
    pub fn wait_timeout_while<'a, T: ?Sized, F>(
        &self,
        mut guard: MutexGuard<'a, T>,
        dur: Duration,
        mut condition: F,
    ) -> (MutexGuard<'a, T>, WaitTimeoutResult)
    where
        F: FnMut(&mut T) -> bool,
    {
        let start = Instant::now();
        loop {
            if !condition(&mut *guard) {
                return (guard, WaitTimeoutResult(false));
            }
            let Some(left) = dur.checked_sub(start.elapsed()) else {
                return (guard, WaitTimeoutResult(true));
            };
            guard = self.wait_timeout(guard, left).0;
        }
    }

    /// Wake the longest-waiting waiter, if any.
    pub fn notify_one(&self) {
        if self.waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        no_preempt(|| {
            let mut q = self.queue.lock();
            let w = q.pop_front();
            self.waiters.store(q.len(), Ordering::Relaxed);
            if let Some(w) = &w {
                w.set(NOTIFIED);
            }
            drop(q);
            if let Some(w) = w {
                w.unpark();
            }
        });
    }

    /// Wake every waiter.
    pub fn notify_all(&self) {
        if self.waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        no_preempt(|| {
            let mut q = self.queue.lock();
            let all = std::mem::take(&mut *q);
            self.waiters.store(0, Ordering::Relaxed);
            for w in &all {
                w.set(NOTIFIED);
            }
            drop(q);
            for w in all {
                w.unpark();
            }
        });
    }

    fn register(&self, w: &Arc<Waiter>) {
        no_preempt(|| {
            let mut q = self.queue.lock();
            q.push_back(w.clone());
            self.waiters.store(q.len(), Ordering::Relaxed);
        });
    }
}

impl Default for Condvar {
    fn default() -> Self {
        Condvar::new()
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar")
            .field("waiters", &self.waiters.load(Ordering::Relaxed))
            .finish()
    }
}
