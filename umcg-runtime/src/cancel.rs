//! Bulk cancellation of blocked I/O: one [`CancelToken::cancel`] ends every wait of every
//! worker (or thread) that runs a [`crate::io`] call inside [`CancelToken::run`].
//!
//! ```no_run
//! use umcg_runtime::{Runtime, cancel::{CancelToken, Cancelled}, io};
//! let rt = Runtime::builder().servers(2).build().unwrap();
//! let token = CancelToken::new();
//! let (r, _w) = std::io::pipe().unwrap();
//! let t = token.clone();
//! let h = rt.spawn(move || t.run(|| io::read(&r, &mut [0u8; 16])));
//! token.cancel(); // the read returns the cancellation error, wherever it was
//! assert!(Cancelled::is(&h.join().unwrap().unwrap_err()));
//! rt.shutdown().unwrap();
//! ```
//!
//! # Design: the token's eventfd in every poll set
//!
//! Each `crate::io` wrapper that has to wait sleeps in `ppoll` (inside the block/wake hooks
//! in a worker), and never sleeps anywhere else: reads, writes, sends and receives after
//! the poll are non-blocking attempts (`RWF_NOWAIT`, `MSG_DONTWAIT`), and a sleep is a
//! `ppoll` with a timeout. A token owns one eventfd, created at the first wait that needs
//! it; every wait adds the eventfds of the tokens in scope to its poll set. The protocol:
//!
//! 1. [`CancelToken::run`] pushes the token on the calling thread's scope (a thread-local
//!    stack, so scopes nest: a wait watches every token in scope) and pops it when `f`
//!    returns or unwinds.
//! 2. A wrapper first checks the scope ([`check`]): a cancelled token fails the call at once,
//!    even one that could complete without waiting.
//! 3. If the call would block, the wrapper *arms* (`arm`): for each token in scope,
//!    `waiters += 1`, then, under the token's mutex, take its eventfd (creating it if
//!    needed); then, after releasing the mutex, check `cancelled`. Cancelled: disarm and
//!    fail.
//! 4. It polls `[fd, eventfd...]`. The eventfd readable means cancelled: disarm and fail.
//! 5. [`CancelToken::cancel`]: set `cancelled`, then under the mutex take the eventfd, if
//!    any, and after the mutex add 1 to its counter. The counter is never read, so the
//!    eventfd stays readable for ever: a poll that starts after the write returns at once,
//!    and the write wakes every poll asleep on it (all of them: an eventfd's wait queue is
//!    woken whole, so 1,000 waiters cost one `write`).
//!
//! # Why no cancellation is lost
//!
//! Step 3 and step 5 each touch the mutex; its lock order decides the case:
//! - cancel's critical section first: its `cancelled = true` (before its lock) happens
//!   before the arm's lock, so the arm's check (after its unlock) sees it and fails;
//! - the arm's first: it published the eventfd, so cancel finds it and writes it; the
//!   arming wait's poll, before or after that write, sees the fd readable.
//!
//! There is no window between "checked" and "asleep" to lose a wake in: the cancellation is
//! a level (a readable fd), not an edge (a signal), and the kernel's poll re-evaluates every
//! fd after it is on their wait queues.
//!
//! # Why not signals
//!
//! Interrupting the blocked syscall with a real-time signal (installed without
//! `SA_RESTART`) needs the signal masked outside the interruptible wait: a signal that lands
//! after the wait, while the worker sleeps in the wake hook of [`crate::blocking`] waiting to
//! be run again, ends that hook early (hazard H5): the worker would return to user code
//! while still IDLE and queued. The eventfd needs no signal, no per-thread registration and
//! no resend loop, and costs one fd per token (closed when the last clone drops).
//!
//! # Nothing left behind
//!
//! A wait's registration is its entry in the eventfd's wait queue, which the kernel removes
//! when `ppoll` returns, plus `waiters`, which the `Armed` guard decrements on every exit
//! path. [`CancelToken::waiters`] is 0 once every wrapped call has returned.
//!
//! # Memory ordering
//!
//! `cancelled` is written with Release (a swap) and read with Acquire; the argument above
//! rests on the mutex's lock order alone (a mutex unlock synchronizes with the next lock).
//! `waiters` is a statistic (Relaxed).

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::kernel;
use crate::sys::EventFd;

/// The error of a wrapped call whose token was cancelled. It reaches callers inside an
/// [`io::Error`] of kind [`io::ErrorKind::Other`] (test with [`Cancelled::is`]), not
/// `Interrupted`: std's `read_exact`, `write_all` and `io::copy` retry `Interrupted`, and a
/// cancelled token stays cancelled, so they would spin for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cancelled;

impl Cancelled {
    /// Whether `e` is a cancellation.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Cancelled>())
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("operation cancelled")
    }
}

impl std::error::Error for Cancelled {}

impl From<Cancelled> for io::Error {
    fn from(c: Cancelled) -> io::Error {
        io::Error::other(c)
    }
}

/// A cancellation flag shared by clones; see the module doc.
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Created at the first wait that needs it; never drained once written.
    efd: Mutex<Option<Arc<EventFd>>>,
    waiters: AtomicUsize,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .field("waiters", &self.waiters())
            .finish()
    }
}

