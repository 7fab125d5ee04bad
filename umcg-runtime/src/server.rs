//! Servers of the M:N runtime: one thread per (by default) CPU, pinned, registered as a UMCG
//! server. A server is "the CPU" of its workers: it runs one worker at a time.
//!
//! # The loop
//!
//! 1. Drain the kernel's idle-worker list in one exchange (workers that unblocked or were
//!    preempted) and make each runnable (a burst of unblocks costs one take).
//! 2. Pop a worker from the policy and run it (below); repeat.
//! 3. Nothing to run: go idle (v0.3 protocol, spec §2.6 "server idles"): write IDLE, push
//!    itself on the idle-server list, `fence(SeqCst)`, re-check for work (kernel list and
//!    policy). Work: take itself off the list (unless already claimed, then wait for the
//!    claimer's wake); none: sleep in `umcg_wait` until a waker makes it RUNNING. Then
//!    reclaim its node (collect + reset).
//! 4. Exit once the runtime shuts down and no worker is left.
//!
//! # Running a worker
//!
//! Server IDLE, worker IDLE(|PREEMPTED) => RUNNING with PREEMPTED cleared ([`start_run`]),
//! `next_tid` = worker, `umcg_wait` with the time slice as timeout. It returns when the
//! worker that holds the server's CPU blocks, is preempted, or leaves without a successor.
//! On `ETIMEDOUT` (still IDLE) the server kicks whichever worker holds its CPU *now* and
//! waits again with a fresh slice: whatever takes a worker off the CPU wakes the server
//! exactly once, and a kick that missed (the worker was switching) is repeated for its
//! successor at the next tick. Then the server acts on the outcome of the worker in its
//! slot if the outcome belongs to the run recorded there (see `worker.rs`).
//!
//! # Direct switches and the server slot
//!
//! A worker that parks or yields while another worker is runnable on its server switches
//! to it directly (spec §2.6 T3: worker IDLE, next RUNNING, `umcg_wait` with `next_tid` =
//! next), without waking the server: one context switch per handoff instead of two. The
//! server therefore does not know statically which worker holds its CPU; [`ServerSlot`]
//! records it (`cur`, with the run sequence number, and `cur_tid` for the kick).
//!
//! Ownership: `cur` and the handoff slot's pick are touched only by whoever holds the
//! server's virtual CPU: the server while it is RUNNING, or the worker it runs (which is
//! RUNNING while the server is IDLE). The holder hands the CPU on with a state-word store
//! (Release) that the next holder reads (Acquire) before touching the slot; the mutexes
//! make the slot memory-safe regardless. `cur_tid` is read by the IDLE server for its kick
//! (a stale read kicks a worker that just left: `EAGAIN`, or one that runs elsewhere now: a
//! spurious preemption, which is harmless).
//!
//! # The handoff (LIFO) slot
//!
//! A worker running on server S that wakes another worker (an unpark: a lock handoff, a
//! channel send, a join) puts it into S's handoff slot instead of the policy, and wakes no
//! idle server: S's CPU runs it as soon as the waker parks or yields (Tokio's LIFO slot,
//! for the same reason: a message handoff stays on one CPU). A worker displaced from the
//! slot goes to the policy (and an idle server is woken). At most [`LIFO_STREAK`] picks in a
//! row come from the slot; then, if the policy holds other work, the policy goes first and the
//! slot's occupant is moved to the policy, so a ping-ponging pair cannot starve the others.
//! (With nothing else runnable the slot keeps its worker: a token passed around a ring stays
//! on one CPU instead of waking an idle server to steal it every few hops.)

use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use umcg_abi::idle_servers::{Push, Reclaim, Remove};
use umcg_abi::*;

use crate::kernel::{self, UmcgError};
use crate::policy::{Hint, Reason, Runnable};
use crate::runtime::{Shared, lock};
use crate::sys::{self, Errno};
use crate::worker::{OUT_EXIT, OUT_PARK, OUT_YIELD, WorkerCtl, make_runnable};

/// How many picks in a row may come from a server's handoff slot before its policy queue
/// goes first (see the module doc).
pub(crate) const LIFO_STREAK: u32 = 3;

