//! loom models of the futex contract, on the `cfg(umcg_loom)` futex of
//! `umcg_runtime::sys::model`: a store followed by a wake is never lost by a waiter that
//! checks, then waits.
//!
//! ```text
//! RUSTFLAGS="--cfg umcg_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2 \
//!     CARGO_TARGET_DIR=target/loom cargo test -p umcg-runtime --release --test loom_futex
//! ```
#![cfg(umcg_loom)]

use std::sync::atomic::{AtomicBool as StdAtomicBool, Ordering as StdOrdering};

use loom::sync::Arc;
use loom::thread;
use umcg_abi::sync::{AtomicU32, Ordering};
use umcg_runtime::sys::{Deadline, FutexWait, futex_wait, futex_wake};

/// Store-then-wake against check-then-wait on one word: the waiter always terminates (a lost
/// wakeup would leave it asleep, which loom reports as a deadlock).
///
/// So that the model cannot pass vacuously, the outcomes are tallied across executions (in
/// std atomics, outside the model): loom must have explored an execution where the waiter
/// slept and the wake found it (wake returned 1, wait returned Woken) and one where the store
/// landed between the check and the wait (ValueChanged).
#[test]
fn store_then_wake_is_never_lost() {
    static WOKE_A_SLEEPER: StdAtomicBool = StdAtomicBool::new(false);
    static WOKEN: StdAtomicBool = StdAtomicBool::new(false);
    static VALUE_CHANGED: StdAtomicBool = StdAtomicBool::new(false);
    loom::model(|| {
        let word = Arc::new(AtomicU32::new(0));
        let waker = {
            let word = Arc::clone(&word);
            thread::spawn(move || {
                // Release pairs with the waiter's Acquire load.
                word.store(1, Ordering::Release);
                if futex_wake(&word, 1) == 1 {
                    WOKE_A_SLEEPER.store(true, StdOrdering::Relaxed);
                }
            })
        };
        while word.load(Ordering::Acquire) != 1 {
            match futex_wait(&word, 0, None) {
                FutexWait::Woken => WOKEN.store(true, StdOrdering::Relaxed),
                FutexWait::ValueChanged => VALUE_CHANGED.store(true, StdOrdering::Relaxed),
                other => panic!("the model never returns {other:?}"),
            }
        }
        waker.join().unwrap();
    });
    assert!(WOKE_A_SLEEPER.load(StdOrdering::Relaxed));
    assert!(WOKEN.load(StdOrdering::Relaxed));
    assert!(VALUE_CHANGED.load(StdOrdering::Relaxed));
}

/// Two waiters, one wake of all: both terminate. A deadline is passed and ignored by the
/// model, so it must not change the outcome.
#[test]
fn wake_all_releases_two_waiters() {
    loom::model(|| {
        let word = Arc::new(AtomicU32::new(0));
        let waiter = {
            let word = Arc::clone(&word);
            thread::spawn(move || {
                while word.load(Ordering::Acquire) != 1 {
                    futex_wait(&word, 0, Some(Deadline::Monotonic(0)));
                }
            })
        };
        let waker = {
            let word = Arc::clone(&word);
            thread::spawn(move || {
                word.store(1, Ordering::Release);
                futex_wake(&word, i32::MAX);
            })
        };
        while word.load(Ordering::Acquire) != 1 {
            futex_wait(&word, 0, None);
        }
        waiter.join().unwrap();
        waker.join().unwrap();
    });
}

/// A word that does not hold the expected value is reported, not slept on.
#[test]
fn mismatch_is_value_changed() {
    loom::model(|| {
        let word = AtomicU32::new(3);
        assert_eq!(futex_wait(&word, 0, None), FutexWait::ValueChanged);
        assert_eq!(futex_wake(&word, 1), 0);
    });
}
