//! loom models of the emulated kernel's wake-up protocols (spec §2.4–§2.7), built from the same
//! pieces the kernel uses: the ABI types of `umcg_abi` (whose atomics are loom's under
//! `cfg(umcg_loom)`), the v0.3 lists (`umcg_abi::idle_servers`, `umcg_abi::idle_workers`) and
//! the futex of `umcg_runtime::sys` (under `cfg(umcg_loom)` the loom model of
//! `umcg-runtime/src/sys/model.rs`).
//!
//! These are *models* of the protocols, written out step by step, not runs of
//! `umcg_runtime::kernel` itself: the kernel module keeps its task table behind a std
//! `RwLock`, its registration in `thread_local!`s, and makes real system calls (`gettid`,
//! `sched_setaffinity`, `process_vm_readv`, eventfd), none of which loom can model. Each model
//! names the kernel function whose steps it copies, so the two can be compared line by line.
//!
//! The property checked in all three is "no lost wakeup": every sleeper is a loop of
//! `load state; if RUNNING return; futex_wait(state, seen)`, so a wake that is lost leaves
//! a thread asleep forever, which loom reports as a deadlock. Each model also asserts what the
//! woken thread must find in shared memory.
//!
//! Mutation checks (done by hand, see the report of the change that added this file): each
//! model fails under loom when its ordering is broken — the wake issued before the state
//! store (a), the server writing S:IDLE after W:RUNNING (b), the server's `fence(SeqCst)`
//! between its push and its re-check removed (c).
//!
//! ```text
//! RUSTFLAGS="--cfg umcg_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2 \
//!     CARGO_TARGET_DIR=target/loom cargo test -p umcg-runtime --release --test loom_kernel
//! ```
#![cfg(umcg_loom)]

use loom::sync::Arc;
use loom::thread;
use umcg_abi::idle_servers::{IdleServerList, Pop, Push, Remove};
use umcg_abi::idle_workers::{IdleWorkerHead, WorkerPush};
use umcg_abi::sync::{Ordering, fence};
use umcg_abi::*;
use umcg_runtime::sys::{FutexWait, futex_wait, futex_wake};

/// Bound on list operations (the kernel's `2 × nr_cpu_ids`); generous for 1–2 nodes.
const BOUND: usize = 4;

/// The idle loop of `kernel::idle_loop` / the wake hook (§2.4 step 6): sleep on the state
/// word until its low byte is RUNNING. Returns the word that ended the wait.
fn sleep_until_running(t: &UmcgTask) -> StateWord {
    loop {
        let w = t.load_state();
        if w.state() == TaskState::Running {
            return w;
        }
        match futex_wait(&t.state, w.bits(), None) {
            FutexWait::Woken | FutexWait::ValueChanged => {}
            other => panic!("the futex model never returns {other:?}"),
        }
    }
}

/// "wake T" of `kernel::wake_task`: the caller has already stored T's new state.
fn wake(t: &UmcgTask) {
    futex_wake(&t.state, i32::MAX);
}

/// The hooks' server wake (`kernel::wake_server`, §2.5.1 step 4): CAS exactly IDLE to exactly
/// RUNNING, then wake; exactly RUNNING already: give up silently. Returns whether it woke.
fn wake_server(s: &UmcgTask) -> bool {
    match s.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING)) {
        Ok(_) => {
            wake(s);
            true
        }
        Err(w) => {
            assert_eq!(
                w,
                StateWord(UMCG_TASK_RUNNING),
                "H10: server neither IDLE nor RUNNING"
            );
            false
        }
    }
}

/// (a) The wait/wake ordering rule (§2.4): the waker stores RUNNING into the wakee's state
/// *then* issues the wake (`WAKE_ONLY`, a context switch, or a hook's server wake); the
/// sleeper re-reads its state before each futex wait. A third thread issues a stray wake
/// without any store (a stale wake of an earlier round), which the loop must survive.
///
/// Mutation check: with `wake(&t)` moved before the CAS, loom reports a deadlock.
#[test]
fn store_state_then_wake_is_never_lost() {
    loom::model(|| {
        let t = Arc::new(UmcgTask::new_server());
        // The sleeper wrote its own IDLE before it can be woken (§2.6 "Wake-only").
        t.store_state(StateWord(UMCG_TASK_IDLE));
        let waker = {
            let t = t.clone();
            thread::spawn(move || {
                // IDLE=>RUNNING, then the wake.
                t.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
                    .expect("only the waker changes the sleeper's state");
                wake(&t);
            })
        };
        let stray = {
            let t = t.clone();
            thread::spawn(move || wake(&t))
        };
        assert_eq!(sleep_until_running(&t), StateWord(UMCG_TASK_RUNNING));
        waker.join().unwrap();
        stray.join().unwrap();
    });
}

