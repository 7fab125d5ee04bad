//! Workers of the M:N runtime: real threads registered as UMCG workers, run by servers.
//!
//! # Leaving the CPU
//!
//! A worker gives its server back in exactly three ways:
//! 1. It blocks in the kernel (a `blocking` call): the emulated block hook wakes the server;
//!    when the call returns, the wake hook queues the worker on the kernel's idle-worker
//!    list and a server drains it from there.
//! 2. It is preempted at the end of its time slice (`umcg_kick`): it ends on the same list.
//! 3. It leaves voluntarily ([`leave`]): it writes an *outcome* (yield, park, exit) tagged
//!    with the sequence number of the run it ends, then IDLE, then its server RUNNING, and
//!    waits. The server acts on the outcome only if its tag is the run it started, so a stale
//!    outcome of an earlier run (the worker blocked, unblocked and ran elsewhere since) is
//!    never acted on twice.
//!
//! # Never queued twice (the Tor KIST lesson)
//!
//! [`make_runnable`] sets the worker's `queued` flag with a swap and pushes only if it was
//! clear; the server that pops the worker clears it. Every path that makes a worker runnable
//! (drained from the kernel list, a yield outcome, a park outcome that lost to an unpark, an
//! unpark of a parked worker) goes through it, and each of those paths starts from a worker
//! that is off the CPU (IDLE).
//!
//! # Parking
//!
//! `park` state: EMPTY → (unpark) NOTIFIED, EMPTY → (server, after a park outcome) PARKED.
//! [`park`] consumes a NOTIFIED at once; otherwise the worker leaves with a park outcome and
//! its server CASes EMPTY→PARKED; if that fails, an unpark came in between, so the server
//! requeues it. [`unpark`] swaps NOTIFIED in and requeues the worker only if it saw PARKED.
//! So every unpark after a park makes the worker run at least once; `park` may also return
//! spuriously and callers re-check their condition.
//!
//! # Memory ordering
//!
//! The outcome store is Release and the server's load Acquire (the server also acquires the
//! worker's writes through its own state word, which the worker CASes to RUNNING after
//! writing the outcome). `queued` and `park` are AcqRel read-modify-writes. Runtime code
//! that runs on a worker runs inside `kernel::no_preempt`, so a kick never interrupts it
//! half-way (a preempted worker holding a policy lock would stall every server).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};

use umcg_abi::*;

use crate::kernel::{self, UmcgError};
use crate::policy::{Hint, Reason, Runnable};
use crate::runtime::Shared;
use crate::sys::Errno;

/// A spawned closure. Running it computes the result and returns the step that publishes it
/// to the join handle, which the worker runs only after returning to the pool (so that a
/// spawn right after a join finds the worker there).
pub(crate) type Job = Box<dyn FnOnce() -> Publish + Send + 'static>;
/// Publishes a job's result.
pub(crate) type Publish = Box<dyn FnOnce() + Send + 'static>;

/// Outcome codes (low byte of `WorkerCtl::outcome`).
pub(crate) const OUT_YIELD: u64 = 1;
pub(crate) const OUT_YIELD_CODE: u64 = OUT_YIELD;
pub(crate) const OUT_PARK: u64 = 2;
pub(crate) const OUT_EXIT: u64 = 3;

const PARK_EMPTY: u8 = 0;
const PARK_NOTIFIED: u8 = 1;
const PARK_PARKED: u8 = 2;

/// The runtime's record of one worker. `task` comes first: the address of a worker's
/// `struct umcg_task`, as the kernel's idle-worker list yields it, is the address of its
/// `WorkerCtl`.
#[repr(C, align(64))]
pub(crate) struct WorkerCtl {
    pub(crate) task: UmcgTask,
    pub(crate) id: usize,
    pub(crate) tid: AtomicU32,
    /// In a policy queue (see the module doc).
    pub(crate) queued: AtomicBool,
    park: AtomicU8,
    /// Incremented by the server at the start of each run.
    pub(crate) run_seq: AtomicU64,
    /// `run_seq << 8 | code` of the last voluntary leave.
    pub(crate) outcome: AtomicU64,
    /// The server index that ran it last.
    pub(crate) last_server: AtomicUsize,
    pub(crate) job: Mutex<Option<Job>>,
}

const _: () = assert!(core::mem::offset_of!(WorkerCtl, task) == 0);

impl std::fmt::Debug for WorkerCtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCtl")
            .field("id", &self.id)
            .field("tid", &self.tid)
            .field("state", &self.task.load_state())
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

impl WorkerCtl {
    pub(crate) fn new(id: usize, sh: &Shared, job: Option<Job>) -> Self {
        WorkerCtl {
            task: UmcgTask::new_worker(sh.idle_servers.head_addr(), sh.idle_workers.addr()),
            id,
            tid: AtomicU32::new(0),
            queued: AtomicBool::new(false),
            park: AtomicU8::new(PARK_EMPTY),
            run_seq: AtomicU64::new(0),
            outcome: AtomicU64::new(0),
            last_server: AtomicUsize::new(0),
            job: Mutex::new(job),
        }
    }

