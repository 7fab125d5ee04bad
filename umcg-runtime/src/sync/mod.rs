//! Synchronisation primitives for workers and plain threads, after `std::sync`: a
//! [`Mutex`], a [`Condvar`] and an unbounded MPSC [`channel`].
//!
//! A worker that waits in one of them parks **through its server** (an IDLE transition;
//! the server runs another worker meanwhile) instead of sleeping in the kernel where its
//! server cannot see it; a plain thread parks with `std::thread::park`. Both kinds of
//! caller may share one primitive. The building blocks are [`park`](crate::park) and
//! [`Unparker`](crate::Unparker).
//!
//! # Invariants and conventions
//!
//! - Every wait registers itself (on a queue, or with a bit in the channel's tail), then
//!   re-checks the condition it waits for, then parks, and loops on spurious returns:
//!   a wakeup between the check and the park is never lost.
//! - Internal locks (the waiter queues, the channel's wake slot) are held for a few
//!   instructions, always inside [`no_preempt`](crate::kernel::no_preempt) so that a
//!   preemption kick never parks a worker that holds one. Wakes happen after the internal
//!   lock is released (and still inside `no_preempt`).
//! - No poisoning: a panic while a [`MutexGuard`] is held unlocks the mutex, and the next
//!   `lock` returns the guard directly (as parking_lot).
//! - Fairness: [`Mutex`] lets a running caller barge past parked waiters, and hands the
//!   lock to a waiter that lost once; waiters are served in FIFO order (see
//!   `sync/mutex.rs`). [`Condvar`] wakes in FIFO order.
//! - Timed waits ([`Condvar::wait_timeout`], [`Receiver::recv_timeout`]) cannot park
//!   through the server (park has no deadline): on a worker they sleep in
//!   `std::thread::park_timeout` inside [`blocking`](crate::blocking), so the server still
//!   runs others; untimed waits never touch the kernel's sleep on a worker.
//!
//! Each file's module doc gives its protocol as numbered steps and its memory-ordering
//! pairs. Designs read (not copied): parking_lot's `raw_mutex.rs` (barging, handoff after
//! unfairness), Go's `sync.Mutex` (the woken flag, starvation handoff), crossbeam-utils'
//! `parker.rs` (states on one word), crossbeam-channel's list flavour (blocks of slots).

mod channel;
mod condvar;
mod mutex;
mod waiter;

pub use channel::{
    IntoIter, Iter, Receiver, RecvError, RecvTimeoutError, SendError, Sender, TryIter,
    TryRecvError, channel,
};
pub use condvar::{Condvar, WaitTimeoutResult};
pub use mutex::{Mutex, MutexGuard};
