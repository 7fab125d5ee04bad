//! Workers of the M:N runtime: real threads registered as UMCG workers, run by servers.
//!
//! # Leaving the CPU
//!
//! A worker gives its server back in exactly three ways:
//! 1. It blocks in the kernel (a `blocking` call): the emulated block hook wakes the server;
//!    when the call returns, the wake hook queues the worker on the kernel's idle-worker
//!    list and a server drains it from there.
//! 2. It is preempted at the end of its time slice (`umcg_kick`): it ends on the same list.
//! 3. It parks or yields while another worker is runnable on its server ([`switch_to`]): it
//!    starts that worker on its server (the run is recorded in the server's slot, see
//!    `server.rs`), goes IDLE, finishes its own park or requeues itself (only now, when it is
//!    IDLE, may anyone pick it up), and hands the CPU over with `umcg_wait` (`next_tid` = the
//!    successor). The server sleeps on; one context switch instead of two.
//! 4. It leaves to its server ([`leave`]; park with nothing else runnable, or exit): it writes
//!    an *outcome* tagged with the sequence number of the run it ends, then IDLE, then its
//!    server RUNNING, and waits. The server acts on the outcome only if its tag is the run
//!    its slot records, so a stale outcome of an earlier run (the worker blocked, unblocked
//!    and ran elsewhere since) is never acted on twice. The worker cannot act on it itself:
//!    once it is requeued another server may run it and overwrite its `server_tid`, and its
//!    `umcg_wait` would then wake the wrong server.
//!
//! # Never queued twice (the Tor KIST lesson)
//!
//! [`make_runnable`] (and the handoff-slot path of [`unpark`]) sets the worker's `queued`
//! flag with a swap and pushes only if it was clear; whoever pops the worker clears it
//! (`server::start_run`). Every path that makes a worker runnable (drained from the kernel
//! list, a yield, a park that lost to an unpark, an unpark of a parked worker) goes through
//! it, and each of those paths starts from a worker that is off the CPU (IDLE).
//!
//! # Parking
//!
//! `park` state: EMPTY → (unpark) NOTIFIED, EMPTY → (server, after a park outcome) PARKED.
//! [`park`] consumes a NOTIFIED at once; otherwise the worker leaves with a park outcome and
//! its server (or the worker itself, after a direct switch, once it is IDLE) CASes
//! EMPTY→PARKED; if that fails, an unpark came in between, so it is requeued. [`unpark`] swaps NOTIFIED in and requeues the worker only if it saw PARKED.
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

