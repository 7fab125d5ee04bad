//! The UMCG kernel interface (Generation A, v0.3) emulated in user space on futex and
//! eventfd, its C ABI, and an M:N threading library built on it.
//!
//! - [`kernel`]: the emulated system calls (`umcg_ctl`, `umcg_wait`) and the block and wake
//!   hooks, with v0.4+ timeouts, preemption, eventfd idle wakeup and same-CPU placement as
//!   extensions.
//! - [`ffi`]: the same through a C ABI (`include/umcg.h`).
//! - The M:N library: [`Runtime`] (servers pinned per CPU running worker threads),
//!   [`spawn`]/[`JoinHandle`], [`yield_now`], [`sleep`], [`blocking`], [`park`]/[`Unparker`],
//!   scheduling [`policy`].
//! - [`io`]: read, write, accept, connect, recv, send, poll and sleep that try the call
//!   without blocking first and run the block/wake hooks only when it would block;
//!   [`cancel`]: a [`cancel::CancelToken`] that ends every such wait of every worker in its
//!   scope at once.
//! - [`sync`]: `Mutex`, `Condvar` and an MPSC channel whose waits park workers through
//!   their server.
//! - [`sys`]: the only module that makes system calls.
//!
//! ```no_run
//! let rt = umcg_runtime::Runtime::builder().servers(2).build().unwrap();
//! let h = rt.spawn(|| {
//!     umcg_runtime::sleep(std::time::Duration::from_millis(1)); // the server runs others
//!     6 * 7
//! });
//! assert_eq!(h.join().unwrap(), 42);
//! rt.shutdown().unwrap();
//! ```

pub mod cancel;
pub mod check;
pub mod ffi;
pub mod io;
pub mod kernel;
mod park;
pub mod policy;
mod runtime;
mod server;
pub mod sync;
pub mod sys;
mod worker;

use std::time::Duration;

pub use park::{Unparker, park};
pub use runtime::{Builder, Error, JoinError, JoinHandle, Runtime};

/// Spawn `f` on the runtime of the calling worker.
///
/// # Panics
/// When called from a thread that is not a worker of a runtime (use [`Runtime::spawn`]).
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match worker::current_worker() {
        Some((sh, _)) => runtime::spawn_on(&sh, f),
        None => panic!("umcg_runtime::spawn called outside a runtime worker; use Runtime::spawn"),
    }
}

/// The calling worker, if the thread is one.
#[derive(Clone, Debug)]
pub struct Current {
    id: usize,
    tid: u32,
}

impl Current {
    /// The worker's id in its runtime.
    pub fn id(&self) -> usize {
        self.id
    }
    /// Its thread's TID.
    pub fn tid(&self) -> u32 {
        self.tid
    }
}

/// The calling worker (None on a thread that is not a runtime worker).
pub fn current() -> Option<Current> {
    worker::current_worker().map(|(_, w)| Current {
        id: w.id,
        tid: w.tid.load(std::sync::atomic::Ordering::Acquire),
    })
}

/// Give the server to another runnable worker, if any (the caller is requeued behind it and
/// the switch is direct, worker to worker); returns at once if there is none. Outside a
/// worker: `std::thread::yield_now`.
pub fn yield_now() {
    match worker::current_worker() {
        Some((sh, w)) => worker::yield_current(&sh, &w),
        None => std::thread::yield_now(),
    }
}

/// Sleep for `d`; in a worker, the server runs other workers meanwhile.
pub fn sleep(d: Duration) {
    blocking(|| std::thread::sleep(d))
}

/// Run `f`, a call that may sleep in the kernel. In a worker it is bracketed by the
/// emulated block and wake hooks: its server runs other workers meanwhile, and the worker
/// is queued again when `f` returns. Outside a worker it just runs `f`.
///
/// # Panics
/// On a UMCG contract violation returned by the emulator (only under
/// [`kernel::OnViolation::ReturnError`]; by default the process aborts).
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    if worker::current_worker().is_none() {
        return f();
    }
    kernel::blocking(f).unwrap_or_else(|e| panic!("umcg: {e}"))
}
