//! [`Mutex`]: a lock whose contended waits park the worker through its server.
//!
//! # State
//!
//! One atomic byte, three bits:
//! - `LOCKED`: held.
//! - `QUEUED`: the waiter queue is non-empty. Set and cleared only under the queue lock,
//!   together with the push or pop that makes it true or false.
//! - `WOKEN`: an unlock has woken a waiter that has not retried yet. Later unlocks then
//!   wake nobody (the woken one is on its way; waking more would be a thundering herd, the
//!   lesson of Go's `sync.Mutex`). The woken waiter clears it in the CAS of its next
//!   attempt, whether that attempt takes the lock or queues it again.
//!
//! # Protocol
//!
//! 1. Lock fast path: CAS `0 => LOCKED` (Acquire). Unlock fast path: CAS `LOCKED => 0`
//!    (Release). One atomic operation each.
//! 2. Lock slow path, barging: while `LOCKED` is clear, CAS it set (keeping the other
//!    bits): a running caller may take a free lock ahead of queued ones.
//! 3. Lock slow path, queueing, under the queue lock inside `no_preempt`: CAS
//!    `s => s | QUEUED` from a state with `LOCKED` set (or, if `LOCKED` is clear by now, take
//!    the lock instead), then push the waiter record. Then park until the record's outcome
//!    is set, looping on spurious returns. The `QUEUED` bit and the `LOCKED` check are one
//!    atomic operation on the same word as the holder's unlock CAS, so either the holder's
//!    fast unlock fails (and it takes the slow path, which finds the record), or the waiter
//!    sees the lock free: no lost wakeup.
//! 4. Unlock slow path (`QUEUED` or `WOKEN` set): if `WOKEN` is set, clear `LOCKED` only.
//!    Otherwise, under the queue lock, pop the front waiter and either hand the lock over
//!    (`LOCKED` stays set, outcome `OWNER`) or release it and mark it woken (`LOCKED` cleared,
//!    `WOKEN` set, outcome `RETRY`); `QUEUED` stays set iff the queue is still non-empty.
//!    The unpark comes after the queue lock is released, in the same `no_preempt` section.
//! 5. A `RETRY` waiter goes back to step 2. If it loses again it is queued at the *front*
//!    (it keeps its place) and marked for handoff: the next unlock gives it the lock.
//!
//! # Fairness
//!
//! Barging keeps throughput up (a running worker does not wait for a parked one to be
//! scheduled, which on an M:N runtime means a trip through a server's run queue), and the
//! FIFO queue with handoff after one lost race rules out starvation: queued waiters are
//! woken in arrival order, and a woken waiter loses at most one race. If it finds the lock
//! taken, it goes back to the front of the queue and the next unlock hands the lock to it
//! (with no other woken waiter in flight: the one-server test sees exactly two unlocks
//! between a waiter's arrival and its ownership).
//!
//! # No spinning
//!
//! A contended lock parks at once. Servers are pinned one per CPU, so spinning on a worker
//! only helps if the holder runs on another server right now and releases within the spin;
//! on 2 CPUs (shared with other programs) the holder is as likely to be parked or off-CPU,
//! and a spinning worker would keep its server from running the others. Parking hands the
//! server to another worker, which is useful work. Measured (`benches/sync.rs`,
//! `mutex_contended`, 8 workers on 2 servers): a 63-pause spin before queueing made it
//! slower, 642 µs instead of 424 µs per 8,000 increments.
//!
//! # Memory ordering
//!
//! Acquiring CASes (fast path, barging, taking a free lock under the queue lock) are
//! Acquire and pair with the Release of the unlock (the fast CAS, the `fetch_and` or
//! `swap` of the slow path): the data written in a critical section is visible to the next
//! holder. On handoff `LOCKED` never clears; the unlocker's writes reach the new owner
//! through the waiter outcome (`Waiter::set` Release, `Waiter::wait` Acquire). CASes that
//! only set `QUEUED` are Relaxed: the queue lock orders them with the unlocker's slow path.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::kernel::no_preempt;

