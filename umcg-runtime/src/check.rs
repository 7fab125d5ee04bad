//! Invariant checks for soak runs and debugging: off by default (one `Relaxed` load per
//! check site when off), switched on process-wide with [`enable`].
//!
//! What is checked, independently of the mechanisms that are meant to guarantee it:
//!
//! - **No double enqueue** (the Tor KIST lesson). Every worker carries a membership count,
//!   kept apart from the `queued` flag that prevents double enqueue by construction: +1 when
//!   it enters a policy queue or a handoff slot, −1 when it is picked to run. A count above 1
//!   after an enqueue, or a pick of a worker whose count was 0, is a violation. A worker that
//!   comes off the kernel's idle-worker list while already queued in the runtime (the
//!   emulator queued it twice) is one too.
//! - **At most one worker on a server's CPU.** When a server wakes, the worker recorded in
//!   its slot must have left the CPU (not RUNNING in the same run with the same server); a
//!   worker that switches directly must be the one recorded.
//! - **Transitions along the spec's tables** (§2.6) on the runtime's side: a worker leaving
//!   the CPU must have been RUNNING, a worker started must be IDLE. (The emulated kernel
//!   checks its own transitions with compare-and-swap and reports a violation otherwise.)
//! - **Bounded waits**: with checks on, a worker records when it became runnable; a watchdog
//!   ([`Runtime::stalled`](crate::Runtime::stalled)) reports workers runnable for longer than
//!   a bound, and [`Runtime::debug_dump`](crate::Runtime::debug_dump) prints every worker's
//!   and server's state for the report.
//!
//! A violation is printed at once and recorded ([`violations`]); the runtime keeps going so
//! that the soak harness can report every violation and dump the state, rather than a
//! server thread dying mid-protocol.
//!
//! # Memory ordering
//!
//! The enable flag is `Relaxed` (a check that starts late is harmless). The membership count
//! is an `AcqRel` read-modify-write; `runnable_since` is `Relaxed` (a diagnostic timestamp).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicU64 = AtomicU64::new(0);
static FIRST: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// How many violation messages are kept (all are counted).
const KEEP: usize = 64;

/// Turn the checks on for the whole process (they cannot be turned off again: counts kept
/// while on would be wrong after a pause).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether [`enable`] was called.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Number of violations seen so far.
pub fn violation_count() -> u64 {
    COUNT.load(Ordering::Acquire)
}

/// The first violations seen (at most 64 messages).
pub fn violations() -> Vec<String> {
    FIRST.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Record a violation.
pub(crate) fn violation(msg: String) {
    eprintln!("umcg check: VIOLATION: {msg}");
    COUNT.fetch_add(1, Ordering::AcqRel);
    let mut v = FIRST.lock().unwrap_or_else(|e| e.into_inner());
    if v.len() < KEEP {
        v.push(msg);
    }
}

/// Nanoseconds on the monotonic clock (for `runnable_since`; never 0).
pub(crate) fn now_ns() -> u64 {
    crate::sys::futex::monotonic_now_ns().max(1)
}