/// (b) The block hook racing the server that runs the worker (§2.5.1, §2.6 "Server S runs
/// worker W"). The server writes S:IDLE, then `W.server_tid` and W:RUNNING, wakes W and
/// sleeps until S is RUNNING. The worker, once RUNNING, blocks at once: the block hook CASes
/// W RUNNING→BLOCKED, then S exactly IDLE→exactly RUNNING and wakes S (if S is exactly
/// RUNNING it gives up silently, as `kernel::block_begin` does). The server must always be
/// woken and find its worker BLOCKED.
///
/// Mutation check: with S:IDLE written after W:RUNNING (the order §2.6 forbids: "S must
/// already be IDLE when W becomes RUNNING"), the hook can find S still RUNNING and give up,
/// and loom reports the server asleep forever.
#[test]
fn block_hook_vs_server_going_idle() {
    const S_TID: u32 = 100;
    loom::model(|| {
        let s = Arc::new(UmcgTask::new_server());
        let w = Arc::new(UmcgTask::new_worker(0, 8));
        let worker = {
            let (s, w) = (s.clone(), w.clone());
            thread::spawn(move || {
                // The worker sleeps until a server runs it (registration's idle loop).
                let seen = sleep_until_running(&w);
                // Block hook, §2.5.1: RUNNING=>BLOCKED keeping the other bits.
                w.transition_once(seen, TaskState::Running, TaskState::Blocked)
                    .expect("nobody else writes W while it runs");
                assert_eq!(w.server_tid.load(Ordering::Acquire), S_TID);
                wake_server(&s);
            })
        };
        // T1, in the order of §2.6: S:IDLE first, then W.server_tid and W:RUNNING.
        s.store_state(StateWord(UMCG_TASK_IDLE));
        w.server_tid.store(S_TID, Ordering::Release);
        w.transition(TaskState::Idle, TaskState::Running)
            .expect("W was IDLE");
        wake(&w); // umcg_wait(next_tid = W): wake W, then the idle loop.
        assert_eq!(sleep_until_running(&s), StateWord(UMCG_TASK_RUNNING));
        assert_eq!(
            w.load_state(),
            StateWord(UMCG_TASK_BLOCKED),
            "the server woke without its worker blocked"
        );
        worker.join().unwrap();
    });
}

/// (c) The unblock path racing a server going idle (§2.5.2 steps 3–6 against §2.6 "Server
/// idles"; the "Ordering" paragraph of §2.7.1). The worker pushes itself on the idle-worker
/// list, `fence(SeqCst)`, pops an idle server (`IdleServerList::pop`, whose K1 step is the
/// kernel's barrier) and wakes it IDLE→RUNNING. The server writes S:IDLE, pushes itself on
/// the idle-server list, `fence(SeqCst)`, re-checks the idle-worker list: non-empty → it
/// removes its own node and proceeds (or, if a worker popped it first, waits to be made
/// RUNNING); empty → sleeps until RUNNING. Either way it must end up RUNNING with the worker
/// in hand: the take of the idle-worker list yields exactly that worker.
///
/// Mutation check: without the server's `fence(SeqCst)`, loom finds the store-buffering
/// interleaving (the server reads no worker, the pop reads no server) and reports the server
/// asleep forever. (Removing the worker's explicit fence does not fail: `IdleServerList::pop`
/// issues the same `fence(SeqCst)` itself, step K1, as the kernel's pop does.)
#[test]
fn unblock_vs_server_going_idle() {
    loom::model(|| {
        let servers = Arc::new(IdleServerList::new());
        let workers = Arc::new(IdleWorkerHead::new());
        let s = Arc::new(UmcgTask::new_server());
        servers.prepare(&s);
        let w = Arc::new(UmcgTask::new_worker(servers.head_addr(), workers.addr()));
        // The worker is BLOCKED; its wake hook has already CASed it BLOCKED=>IDLE.
        let worker = {
            let (servers, workers, w) = (servers.clone(), workers.clone(), w.clone());
            thread::spawn(move || {
                // §2.5.2 step 3: push on the idle-worker list.
                match workers.push(&w, BOUND as u32) {
                    Ok(WorkerPush::Pushed { .. }) => {}
                    other => panic!("worker push: {other:?}"),
                }
                // Step 4: the push must be visible before the idle-server list is read.
                fence(Ordering::SeqCst);
                // Steps 5–6: pop one idle server and wake it.
                match servers.pop(BOUND) {
                    Pop::Got(node) => {
                        // SAFETY: the only node ever pushed is `s`'s, and the model thread
                        // holds `s` until after it has joined this thread.
                        let t = unsafe { &*node.task() };
                        wake_server(t);
                    }
                    Pop::Empty => {}
                    other => panic!("pop: {other:?}"),
                }
            })
        };
        // The server idles: S:IDLE, push self, fence, re-check, wait.
        s.store_state(StateWord(UMCG_TASK_IDLE));
        // SAFETY: `s` is held by this Arc until the model ends; only this thread pushes it.
        assert_eq!(unsafe { servers.push(&s) }, Ok(Push::Pushed));
        fence(Ordering::SeqCst);
        if workers.is_empty() {
            sleep_until_running(&s);
        } else {
            match servers.remove(&s) {
                // Still live: leave the list by ourselves and proceed.
                Remove::Removed => s.store_state(StateWord(UMCG_TASK_RUNNING)),
                // A worker popped us first: it makes us RUNNING and wakes us.
                Remove::AlreadyDeleted => {
                    sleep_until_running(&s);
                }
                Remove::NotOnList => panic!("the node was pushed and nobody collects"),
            }
        }
        assert_eq!(s.load_state(), StateWord(UMCG_TASK_RUNNING));
        // The server has the worker: take the idle-worker list.
        let mut got = Vec::new();
        // SAFETY: the only task ever pushed is `w`, alive (Arc) until the model ends.
        for t in unsafe { workers.take_all(4) } {
            got.push(t.expect("well-formed chain").as_ptr().cast_const());
        }
        worker.join().unwrap();
        assert_eq!(
            got,
            vec![Arc::as_ptr(&w)],
            "the server woke without finding the worker"
        );
        assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), workers.addr());
        // The node is deleted (popped or removed), never unlinked by the popper.
        assert_ne!(
            s.idle_servers_ptr.load(Ordering::Relaxed) & idle_servers::DELETED,
            0
        );
    });
}