/// Per-server state shared with the workers that run on it (see the module doc).
#[derive(Default)]
pub(crate) struct ServerSlot {
    /// The worker holding the server's CPU and the run sequence number it started with.
    cur: Mutex<Option<(Arc<WorkerCtl>, u64)>>,
    /// Its TID, for the time-slice kick (read while the server is IDLE).
    cur_tid: AtomicU32,
    /// The handoff slot: a worker woken by the worker running here, run next.
    next: Mutex<Option<Arc<WorkerCtl>>>,
    /// Consecutive picks from `next`.
    streak: AtomicU32,
}

impl ServerSlot {
    /// One line for `debug_dump`.
    pub(crate) fn describe(&self) -> String {
        let cur = match &*lock(&self.cur) {
            Some((w, seq)) => format!("worker {} run {seq}", w.id),
            None => String::from("none"),
        };
        let next = lock(&self.next).as_ref().map(|w| w.id);
        format!(
            "cpu held by {cur} (tid {}), handoff slot {next:?}, streak {}",
            self.cur_tid.load(Ordering::Acquire),
            self.streak.load(Ordering::Relaxed)
        )
    }

    /// Whether the handoff slot holds a worker.
    pub(crate) fn has_next(&self) -> bool {
        lock(&self.next).is_some()
    }
}

/// Make `w` (IDLE, popped from a queue by the holder of server `idx`'s CPU) the worker that
/// holds that CPU: record it in the slot, then IDLE(|PREEMPTED)=>RUNNING. Returns its TID
/// for `next_tid`. The caller then hands over the CPU with `umcg_wait`.
pub(crate) fn start_run(sh: &Shared, idx: usize, w: Arc<WorkerCtl>) -> u32 {
    // Popped: from here on it may be queued again (after it leaves the CPU).
    w.check_pick();
    w.queued.store(false, Ordering::Release);
    let seq = w.run_seq.fetch_add(1, Ordering::AcqRel) + 1;
    w.last_server.store(idx, Ordering::Release);
    let wt = &w.task;
    wt.server_tid.store(sh.server_tid(idx), Ordering::Release);
    let wtid = w.tid.load(Ordering::Acquire);
    let slot = sh.slot(idx);
    slot.cur_tid.store(wtid, Ordering::Release);
    let cur = wt.load_state();
    assert_eq!(
        cur.state(),
        TaskState::Idle,
        "umcg runtime bug: worker {} is runnable but {:?}",
        w.id,
        cur
    );
    let next = cur
        .with_state(TaskState::Running)
        .without_flags(UMCG_TF_PREEMPTED | UMCG_TF_LOCKED);
    let id = w.id;
    *lock(&slot.cur) = Some((w.clone(), seq));
    // Release: the slot writes above happen before the worker runs (it reads its state
    // word with Acquire when it wakes).
    if let Err(seen) = wt.cas_word(cur, next) {
        panic!("umcg runtime bug: runnable worker {id} changed state to {seen:?}");
    }
    wtid
}

/// The next worker for server `idx`, picked by the holder of its CPU: drain the kernel's
/// idle-worker list into the policy, then the handoff slot (at most [`LIFO_STREAK`] in a
/// row), then the policy.
pub(crate) fn pick_next(sh: &Shared, idx: usize) -> Option<Arc<WorkerCtl>> {
    sh.drain_idle_workers(Some(idx));
    let slot = sh.slot(idx);
    if slot.streak.load(Ordering::Relaxed) < LIFO_STREAK {
        if let Some(w) = lock(&slot.next).take() {
            slot.streak.fetch_add(1, Ordering::Relaxed);
            return Some(w);
        }
    } else if !sh.policy.has_work(idx) {
        // The streak is over but nobody else waits: the slot's worker starves no one, and
        // moving it to the policy would wake an idle server to steal it (a cross-CPU wake
        // for a handoff that can stay on this CPU). The streak stays over, so the next pick
        // asks the policy again.
        if let Some(w) = lock(&slot.next).take() {
            return Some(w);
        }
    } else if let Some(w) = lock(&slot.next).take() {
        // The streak is over: the slot's worker waits its turn in the policy like any other
        // (where idle servers may also steal it). It stays `queued`.
        sh.policy.push(
            Runnable(w),
            Hint {
                server: Some(idx),
                reason: Reason::Woken,
            },
        );
        fence(Ordering::SeqCst);
        sh.wake_idle_server();
    }
    slot.streak.store(0, Ordering::Relaxed);
    sh.policy.pop(idx).map(|r| r.0)
}

