//! The futex under `--cfg umcg_loom`: [`futex_wait`] and [`futex_wake`] emulated with loom's
//! `Mutex` and `Condvar`, so that loom can explore every interleaving of code built on the
//! futex (idea from shadow's `src/lib/vasi-sync/src/sync.rs`, which does the same for its
//! futex-based primitives).
//!
//! Model:
//! 1. One global table (a `loom::lazy_static!`, fresh in every loom execution) maps a word's
//!    address to a condition variable and a count of sleepers. One loom `Mutex` guards the
//!    whole table; it plays the kernel's futex hash-bucket lock.
//! 2. Wait = lock the table, compare the word (a `Relaxed` load: like the kernel's
//!    comparison, it gives the caller no acquire edge; see [`super::futex`]), return
//!    [`FutexWait::ValueChanged`] if it differs, else count ourselves as a sleeper and wait on
//!    the address's condvar, which releases the table lock atomically. Return
//!    [`FutexWait::Woken`].
//! 3. Wake = lock the table, `notify_all` the address's condvar, reset its sleeper count.
//!    Because the waker's store to the word is sequenced before it takes the table lock and
//!    the waiter compares under the same lock, either the waiter's comparison sees the store,
//!    or the waiter is already a sleeper when the wake runs: no lost wakeup, as with the real
//!    futex. A waker that skips the wake leaves the waiter asleep, and loom reports the
//!    deadlock.
//!
//! Differences from the kernel, all allowed by the futex contract (callers loop on their
//! predicate):
//! - `futex_wake` wakes every sleeper on the address whatever `n` is; the extra ones see a
//!   spurious [`FutexWait::Woken`]. It returns how many it woke.
//! - Deadlines are ignored: a wait with a deadline sleeps until woken. A model whose progress
//!   depends on a timeout is therefore reported as a deadlock, which is what we want: the
//!   protocols checked under loom must not need timeouts to make progress.
//! - [`FutexWait::Interrupted`] and [`FutexWait::TimedOut`] are never returned.
//! - Addresses are the addresses of loom's atomic handles; a freed word's address reused by a
//!   new word shares its table entry, which can only cause spurious wakeups.

use std::sync::PoisonError;

use loom::sync::{Arc, Condvar, Mutex};
use umcg_abi::sync::{AtomicU32, Ordering};

use super::futex::{Deadline, FutexWait};

/// One address that has had a sleeper.
struct Slot {
    addr: usize,
    condvar: Arc<Condvar>,
    sleepers: usize,
}

loom::lazy_static! {
    static ref TABLE: Mutex<Vec<Slot>> = Mutex::new(Vec::new());
}

fn addr_of(word: &AtomicU32) -> usize {
    (word as *const AtomicU32).addr()
}

/// Model of [`super::futex::futex_wait`] (futex(2) `FUTEX_WAIT_BITSET`); `deadline` is
/// ignored (see the module doc).
pub fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<Deadline>) -> FutexWait {
    let _ = deadline;
    let addr = addr_of(word);
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if word.load(Ordering::Relaxed) != expected {
        return FutexWait::ValueChanged;
    }
    let condvar = match table.iter_mut().find(|s| s.addr == addr) {
        Some(slot) => {
            slot.sleepers += 1;
            Arc::clone(&slot.condvar)
        }
        None => {
            let condvar = Arc::new(Condvar::new());
            table.push(Slot {
                addr,
                condvar: Arc::clone(&condvar),
                sleepers: 1,
            });
            condvar
        }
    };
    // The sleeper count is reset by the waker, so nothing to undo after waking.
    drop(condvar.wait(table).unwrap_or_else(PoisonError::into_inner));
    FutexWait::Woken
}

/// Model of [`super::futex::futex_wake`] (futex(2) `FUTEX_WAKE`): wakes every sleeper on
/// `word` (see the module doc) and returns how many there were.
pub fn futex_wake(word: &AtomicU32, n: i32) -> usize {
    debug_assert!(n >= 1, "futex_wake(n = {n})");
    let addr = addr_of(word);
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    match table.iter_mut().find(|s| s.addr == addr) {
        Some(slot) if slot.sleepers > 0 => {
            slot.condvar.notify_all();
            core::mem::take(&mut slot.sleepers)
        }
        _ => 0,
    }
}