    /// The server's side of a park outcome: EMPTY=>PARKED, or requeue if an unpark won.
    pub(crate) fn server_parked(self: &Arc<Self>, sh: &Shared, server: usize) {
        if self
            .park
            .compare_exchange(PARK_EMPTY, PARK_PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // NOTIFIED: the unpark came before we could park it. Consume it and run again.
            self.park.store(PARK_EMPTY, Ordering::Release);
            make_runnable(sh, self.clone(), Some(server), Reason::Woken);
        }
    }
}

/// Make `w` runnable: push it to the policy unless it is already queued, then wake an idle
/// server if there is one.
pub(crate) fn make_runnable(sh: &Shared, w: Arc<WorkerCtl>, server: Option<usize>, reason: Reason) {
    if w.queued.swap(true, Ordering::AcqRel) {
        return; // Already queued: never twice.
    }
    sh.policy.push(Runnable(w), Hint { server, reason });
    // Publish the push before looking for an idle server; pairs with the fence a server
    // issues between pushing itself on the idle-server list and re-checking for work.
    fence(Ordering::SeqCst);
    sh.wake_idle_server();
}

/// Wake the worker behind `w` if it is parked (see the module doc).
pub(crate) fn unpark(sh: &Shared, w: &Arc<WorkerCtl>) {
    if w.park.swap(PARK_NOTIFIED, Ordering::AcqRel) == PARK_PARKED {
        w.park.store(PARK_EMPTY, Ordering::Release);
        make_runnable(sh, w.clone(), None, Reason::Woken);
    }
}

thread_local! {
    static CURRENT: RefCell<Option<(Arc<Shared>, Arc<WorkerCtl>)>> = const { RefCell::new(None) };
}

/// The runtime and worker of the calling thread, if it is a worker.
pub(crate) fn current_worker() -> Option<(Arc<Shared>, Arc<WorkerCtl>)> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Give the CPU back to the server with `code`; returns once a server runs the worker
/// again. Must be called inside `no_preempt`.
pub(crate) fn leave(sh: &Shared, w: &WorkerCtl, code: u64) {
    let seq = w.run_seq.load(Ordering::Acquire);
    w.outcome.store(seq << 8 | code, Ordering::Release);
    let t = &w.task;
    let stid = t.server_tid.load(Ordering::Acquire);
    // RUNNING=>IDLE (a plain store: a kick can only have set PREEMPTED, which is moot now).
    t.store_state(StateWord(UMCG_TASK_IDLE));
    // Its server (IDLE while we ran) => RUNNING; umcg_wait with next_tid 0 wakes it.
    if let Some(s) = sh.server_task(w.last_server.load(Ordering::Acquire)) {
        let _ = s.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
    }
    debug_assert_ne!(stid, 0);
    t.next_tid.store(0, Ordering::Release);
    if code == OUT_EXIT {
        // No wait: wake the server and go (the caller unregisters).
        let _ = kernel::wake(stid);
        return;
    }
    wait_until_running(t);
}

fn wait_until_running(t: &UmcgTask) {
    loop {
        match kernel::umcg_wait(0, 0) {
            Ok(()) => return,
            Err(UmcgError::Errno(Errno::EINTR)) => {
                if t.load_state().state() == TaskState::Running {
                    return;
                }
            }
            Err(e) => panic!("umcg worker wait failed: {e}"),
        }
    }
}

/// Park the calling worker until [`unpark`] (may return spuriously).
pub(crate) fn park_current(sh: &Shared, w: &WorkerCtl) {
    kernel::no_preempt(|| {
        if w.park.swap(PARK_EMPTY, Ordering::AcqRel) == PARK_NOTIFIED {
            return;
        }
        leave(sh, w, OUT_PARK);
    });
}

/// The body of a worker thread.
pub(crate) fn worker_main(sh: Arc<Shared>, w: Arc<WorkerCtl>) {
    w.tid.store(crate::sys::gettid(), Ordering::Release);
    let p = &w.task as *const UmcgTask as *mut UmcgTask;
    // SAFETY: the task lives in `w`, which this thread keeps alive until it unregisters.
    let r = unsafe { kernel::umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, p) };
    if let Err(e) = r {
        eprintln!("umcg: worker registration failed: {e}");
        sh.worker_gone();
        return;
    }
    CURRENT.with(|c| *c.borrow_mut() = Some((sh.clone(), w.clone())));
    loop {
        let job = kernel::no_preempt(|| w.job.lock().unwrap_or_else(|e| e.into_inner()).take());
        match job {
            Some(job) => {
                let publish = job(); // Panics are caught inside the job.
                let pooled = kernel::no_preempt(|| sh.return_to_pool(&w));
                publish();
                sh.job_done();
                if !pooled {
                    break;
                }
            }
            None if sh.is_shutting_down() => break,
            None => park_current(&sh, &w),
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = None);
    kernel::no_preempt(|| leave(&sh, &w, OUT_EXIT));
    // SAFETY: unregister takes no pointer.
    let _ = unsafe { kernel::umcg_ctl(UMCG_CTL_UNREGISTER, core::ptr::null_mut()) };
    sh.worker_gone();
}