/// Check: the calling worker `w`, about to switch directly, is the one server `idx`'s slot
/// records, in its current run.
pub(crate) fn check_holds_cpu(sh: &Shared, idx: usize, w: &Arc<WorkerCtl>) {
    let seq = w.run_seq.load(Ordering::Acquire);
    let ok = matches!(&*lock(&sh.slot(idx).cur), Some((c, s)) if Arc::ptr_eq(c, w) && *s == seq);
    if !ok {
        crate::check::violation(format!(
            "worker {} switches on server {idx} whose slot does not record it (run {seq})",
            w.id
        ));
    }
}

/// Put `w` (just marked `queued`) into server `idx`'s handoff slot; called by the worker
/// running on that server. A displaced occupant goes to the policy.
pub(crate) fn put_next(sh: &Shared, idx: usize, w: Arc<WorkerCtl>) {
    let old = lock(&sh.slot(idx).next).replace(w);
    if let Some(old) = old {
        sh.policy.push(
            Runnable(old),
            Hint {
                server: Some(idx),
                reason: Reason::Woken,
            },
        );
        // Publish the push before looking for an idle server (as `make_runnable`).
        fence(Ordering::SeqCst);
        sh.wake_idle_server();
    }
}

pub(crate) struct Server {
    sh: Arc<Shared>,
    idx: usize,
    tid: u32,
}

/// The body of server thread `idx`; `cpu` is where it is pinned (None: not pinned).
pub(crate) fn server_main(
    sh: Arc<Shared>,
    idx: usize,
    cpu: Option<usize>,
) -> Result<(), UmcgError> {
    if let Some(cpu) = cpu {
        let _ = sys::pin_to_cpu(cpu);
    }
    let task = sh.server_task(idx).expect("server index");
    let p = task as *const UmcgTask as *mut UmcgTask;
    // SAFETY: the task is owned by `Shared`, which outlives every server thread.
    unsafe { kernel::umcg_ctl(UMCG_CTL_REGISTER, p) }?;
    let tid = sys::gettid();
    task.server_tid.store(tid, Ordering::Release);
    sh.server_ready(idx, tid);
    let s = Server { sh, idx, tid };
    s.run_loop();
    // SAFETY: unregister takes no pointer.
    unsafe { kernel::umcg_ctl(UMCG_CTL_UNREGISTER, core::ptr::null_mut()) }?;
    Ok(())
}

impl Server {
    fn task(&self) -> &UmcgTask {
        self.sh.server_task(self.idx).expect("server index")
    }

    fn run_loop(&self) {
        debug_assert_eq!(self.sh.server_tid(self.idx), self.tid);
        loop {
            if let Some(w) = pick_next(&self.sh, self.idx) {
                self.run(w);
                continue;
            }
            if self.sh.should_exit() {
                return;
            }
            self.idle();
        }
    }

