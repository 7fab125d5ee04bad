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
//! Server IDLE, worker IDLE(|PREEMPTED) => RUNNING with PREEMPTED cleared, `next_tid` =
//! worker, `umcg_wait` with the time slice as timeout. It returns when the worker blocks, is
//! preempted, or leaves. On `ETIMEDOUT` (still IDLE) the server kicks the worker and waits
//! again: whatever takes the worker off the CPU wakes the server exactly once. Then the
//! server acts on the worker's outcome if it belongs to this run (see `worker.rs`).

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use umcg_abi::idle_servers::{Push, Reclaim, Remove};
use umcg_abi::*;

use crate::kernel::{self, UmcgError};
use crate::policy::Reason;
use crate::runtime::Shared;
use crate::sys::{self, Errno};
use crate::worker::{OUT_EXIT, OUT_PARK, OUT_YIELD, WorkerCtl, make_runnable};

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
        loop {
            self.sh.drain_idle_workers(Some(self.idx));
            if let Some(r) = self.sh.policy.pop(self.idx) {
                self.run(r.0);
                continue;
            }
            if self.sh.should_exit() {
                return;
            }
            self.idle();
        }
    }

    fn run(&self, w: Arc<WorkerCtl>) {
        // Popped: from here on it may be queued again (after it leaves the CPU).
        w.queued.store(false, Ordering::Release);
        let seq = w.run_seq.fetch_add(1, Ordering::AcqRel) + 1;
        w.last_server.store(self.idx, Ordering::Release);
        let me = self.task();
        let wt = &w.task;
        // S:IDLE first (so that a block of W finds us IDLE), then W's server and W:RUNNING.
        me.store_state(StateWord(UMCG_TASK_IDLE));
        wt.server_tid.store(self.tid, Ordering::Release);
        let cur = wt.load_state();
        assert_eq!(
            cur.state(),
            TaskState::Idle,
            "umcg runtime bug: worker {} is runnable but {:?}",
            w.id,
            cur
        );
        // IDLE(|PREEMPTED)=>RUNNING, acknowledging a preemption.
        let next = cur
            .with_state(TaskState::Running)
            .without_flags(UMCG_TF_PREEMPTED | UMCG_TF_LOCKED);
        wt.cas_word(cur, next)
            .expect("umcg runtime bug: a runnable worker changed state");
        let wtid = w.tid.load(Ordering::Acquire);
        me.next_tid.store(wtid, Ordering::Release);
        let deadline = self
            .sh
            .time_slice
            .map(|d| sys::futex::realtime_now_ns().saturating_add(nanos(d)));
        loop {
            let r = kernel::umcg_wait(0, deadline.unwrap_or(0));
            // Retries must not switch to the worker again.
            me.next_tid.store(0, Ordering::Release);
            match r {
                Ok(()) => break,
                Err(UmcgError::Errno(Errno::EINTR)) => continue,
                Err(UmcgError::Errno(Errno::ETIMEDOUT)) => {
                    // End of the slice: kick, then wait for the worker to leave the CPU.
                    // EAGAIN: it is off the CPU already; ESRCH: it also exited.
                    match kernel::umcg_kick(0, wtid) {
                        Ok(()) | Err(UmcgError::Errno(Errno::EAGAIN | Errno::ESRCH)) => {}
                        Err(e) => panic!("umcg runtime: kick failed: {e}"),
                    }
                    wait_running();
                    break;
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
        let out = w.outcome.load(Ordering::Acquire);
        if out >> 8 == seq {
            match out & 0xff {
                OUT_YIELD => make_runnable(&self.sh, w, Some(self.idx), Reason::Yielded),
                OUT_PARK => w.server_parked(&self.sh, self.idx),
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
        if !sh.idle_workers.is_empty() || sh.policy.has_work(self.idx) || sh.should_exit() {
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

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