impl CancelToken {
    /// A token that is not cancelled. Allocates no fd until a wrapped call has to wait.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel: every wrapped call in a [`CancelToken::run`] scope of this token (or a clone)
    /// that is waiting returns the [`Cancelled`] error promptly, and every later one does at
    /// once. Idempotent; callable from any thread, worker or not. Never blocks for long
    /// (one mutex, one `write(2)`).
    pub fn cancel(&self) {
        // Release: pairs with the Acquire loads of `is_cancelled`.
        if self.inner.cancelled.swap(true, Ordering::Release) {
            return; // The first cancel writes the eventfd.
        }
        // Step 5 of the module doc: the flag first, then the eventfd under the mutex.
        let efd = kernel::no_preempt(|| lock(&self.inner.efd).clone());
        if let Some(efd) = efd {
            let r = efd.signal();
            debug_assert!(r.is_ok(), "eventfd write: {r:?}");
        }
    }

    /// Whether [`CancelToken::cancel`] was called on this token or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// `Err(Cancelled)` if cancelled.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Run `f` with this token in the calling thread's scope: every [`crate::io`] call `f`
    /// makes on this thread fails with [`Cancelled`] once the token is cancelled, waiting or
    /// not. Scopes nest (a call watches every token in scope). The scope covers the calling
    /// thread only: workers spawned by `f` run their own `run` with a clone.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Pop;
        impl Drop for Pop {
            fn drop(&mut self) {
                SCOPE.with(|s| s.borrow_mut().pop());
            }
        }
        SCOPE.with(|s| s.borrow_mut().push(self.clone()));
        let _pop = Pop;
        f()
    }

    /// Wrapped calls currently waiting with this token in scope (armed and not yet
    /// returned). 0 once every one has returned: nothing stays registered.
    pub fn waiters(&self) -> usize {
        self.inner.waiters.load(Ordering::Relaxed)
    }

    /// Step 3 for this token: its eventfd, taken (or created) under the mutex.
    fn eventfd(&self) -> io::Result<Arc<EventFd>> {
        kernel::no_preempt(|| {
            let mut g = lock(&self.inner.efd);
            if let Some(e) = &*g {
                return Ok(e.clone());
            }
            let e = Arc::new(EventFd::new_nonblocking().map_err(io::Error::from)?);
            *g = Some(e.clone());
            Ok(e)
        })
    }
}

thread_local! {
    /// The tokens in scope on this thread, innermost last.
    static SCOPE: RefCell<Vec<CancelToken>> = const { RefCell::new(Vec::new()) };
}

/// `Err(Cancelled)` if a token in the calling thread's scope is cancelled (step 2). For
/// loops that do work between wrapped calls.
pub fn check() -> Result<(), Cancelled> {
    SCOPE.with(|s| {
        if s.borrow().iter().any(CancelToken::is_cancelled) {
            Err(Cancelled)
        } else {
            Ok(())
        }
    })
}

/// The cancellation side of one wait: the scope's tokens, counted as waiters, and their
/// eventfds for the poll set. Dropping it uncounts them.
pub(crate) struct Armed {
    entries: Vec<(CancelToken, Arc<EventFd>)>,
}

impl Armed {
    /// The eventfds to add to the poll set (readable: cancelled).
    pub(crate) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.entries.iter().map(|(_, e)| e.as_fd())
    }

    /// How many eventfds [`Armed::fds`] yields.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        for (t, _) in &self.entries {
            t.inner.waiters.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Step 3: arm the calling thread's scope for a wait; `Err` if a token is already
/// cancelled (or an eventfd cannot be created, e.g. `EMFILE`).
pub(crate) fn arm() -> io::Result<Armed> {
    let tokens: Vec<CancelToken> = SCOPE.with(|s| s.borrow().clone());
    let mut armed = Armed {
        entries: Vec::with_capacity(tokens.len()),
    };
    for t in tokens {
        t.inner.waiters.fetch_add(1, Ordering::Relaxed);
        match t.eventfd() {
            Ok(e) => armed.entries.push((t, e)),
            Err(e) => {
                t.inner.waiters.fetch_sub(1, Ordering::Relaxed);
                return Err(e); // `armed` uncounts the others.
            }
        }
    }
    // After every mutex section (the module doc's argument).
    if armed.entries.iter().any(|(t, _)| t.is_cancelled()) {
        return Err(Cancelled.into());
    }
    Ok(armed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn scope_nests_and_pops() {
        let outer = CancelToken::new();
        let inner = CancelToken::new();
        outer.run(|| {
            assert_eq!(check(), Ok(()));
            inner.cancel();
            inner.run(|| assert_eq!(check(), Err(Cancelled)));
            assert_eq!(check(), Ok(()));
            assert!(arm().is_ok());
            outer.cancel();
            assert_eq!(check(), Err(Cancelled));
        });
        assert_eq!(check(), Ok(()));
    }

    #[test]
    fn arm_counts_waiters_and_fails_when_cancelled() {
        let t = CancelToken::new();
        t.run(|| {
            let a = arm().unwrap();
            assert_eq!(a.len(), 1);
            assert_eq!(t.waiters(), 1);
            t.cancel();
            // The eventfd is readable: a poll on it returns at once.
            assert!(crate::sys::poll::ready_now(
                a.fds().next().unwrap(),
                crate::sys::poll::PollFlags::POLLIN
            ));
            drop(a);
            assert_eq!(t.waiters(), 0);
            let e = arm().err().unwrap();
            assert!(Cancelled::is(&e));
            assert_eq!(t.waiters(), 0);
        });
    }

    #[test]
    fn scope_pops_on_unwind() {
        let t = CancelToken::new();
        t.cancel();
        let r = std::panic::catch_unwind(|| t.run(|| panic!("inside")));
        assert!(r.is_err());
        assert_eq!(check(), Ok(()));
    }

    #[test]
    fn cancelled_error_is_recognised() {
        let e: io::Error = Cancelled.into();
        assert!(Cancelled::is(&e));
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert!(!Cancelled::is(&io::Error::from(io::ErrorKind::Interrupted)));
    }
}