use super::waiter::{WaitQueue, Waiter};

const LOCKED: u8 = 1;
const QUEUED: u8 = 2;
const WOKEN: u8 = 4;

/// Waiter outcome: the lock was released and this waiter woken; try again.
const RETRY: u32 = 1;
/// Waiter outcome: the lock was handed over; the waiter owns it.
const OWNER: u32 = 2;

/// A queued lock call.
#[derive(Debug)]
struct Entry {
    waiter: Arc<Waiter>,
    /// Lost a race after a wake: the next unlock hands the lock over.
    handoff: bool,
}

/// A mutual-exclusion lock for workers and plain threads.
///
/// Like [`std::sync::Mutex`], with these differences:
/// - A worker that waits for the lock parks **through its server** (which runs another
///   worker meanwhile) instead of sleeping in the kernel with its server stuck behind it.
///   A plain thread parks with `std::thread::park`. Both kinds may share one mutex.
/// - **No poisoning**: a panic while the lock is held unlocks it (the guard's `Drop` runs
///   during unwinding) and the next caller gets the data as it was left, so
///   [`lock`](Mutex::lock) returns the guard directly. Use `catch_unwind` or a flag in `T`
///   if a half-done update must be detected.
/// - Fairness: barging with a FIFO queue and handoff after one lost race (module doc of
///   `sync/mutex.rs`), so a waiter is never starved.
///
/// The uncontended `lock` and unlock are one CAS each. A holder may be preempted at the end
/// of its time slice like any worker code: waiters park and their servers run others.
///
/// ```
/// use std::sync::Arc;
/// use umcg_runtime::sync::Mutex;
///
/// let m = Arc::new(Mutex::new(0));
/// let m2 = m.clone();
/// std::thread::spawn(move || *m2.lock() += 1).join().unwrap();
/// assert_eq!(*m.lock(), 1);
/// ```
pub struct Mutex<T: ?Sized> {
    state: AtomicU8,
    queue: WaitQueue<Entry>,
    data: UnsafeCell<T>,
}

