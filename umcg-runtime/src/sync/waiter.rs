//! Waiter records and the small internal queue lock shared by [`Mutex`](super::Mutex),
//! [`Condvar`](super::Condvar) and the channel.
//!
//! A [`Waiter`] is one blocked call: a state word (`WAITING` until a waker stores the
//! outcome) and a [`Wake`] handle. It is reference-counted: the queue holds one reference
//! and the waker keeps it from the pop (under the queue lock, where it stores the outcome)
//! until the unpark (after releasing the lock), so a waiter that
//! sees its outcome early (a spurious park return) and goes away never leaves the waker
//! with a dangling record. Unparks that arrive after their wait has ended are spurious
//! returns of a later [`park`](crate::park), which every wait loop tolerates.
//!
//! # Parking in both worlds
//!
//! [`Wake::current`] is the caller's [`Unparker`]: a worker parks through its server (an
//! IDLE transition; the server runs another worker), a plain thread with
//! `std::thread::park`. A *timed* wait cannot park through the server (park has no
//! deadline), so [`Wake::current_timed`] names the OS thread instead and [`park_until`]
//! sleeps with `std::thread::park_timeout`; on a worker that sleep runs inside
//! [`blocking`](crate::blocking), so the emulated block hook hands the server to another
//! worker meanwhile and the wake hook requeues the worker afterwards. Nothing polls and
//! nothing is spawned.
//!
//! # The queue lock
//!
//! [`WaitQueue`] is a `std::sync::Mutex` around a `VecDeque`, held for a push, a pop or a
//! short scan. On a worker it must be taken inside [`no_preempt`](crate::kernel::no_preempt)
//! (every caller does), so a preemption kick never parks a worker that holds it; contention
//! on it is between at most one running worker per server plus plain threads, each holding
//! it for a few hundred nanoseconds at most, so std's short spin-then-futex is the right
//! tool.
//!
//! # Memory ordering
//!
//! The waker's `state.store(outcome, Release)` ([`Waiter::set`], under the queue lock)
//! pairs with the waiter's `load(Acquire)` in [`Waiter::wait`]/[`Waiter::wait_until`]:
//! whatever the waker wrote before (the protected data on a mutex handoff, the predicate
//! before a notify) is visible to the woken waiter. A timed-out waiter that finds its record
//! gone from the queue reads the outcome after taking the queue lock, which orders it after
//! the waker's store.
//! [`Waiter::reset`] is `Relaxed`: the waiter writes it before pushing itself under the
//! queue lock, and a waker reads the record only after popping it under the same lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, MutexGuard};
use std::thread::Thread;
use std::time::Instant;

use crate::park::Unparker;
use crate::worker;

/// The outcome of a waiter that has not been woken yet.
pub(crate) const WAITING: u32 = 0;

/// How to wake a blocked caller.
#[derive(Clone, Debug)]
pub(crate) enum Wake {
    /// Untimed waits: park through the server (worker) or `std::thread::park` (thread).
    Park(Unparker),
    /// Timed waits: the OS thread, asleep in `std::thread::park_timeout`.
    Thread(Thread),
}

impl Wake {
    /// The handle for an untimed wait of the caller (see [`park_until`] with `None`).
    pub(crate) fn current() -> Wake {
        Wake::Park(Unparker::current())
    }

    /// The handle for a timed wait of the caller (see [`park_until`] with `Some`).
    pub(crate) fn current_timed() -> Wake {
        Wake::Thread(std::thread::current())
    }

    /// Make the owner's current or next park (of the matching kind) return.
    pub(crate) fn wake(&self) {
        match self {
            Wake::Park(u) => u.unpark(),
            Wake::Thread(t) => t.unpark(),
        }
    }
}

/// Park the caller once: untimed through [`crate::park`] (pairs with [`Wake::current`]);
/// with a deadline in `std::thread::park_timeout`, inside [`crate::blocking`] on a worker
/// (pairs with [`Wake::current_timed`]). May return spuriously. Returns false when the
/// deadline has passed (nothing was slept).
pub(crate) fn park_until(deadline: Option<Instant>) -> bool {
    let Some(deadline) = deadline else {
        crate::park();
        return true;
    };
    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
        return false;
    };
    if left.is_zero() {
        return false;
    }
    if worker::current_worker().is_some() {
        crate::blocking(|| std::thread::park_timeout(left));
    } else {
        std::thread::park_timeout(left);
    }
    true
}

/// One blocked call (see the module doc).
#[derive(Debug)]
pub(crate) struct Waiter {
    state: AtomicU32,
    wake: Wake,
    timed: bool,
}

impl Waiter {
    /// A record for an untimed wait of the caller.
    pub(crate) fn new() -> Arc<Waiter> {
        Arc::new(Waiter {
            state: AtomicU32::new(WAITING),
            wake: Wake::current(),
            timed: false,
        })
    }

    /// A record for a timed wait of the caller.
    pub(crate) fn new_timed() -> Arc<Waiter> {
        Arc::new(Waiter {
            state: AtomicU32::new(WAITING),
            wake: Wake::current_timed(),
            timed: true,
        })
    }

    /// Back to `WAITING` before the record is queued again (under the queue lock).
    pub(crate) fn reset(&self) {
        self.state.store(WAITING, Ordering::Relaxed);
    }

    /// Store the outcome (never `WAITING`). Called by the waker that popped the record,
    /// under the queue lock; it calls [`Waiter::unpark`] after releasing the lock.
    pub(crate) fn set(&self, outcome: u32) {
        debug_assert_ne!(outcome, WAITING);
        self.state.store(outcome, Ordering::Release);
    }

    /// Wake the owner (after [`Waiter::set`], outside the queue lock, still inside
    /// `no_preempt` on a worker so that the woken record is not left unwoken by a kick).
    pub(crate) fn unpark(&self) {
        self.wake.wake();
    }

    /// Park until woken; returns the outcome. Untimed records only.
    pub(crate) fn wait(&self) -> u32 {
        debug_assert!(!self.timed);
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s != WAITING {
                return s;
            }
            park_until(None);
        }
    }

    /// Park until woken (`Some(outcome)`) or until `deadline` (`None`). On `None` the
    /// caller takes the record off its queue under the queue lock; if it is no longer
    /// there, a waker popped it and stored the outcome under that lock: read it with
    /// [`Waiter::outcome`].
    pub(crate) fn wait_until(&self, deadline: Instant) -> Option<u32> {
        debug_assert!(self.timed);
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s != WAITING {
                return Some(s);
            }
            if !park_until(Some(deadline)) {
                return None;
            }
        }
    }

    /// The stored outcome (`WAITING` if none yet).
    pub(crate) fn outcome(&self) -> u32 {
        self.state.load(Ordering::Acquire)
    }
}

/// A FIFO of waiting calls behind a short internal lock (see the module doc).
#[derive(Debug)]
pub(crate) struct WaitQueue<E> {
    q: std::sync::Mutex<VecDeque<E>>,
}

impl<E> WaitQueue<E> {
    pub(crate) const fn new() -> Self {
        WaitQueue {
            q: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// Take the queue lock. On a worker: only inside `no_preempt`. Poisoning is ignored:
    /// nothing panics while holding it except an allocation failure, which aborts.
    pub(crate) fn lock(&self) -> MutexGuard<'_, VecDeque<E>> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }
}