use crate::check;
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
    /// Checks only (`check.rs`): queue and slot memberships, and since when it is runnable
    /// (monotonic ns, 0 = not runnable).
    members: AtomicU32,
    pub(crate) runnable_since: AtomicU64,
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
            members: AtomicU32::new(0),
            runnable_since: AtomicU64::new(0),
            job: Mutex::new(job),
        }
    }

    /// Check: the worker enters a queue or a handoff slot (`to` names it).
    pub(crate) fn check_enqueue(&self, to: &str) {
        if check::enabled() {
            self.runnable_since
                .store(check::now_ns(), Ordering::Relaxed);
            let n = self.members.fetch_add(1, Ordering::AcqRel) + 1;
            if n > 1 {
                check::violation(format!(
                    "worker {} enqueued on {to} while already queued ({n} memberships)",
                    self.id
                ));
            }
        }
    }

    /// Check: the worker is picked to run.
    pub(crate) fn check_pick(&self) {
        if check::enabled() {
            self.runnable_since.store(0, Ordering::Relaxed);
            let n = self.members.fetch_sub(1, Ordering::AcqRel);
            if n != 1 {
                self.members.fetch_add(1, Ordering::AcqRel);
                check::violation(format!(
                    "worker {} picked to run with {n} queue memberships",
                    self.id
                ));
            }
        }
    }

    /// Check: the worker leaves the CPU (RUNNING=>IDLE on the runtime's side).
    pub(crate) fn check_leaving(&self, how: &str) {
        if check::enabled() {
            let st = self.task.load_state();
            if st.state() != TaskState::Running {
                check::violation(format!(
                    "worker {} leaves the CPU ({how}) in state {st:?}, not RUNNING",
                    self.id
                ));
            }
        }
    }

    /// Membership count (checks only; 0 when checks are off).
    pub(crate) fn members(&self) -> u32 {
        self.members.load(Ordering::Acquire)
    }

    /// Park state for diagnostics.
    pub(crate) fn park_state(&self) -> &'static str {
        match self.park.load(Ordering::Acquire) {
            PARK_EMPTY => "empty",
            PARK_NOTIFIED => "notified",
            PARK_PARKED => "parked",
            _ => "?",
        }
    }

    /// The second half of a park, once the worker is IDLE: EMPTY=>PARKED, or requeue if an
    /// unpark won.
    pub(crate) fn finish_park(self: &Arc<Self>, sh: &Shared, server: usize) {
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
/// server if there is one. Returns whether it pushed.
pub(crate) fn make_runnable(
    sh: &Shared,
    w: Arc<WorkerCtl>,
    server: Option<usize>,
    reason: Reason,
) -> bool {
    if w.queued.swap(true, Ordering::AcqRel) {
        return false; // Already queued: never twice.
    }
    w.check_enqueue("the policy");
    sh.policy.push(Runnable(w), Hint { server, reason });
    // Publish the push before looking for an idle server; pairs with the fence a server
    // issues between pushing itself on the idle-server list and re-checking for work.
    fence(Ordering::SeqCst);
    sh.wake_idle_server();
    true
}

/// Wake the worker behind `w` if it is parked (see the module doc). Called by a worker
/// running on a server of the same runtime, the woken worker goes to that server's handoff
/// slot (it runs when the caller parks or yields; no idle server is woken).
pub(crate) fn unpark(sh: &Shared, w: &Arc<WorkerCtl>) {
    if w.park.swap(PARK_NOTIFIED, Ordering::AcqRel) != PARK_PARKED {
        return;
    }
    w.park.store(PARK_EMPTY, Ordering::Release);
    match running_on(sh) {
        Some(idx) => {
            if !w.queued.swap(true, Ordering::AcqRel) {
                w.check_enqueue("a handoff slot");
                crate::server::put_next(sh, idx, w.clone());
            }
        }
        None => {
            make_runnable(sh, w.clone(), None, Reason::Woken);
        }
    }
}

/// The server the calling thread runs on, if it is a worker of `sh` and RUNNING (not inside
/// a `blocking` call, where its server may be idle and would never look at its slot).
fn running_on(sh: &Shared) -> Option<usize> {
    CURRENT.with(|c| {
        let c = c.borrow();
        let (csh, me) = c.as_ref()?;
        if !core::ptr::eq(Arc::as_ptr(csh), sh)
            || me.task.load_state().state() != TaskState::Running
        {
            return None;
        }
        Some(me.last_server.load(Ordering::Acquire))
    })
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
    w.check_leaving("leave to the server");
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
pub(crate) fn park_current(sh: &Arc<Shared>, w: &Arc<WorkerCtl>) {
    kernel::no_preempt(|| {
        if w.park.swap(PARK_EMPTY, Ordering::AcqRel) == PARK_NOTIFIED {
            return;
        }
        let idx = w.last_server.load(Ordering::Acquire);
        match crate::server::pick_next(sh, idx) {
            Some(next) => switch_to(sh, w, idx, next, OUT_PARK),
            None => leave(sh, w, OUT_PARK),
        }
    });
}

/// Let another runnable worker of the calling worker's server run; the caller is requeued
/// behind it. Returns at once if there is none.
pub(crate) fn yield_current(sh: &Arc<Shared>, w: &Arc<WorkerCtl>) {
    kernel::no_preempt(|| {
        let idx = w.last_server.load(Ordering::Acquire);
        if let Some(next) = crate::server::pick_next(sh, idx) {
            switch_to(sh, w, idx, next, OUT_YIELD);
        }
    });
}

/// Hand server `idx`'s CPU from the calling worker `w` directly to `next` (spec §2.6 T3),
/// then finish `w`'s park (`OUT_PARK`) or requeue it (`OUT_YIELD`); returns once a server
/// runs `w` again. Must be called inside `no_preempt`.
fn switch_to(sh: &Shared, w: &Arc<WorkerCtl>, idx: usize, next: Arc<WorkerCtl>, code: u64) {
    let t = &w.task;
    if check::enabled() {
        crate::server::check_holds_cpu(sh, idx, w);
    }
    w.check_leaving("direct switch");
    let ntid = crate::server::start_run(sh, idx, next);
    t.next_tid.store(ntid, Ordering::Release);
    // RUNNING=>IDLE (a plain store: a kick can only have set PREEMPTED, which is moot now).
    t.store_state(StateWord(UMCG_TASK_IDLE));
    // IDLE: from here on another server may pick us up; our `umcg_wait` then wakes `next`
    // and returns at once.
    match code {
        OUT_YIELD => {
            make_runnable(sh, w.clone(), Some(idx), Reason::Yielded);
        }
        OUT_PARK => w.finish_park(sh, idx),
        other => unreachable!("switch_to with outcome {other}"),
    }
    loop {
        let r = kernel::umcg_wait(0, 0);
        // Retries must not wake `next` again (it may be long gone by then).
        t.next_tid.store(0, Ordering::Release);
        match r {
            Ok(()) => return,
            Err(UmcgError::Errno(Errno::EINTR)) => {
                if t.load_state().state() == TaskState::Running {
                    return;
                }
                // Sleep on without waking anyone: `next_tid` is 0, so `umcg_wait` targets
                // our `server_tid`, the server of the last run, which is awake or about to
                // be (a spurious wake of a server is harmless).
            }
            Err(e) => panic!("umcg worker wait failed: {e}"),
        }
    }
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