// SAFETY: the mutex hands out access to `T` to one thread at a time (`LOCKED`), so it can
// be shared between threads when `T` can be sent between them, as std's `Mutex`.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}
// SAFETY: moving the mutex moves the `T` (and an empty queue: a borrowed mutex cannot move).
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Mutex {
            state: AtomicU8::new(0),
            queue: WaitQueue::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// Consume the mutex and return the data (no lock needed: it is owned).
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Acquire the lock, parking the caller while another holds it.
    ///
    /// Re-locking a mutex the caller already holds deadlocks (as with std).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        // 0=>LOCKED
        if self
            .state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        MutexGuard::new(self)
    }

    /// Acquire the lock if it is free now (even if others are queued for it).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.try_acquire(false).then(|| MutexGuard::new(self))
    }

    /// Whether the lock is held right now (a racy snapshot, for diagnostics).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & LOCKED != 0
    }

    /// The data, through an exclusive borrow (no lock needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Barging: set `LOCKED` if it is clear (`woken`: also clear `WOKEN`, which the caller
    /// owns). Returns whether the caller now holds the lock.
    fn try_acquire(&self, woken: bool) -> bool {
        let clear = if woken { WOKEN } else { 0 };
        let mut s = self.state.load(Ordering::Relaxed);
        while s & LOCKED == 0 {
            // s=>s|LOCKED
            match self.state.compare_exchange_weak(
                s,
                (s | LOCKED) & !clear,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
        false
    }

    #[cold]
    fn lock_slow(&self) {
        let mut woken = false;
        let mut lost = false;
        let mut waiter: Option<Arc<Waiter>> = None;
        loop {
            if self.try_acquire(woken) {
                return;
            }
            let w = waiter.get_or_insert_with(Waiter::new).clone();
            let queued = no_preempt(|| {
                let mut q = self.queue.lock();
                let clear = if woken { WOKEN } else { 0 };
                let mut s = self.state.load(Ordering::Relaxed);
                loop {
                    if s & LOCKED == 0 {
                        // Released meanwhile: take it instead of queueing. s=>s|LOCKED
                        match self.state.compare_exchange_weak(
                            s,
                            (s | LOCKED) & !clear,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        ) {
                            Ok(_) => return false,
                            Err(now) => s = now,
                        }
                    } else {
                        // LOCKED=>LOCKED|QUEUED
                        match self.state.compare_exchange_weak(
                            s,
                            (s | QUEUED) & !clear,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        ) {
                            Ok(_) => break,
                            Err(now) => s = now,
                        }
                    }
                }
                w.reset();
                let e = Entry {
                    waiter: w.clone(),
                    handoff: lost,
                };
                if lost {
                    q.push_front(e); // It keeps its place.
                } else {
                    q.push_back(e);
                }
                true
            });
            if !queued {
                return;
            }
            // Our CAS cleared WOKEN if we owned it; the outcome says whether we own it again.
            match w.wait() {
                OWNER => return,
                RETRY => {
                    woken = true;
                    lost = true;
                }
                other => unreachable!("mutex waiter outcome {other}"),
            }
        }
    }

    /// Release the lock (the guard's `Drop`).
    fn unlock(&self) {
        // LOCKED=>0
        if self
            .state
            .compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            self.unlock_slow();
        }
    }

    #[cold]
    fn unlock_slow(&self) {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            debug_assert!(s & LOCKED != 0, "unlock of an unlocked mutex");
            if s & QUEUED != 0 && s & WOKEN == 0 {
                break;
            }
            // Nobody to wake (a woken waiter is on its way, or the queue is empty):
            // LOCKED=>0, keeping QUEUED|WOKEN.
            match self.state.compare_exchange_weak(
                s,
                s & !LOCKED,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => s = now,
            }
        }
        no_preempt(|| {
            let mut q = self.queue.lock();
            // Stable under the queue lock: LOCKED is ours, and QUEUED and WOKEN change only
            // under this lock or with LOCKED clear (the woken waiter's barging CAS).
            let e = q
                .pop_front()
                .expect("umcg sync bug: QUEUED set with an empty queue");
            let more = if q.is_empty() { 0 } else { QUEUED };
            if e.handoff {
                // LOCKED|QUEUED=>LOCKED(|QUEUED): the lock passes to the waiter.
                let prev = self.state.swap(LOCKED | more, Ordering::Relaxed);
                debug_assert_eq!(prev, LOCKED | QUEUED);
                e.waiter.set(OWNER);
            } else {
                // LOCKED|QUEUED=>WOKEN(|QUEUED)
                let prev = self.state.swap(WOKEN | more, Ordering::Release);
                debug_assert_eq!(prev, LOCKED | QUEUED);
                e.waiter.set(RETRY);
            }
            drop(q);
            e.waiter.unpark();
        });
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

impl<T> From<T> for Mutex<T> {
    fn from(value: T) -> Self {
        Mutex::new(value)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Mutex");
        match self.try_lock() {
            Some(g) => d.field("data", &&*g),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.finish_non_exhaustive()
    }
}

/// Holds a [`Mutex`] locked; unlocks it when dropped. Not `Send` (as std's guard).
#[must_use = "if unused the Mutex will immediately unlock"]
pub struct MutexGuard<'a, T: ?Sized + 'a> {
    lock: &'a Mutex<T>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard only gives `&T`, so sharing it needs `T: Sync` (as std's guard).
unsafe impl<T: ?Sized + Sync> Sync for MutexGuard<'_, T> {}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// Only after acquiring `LOCKED`.
    fn new(lock: &'a Mutex<T>) -> Self {
        MutexGuard {
            lock,
            _not_send: PhantomData,
        }
    }

    /// The mutex this guard holds (for [`Condvar`](super::Condvar)).
    pub(super) fn mutex(this: &Self) -> &'a Mutex<T> {
        this.lock
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while its holder owns `LOCKED`, so no other
        // reference to the data is live.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow of the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}