    fn run(&self, w: Arc<WorkerCtl>) {
        let me = self.task();
        let slot = self.sh.slot(self.idx);
        // S:IDLE first (so that a block of W finds us IDLE), then W's server and W:RUNNING.
        me.store_state(StateWord(UMCG_TASK_IDLE));
        let wtid = start_run(&self.sh, self.idx, w);
        me.next_tid.store(wtid, Ordering::Release);
        let slice = self.sh.time_slice;
        let mut deadline = slice.map(deadline_after);
        loop {
            let r = kernel::umcg_wait(0, deadline.unwrap_or(0));
            // Retries must not switch to the worker again.
            me.next_tid.store(0, Ordering::Release);
            match r {
                Ok(()) => break,
                Err(UmcgError::Errno(Errno::EINTR)) => continue,
                Err(UmcgError::Errno(Errno::ETIMEDOUT)) => {
                    // End of a slice: kick whoever holds the CPU now (after direct switches
                    // it may not be the worker we started; a successor inherits the rest of
                    // the slice). Stay IDLE and wait again. Kick errors mean the worker is
                    // not running user code any more (it is leaving, or left): the next tick
                    // kicks its successor.
                    let tid = slot.cur_tid.load(Ordering::Acquire);
                    match kernel::umcg_kick(0, tid) {
                        Ok(())
                        | Err(UmcgError::Errno(Errno::EAGAIN | Errno::ESRCH | Errno::EINVAL)) => {}
                        Err(e) => panic!("umcg runtime: kick failed: {e}"),
                    }
                    deadline = slice.map(deadline_after);
                }
                // The switch found no worker: it ran before this call woke it (a signal
                // ended its wait and it saw RUNNING), left and exited. Leaving made us
                // RUNNING before it unregistered.
                Err(UmcgError::Errno(Errno::ESRCH)) => {
                    wait_running();
                    break;
                }
                Err(e) => panic!("umcg runtime: server wait failed: {e}"),
            }
        }
        // RUNNING again: we hold the CPU, so the slot names the worker that gave it back.
        let Some((w, seq)) = lock(&slot.cur).take() else {
            panic!(
                "umcg runtime bug: server {} woke with no current worker",
                self.idx
            );
        };
        if crate::check::enabled() {
            let st = w.task.load_state();
            if st.state() == TaskState::Running
                && w.task.server_tid.load(Ordering::Acquire) == self.tid
                && w.run_seq.load(Ordering::Acquire) == seq
            {
                crate::check::violation(format!(
                    "server {} woke while worker {} (run {seq}) still holds its CPU: {st:?}",
                    self.idx, w.id
                ));
            }
        }
        let out = w.outcome.load(Ordering::Acquire);
        if out >> 8 == seq {
            match out & 0xff {
                OUT_YIELD => {
                    make_runnable(&self.sh, w, Some(self.idx), Reason::Yielded);
                }
                OUT_PARK => w.finish_park(&self.sh, self.idx),
                OUT_EXIT => {}
                other => panic!("umcg runtime bug: outcome {other}"),
            }
        }
        // Otherwise it blocked or was preempted: it comes back through the kernel's list.
    }

    fn idle(&self) {
        let sh = &self.sh;
        let t = self.task();
        t.store_state(StateWord(UMCG_TASK_IDLE));
        // SAFETY: server tasks are owned by `Shared` and outlive every pop of the list.
        match unsafe { sh.idle_servers.push(t) } {
            Ok(Push::Pushed) => {}
            // A stale popper claimed us: it makes us RUNNING and wakes us.
            Ok(Push::ClaimedWhilePushing) => {}
            Err(e) => panic!("umcg runtime bug: idle-server push: {e:?}"),
        }
        fence(Ordering::SeqCst);
        if !sh.idle_workers.is_empty()
            || sh.policy.has_work(self.idx)
            || sh.slot(self.idx).has_next()
            || sh.should_exit()
        {
            match sh.idle_servers.remove(t) {
                Remove::Removed => t.store_state(StateWord(UMCG_TASK_RUNNING)),
                Remove::AlreadyDeleted => wait_running(),
                Remove::NotOnList => unreachable!("a server pushed itself"),
            }
        } else {
            wait_running();
        }
        match sh.idle_servers.reclaim(t) {
            Ok(Reclaim::Reset | Reclaim::AlreadyReset) => {}
            other => panic!("umcg runtime bug: reclaim: {other:?}"),
        }
    }
}

/// Sleep in `umcg_wait` until the calling task is RUNNING.
fn wait_running() {
    loop {
        match kernel::umcg_wait(0, 0) {
            Ok(()) => return,
            Err(UmcgError::Errno(Errno::EINTR)) => {}
            Err(e) => panic!("umcg runtime: server wait failed: {e}"),
        }
    }
}

fn deadline_after(d: Duration) -> u64 {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    sys::futex::realtime_now_ns().saturating_add(ns)
}
