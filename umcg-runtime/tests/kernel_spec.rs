//! The acceptance checklist of the spec (`shared/spec/UMCG.md` §7) against the emulated v0.3
//! kernel, with real threads: the scenarios of §7.3 items 19–27 that apply to v0.3 and to the
//! emulator's extensions (timeouts, eventfd idle wakeup, same-CPU placement), and the v0.1
//! selftests of §7.1 items 3–13 mapped onto v0.3.
//!
//! Mapping of the v0.1 selftests (§7.1): a "core task" is a server (or basic task) that wakes
//! others with `WAKE_ONLY` and waits or context-switches with `umcg_wait` (`next_tid`);
//! `umcg_swap` is a context switch; "the server polls" is a take of the idle-worker list;
//! RUNNABLE is IDLE and not queued, UNBLOCKED is IDLE and queued.
//!
//! Not repeated here (see `tests/kernel_scenarios.rs`): the errno table (item 18), one server
//! with four blocking and yielding workers, an unblock popping exactly one of two idle
//! servers (item 21), and the double-enqueue guard. Items 25 (preemption), 28 (PENDING) and 29
//! (fork/exec) are not part of v0.3.
//!
//! Rules kept by every test: no timing assertions; no sleep used as synchronisation (waits
//! poll a condition and fail after [`WATCHDOG`], so a lost wakeup fails instead of hanging);
//! one `Group` per test, since tests run in parallel in one process and share the kernel's
//! registry. The same binary runs in eventfd idle-wakeup mode with `UMCG_IDLE_WAKEUP=eventfd`.
#![cfg(not(umcg_loom))]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use umcg_abi::idle_servers::{Corruption, Gc, Node, Push, Reclaim, Remove};
use umcg_abi::*;
use umcg_runtime::kernel::{self, Ctl, Placement, UmcgError, Violation, ViolationKind};
use umcg_runtime::sys::{self, Errno};

fn deadline() -> Instant {
    Instant::now() + WATCHDOG
}

fn addr(t: &UmcgTask) -> usize {
    (t as *const UmcgTask).expose_provenance()
}

fn task_at(a: usize) -> &'static UmcgTask {
    // SAFETY: tests only pass addresses of tasks that stay alive for the rest of the test
    // (workers' tasks are leaked; servers' boxes outlive every use).
    unsafe { &*std::ptr::with_exposed_provenance::<UmcgTask>(a) }
}

fn abs_after(d: Duration) -> u64 {
    sys::futex::realtime_now_ns() + d.as_nanos() as u64
}

fn err(e: Errno) -> Result<(), UmcgError> {
    Err(UmcgError::Errno(e))
}

/// What a worker thread reports back: a result it observed, once.
type Slot<T> = Arc<Mutex<Option<T>>>;

fn take_slot<T>(what: &str, slot: &Slot<T>) -> T {
    let mut out = None;
    wait_for(what, || {
        out = slot.lock().unwrap().take();
        out.is_some()
    });
    out.unwrap()
}

// ------------------------------------------------------------------------------------------
// §7.3 item 19 and §7.1 item 10: registration

/// §7.3 item 19: a worker's registration queues it on the idle-worker list (IDLE), pops the
/// idle server found through `idle_servers_ptr` and wakes it (RUNNING, its node marked), and
/// does not return until a server runs the worker.
#[test]
fn registration_queues_worker_wakes_idle_server_and_blocks_until_run() {
    init();
    let group = Group::new();
    let s = Server::register(&group);
    announce(&s);
    // S idles on the list (§2.6 "Server idles") before any worker exists.
    s.task.store_state(StateWord(UMCG_TASK_IDLE));
    // SAFETY: `s` outlives every use of the list in this test.
    let pushed = unsafe { group.idle_servers.push(&s.task) };
    assert_eq!(pushed, Ok(Push::Pushed));
    fence(Ordering::SeqCst);
    assert!(group.idle_workers.is_empty());

    let wtid = Arc::new(AtomicU32::new(0));
    let ran = Arc::new(AtomicBool::new(false));
    let stid = s.tid;
    let worker = {
        let (g, wtid, ran) = (group.clone(), wtid.clone(), ran.clone());
        thread::spawn(move || {
            let w = Worker::register_with(&g, |_, tid| wtid.store(tid, Ordering::Release));
            ran.store(true, Ordering::Release);
            assert_eq!(w.task().load_state(), StateWord(UMCG_TASK_RUNNING));
            assert_eq!(w.task().server_tid.load(Ordering::Acquire), stid);
            w.exit();
        })
    };
    // The registration's wake hook pops S, makes it RUNNING, and wakes it.
    server_wait(&s.task);
    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_RUNNING));
    assert_ne!(
        s.task.idle_servers_ptr.load(Ordering::Acquire) & idle_servers::DELETED,
        0,
        "woken, so its node must have been popped (marked)"
    );
    assert_eq!(group.idle_servers.remove(&s.task), Remove::AlreadyDeleted);
    assert_eq!(group.idle_servers.reclaim(&s.task), Ok(Reclaim::Reset));
    // The worker was queued before the server was popped, and it sleeps without running.
    assert!(!group.idle_workers.is_empty(), "popped before the push");
    let wtid = wtid.load(Ordering::Acquire);
    wait_until_sleeping(wtid);
    assert!(
        !ran.load(Ordering::Acquire),
        "worker ran before a server ran it"
    );
    assert_eq!(group.drain_idle_workers(), 1);
    let w = group.pop_runnable().unwrap();
    assert_eq!(tid_of(w), wtid);
    assert_eq!(w.load_state(), StateWord(UMCG_TASK_IDLE));
    // Run it: the registration returns, the worker exits (IDLE|LOCKED).
    let st = s.run(w).unwrap();
    assert!(ran.load(Ordering::Acquire));
    assert_eq!(st, StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
    worker.join().unwrap();
}

/// §7.3 items 19 and 27 (last clause): workers that register at the same time, with no server,
/// are each queued exactly once (concurrent kernel pushes lose no node and duplicate none), and
/// none runs until a server runs it.
#[test]
fn concurrent_registrations_are_each_queued_once() {
    init();
    const N: usize = 6;
    let group = Group::new();
    let ran = Arc::new(AtomicU32::new(0));
    let start = Arc::new(Barrier::new(N));
    let workers: Vec<_> = (0..N)
        .map(|_| {
            let (g, ran, start) = (group.clone(), ran.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let w = Worker::register(&g);
                ran.fetch_add(1, Ordering::SeqCst);
                w.exit();
            })
        })
        .collect();
    let mut taken = Vec::new();
    wait_for("all workers queued", || {
        // SAFETY: only registered workers' (leaked) tasks are pushed on this list.
        for t in unsafe { group.idle_workers.take_all(64) } {
            taken.push(
                t.expect("corrupt idle-worker list")
                    .as_ptr()
                    .expose_provenance(),
            );
        }
        taken.len() >= N
    });
    let mut unique = taken.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), taken.len(), "a worker was queued twice");
    assert_eq!(taken.len(), N);
    for &a in &taken {
        assert_eq!(task_at(a).load_state(), StateWord(UMCG_TASK_IDLE));
        wait_until_sleeping(tid_of(task_at(a)));
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "a worker ran without a server"
    );

    let s = Server::register(&group);
    announce(&s);
    for &a in &taken {
        assert!(
            s.run(task_at(a)).unwrap().is_locked(),
            "worker exits LOCKED"
        );
    }
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(ran.load(Ordering::SeqCst), N as u32);
    assert!(group.idle_workers.is_empty());
}

/// §7.1 item 10 (`umcg_poll_run_test`): a worker registering while no server exists does not
/// run; a server that appears later takes it from the list (IDLE = RUNNABLE) and runs it; the
/// worker sees itself RUNNING after registering and after its body; after it unregisters it
/// is no longer a UMCG task. The server is RUNNING after registering and between runs.
#[test]
fn worker_does_not_run_before_a_server_exists() {
    init();
    let group = Group::new();
    let ran = Arc::new(AtomicBool::new(false));
    let wtid = Arc::new(AtomicU32::new(0));
    let worker = {
        let (g, ran, wtid) = (group.clone(), ran.clone(), wtid.clone());
        thread::spawn(move || {
            let w = Worker::register_with(&g, |_, tid| wtid.store(tid, Ordering::Release));
            assert_eq!(w.task().load_state(), StateWord(UMCG_TASK_RUNNING));
            ran.store(true, Ordering::Release);
            assert_eq!(w.task().load_state(), StateWord(UMCG_TASK_RUNNING));
            w.exit();
            assert_eq!(
                kernel::umcg_wait(0, 0),
                err(Errno::EINVAL),
                "still registered"
            );
        })
    };
    wait_for("the worker queued", || !group.idle_workers.is_empty());
    wait_until_sleeping(wtid.load(Ordering::Acquire));
    assert!(
        !ran.load(Ordering::Acquire),
        "the worker ran with no server"
    );

    let s = Server::register(&group);
    announce(&s);
    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_RUNNING));
    assert!(!ran.load(Ordering::Acquire));
    assert_eq!(group.drain_idle_workers(), 1);
    let w = group.pop_runnable().unwrap();
    assert_eq!(w.load_state(), StateWord(UMCG_TASK_IDLE), "RUNNABLE");
    let st = s.run(w).unwrap();
    assert!(ran.load(Ordering::Acquire));
    assert_eq!(st, StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_RUNNING));
    worker.join().unwrap();
}

// ------------------------------------------------------------------------------------------
// §7.3 item 20 and §7.1 item 11: run, block, unblock

/// §7.3 item 20: the server runs its worker (T1): the worker is RUNNING with `server_tid` = S
/// while S is IDLE and asleep; the worker blocks: it is BLOCKED, S is RUNNING and returns 0
/// from `umcg_wait`; the kernel leaves `server_tid` alone. After the block the worker is
/// queued and runs again only when the server runs it.
#[test]
fn server_runs_worker_then_worker_blocks() {
    init();
    let group = Group::new();
    // Handshake: the server stays RUNNING until the worker has checked it (`checked`); the
    // worker stays BLOCKED until the server has checked it (`saw_block`).
    let (checked, saw_block) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let s = Server::register(&group);
    announce(&s);
    let stid = s.tid;
    let worker = {
        let (g, checked, saw_block) = (group.clone(), checked.clone(), saw_block.clone());
        thread::spawn(move || {
            let w = Worker::register(&g);
            let t = w.task();
            let server = announced_server(stid).unwrap();
            assert_eq!(t.load_state(), StateWord(UMCG_TASK_RUNNING));
            assert_eq!(t.server_tid.load(Ordering::Acquire), stid);
            assert_eq!(server.load_state(), StateWord(UMCG_TASK_IDLE));
            wait_until_sleeping(stid);
            kernel::blocking(|| {
                // The block hook ran before this call "slept".
                assert_eq!(t.load_state(), StateWord(UMCG_TASK_BLOCKED));
                assert_eq!(server.load_state(), StateWord(UMCG_TASK_RUNNING));
                assert_eq!(t.server_tid.load(Ordering::Acquire), stid);
                checked.store(true, Ordering::Release);
                wait_for("the server saw the block", || {
                    saw_block.load(Ordering::Acquire)
                });
            })
            .unwrap();
            assert_eq!(t.load_state(), StateWord(UMCG_TASK_RUNNING));
            w.exit();
        })
    };
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    let st = s.run(w).expect("umcg_wait returns 0");
    assert_eq!(st, StateWord(UMCG_TASK_BLOCKED));
    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_RUNNING));
    assert_eq!(w.server_tid.load(Ordering::Acquire), s.tid);
    wait_for("the worker checked", || checked.load(Ordering::Acquire));
    saw_block.store(true, Ordering::Release);
    // Unblocked: BLOCKED=>IDLE, queued; run it again until it exits.
    s.wait_for_workers(deadline());
    let again = group.pop_runnable().unwrap();
    assert!(std::ptr::eq(again, w));
    assert_eq!(again.load_state(), StateWord(UMCG_TASK_IDLE));
    assert!(s.run(again).unwrap().is_locked());
    worker.join().unwrap();
}

/// §7.1 item 11 (`umcg_sleep_test`) and §7.3 item 21 without an idle server: the worker
/// reaches checkpoint 1, sleeps in the kernel (blocks); the server gets control back with the
/// worker BLOCKED (or already IDLE and queued); when the sleep ends the worker is queued, no
/// server is woken (none is idle), and it does not reach checkpoint 2 until the server takes
/// it from the list and runs it again.
#[test]
fn sleeping_worker_waits_for_the_server_after_waking() {
    init();
    let group = Group::new();
    let checkpoint = Arc::new(AtomicU32::new(0));
    let wtid = Arc::new(AtomicU32::new(0));
    let worker = {
        let (g, cp, wtid) = (group.clone(), checkpoint.clone(), wtid.clone());
        thread::spawn(move || {
            let w = Worker::register_with(&g, |_, tid| wtid.store(tid, Ordering::Release));
            cp.store(1, Ordering::Release);
            // The workload: a kernel sleep, bracketed by the hooks.
            kernel::blocking(|| thread::sleep(Duration::from_millis(2))).unwrap();
            cp.store(2, Ordering::Release);
            w.exit();
        })
    };
    let s = Server::register(&group);
    announce(&s);
    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_RUNNING));
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    let st = s.run(w).unwrap();
    assert!(
        st == StateWord(UMCG_TASK_BLOCKED) || st == StateWord(UMCG_TASK_IDLE),
        "after a block the worker is BLOCKED or UNBLOCKED, got {st:?}"
    );
    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_RUNNING));
    assert_eq!(checkpoint.load(Ordering::Acquire), 1);
    wait_for("the worker queued after its sleep", || {
        !group.idle_workers.is_empty()
    });
    wait_until_sleeping(wtid.load(Ordering::Acquire));
    assert_eq!(
        checkpoint.load(Ordering::Acquire),
        1,
        "ran without a server"
    );
    assert_eq!(w.load_state(), StateWord(UMCG_TASK_IDLE));
    assert_eq!(
        s.task.load_state(),
        StateWord(UMCG_TASK_RUNNING),
        "a RUNNING server that is not on the idle list is left alone"
    );
    assert_eq!(group.drain_idle_workers(), 1);
    let again = group.pop_runnable().unwrap();
    assert!(std::ptr::eq(again, w));
    assert!(s.run(again).unwrap().is_locked());
    assert_eq!(checkpoint.load(Ordering::Acquire), 2);
    worker.join().unwrap();
}

// ------------------------------------------------------------------------------------------
// §7.3 item 22 and §7.1 item 13: yield and worker-to-worker switch

#[derive(Default)]
struct OneRunning {
    on_cpu: AtomicU32,
    overlaps: AtomicU32,
    bad_states: AtomicU32,
    bodies: AtomicU32,
    yields: AtomicU32,
    swaps: AtomicU32,
    exited: AtomicU32,
    tasks: Mutex<Vec<usize>>,
}

/// §7.3 item 22: workers of one server alternate between yielding to the server (T2) and
/// swapping to another worker (T3, "W1 swaps to W2"). Counted: at most one worker of the
/// server executes at any time (an `on_cpu` counter entered after each return from
/// `umcg_wait` and left before each handoff); that worker's state is RUNNING with `server_tid`
/// = S and S is IDLE; whenever the server has control no worker is RUNNING; and the server
/// gets control back exactly once per yield and once per exit, never for a swap.
#[test]
fn yields_and_swaps_keep_one_running_worker_per_server() {
    init();
    const N: usize = 3;
    const ROUNDS: u32 = 200;
    let group = Group::new();
    let sh = Arc::new(OneRunning::default());
    let s = Server::register(&group);
    announce(&s);
    let stid = s.tid;
    let workers: Vec<_> = (0..N)
        .map(|_| {
            let (g, sh) = (group.clone(), sh.clone());
            thread::spawn(move || {
                let w = Worker::register_with(&g, |t, _| sh.tasks.lock().unwrap().push(addr(t)));
                let me = w.task();
                let server = announced_server(stid).unwrap();
                for r in 0..=ROUNDS {
                    if sh.on_cpu.fetch_add(1, Ordering::SeqCst) != 0 {
                        sh.overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    if me.load_state() != StateWord(UMCG_TASK_RUNNING)
                        || me.server_tid.load(Ordering::Acquire) != stid
                        || server.load_state() != StateWord(UMCG_TASK_IDLE)
                    {
                        sh.bad_states.fetch_add(1, Ordering::SeqCst);
                    }
                    sh.bodies.fetch_add(1, Ordering::SeqCst);
                    thread::yield_now(); // widen the window an overlap would need
                    sh.on_cpu.fetch_sub(1, Ordering::SeqCst);
                    if r == ROUNDS {
                        break;
                    }
                    // Odd rounds swap to a queued worker if there is one; the rest yield.
                    // Either way this worker queues itself first (the server is asleep and
                    // no other worker runs, so nobody can take it before it is IDLE).
                    let next = if r % 2 == 1 {
                        g.runq.lock().unwrap().pop()
                    } else {
                        None
                    };
                    g.runq.lock().unwrap().insert(0, addr(me));
                    match next {
                        Some(n) => {
                            sh.swaps.fetch_add(1, Ordering::SeqCst);
                            w.swap_to(task_at(n));
                        }
                        None => {
                            sh.yields.fetch_add(1, Ordering::SeqCst);
                            w.yield_with_timeout(0).expect("yield");
                        }
                    }
                }
                sh.exited.fetch_add(1, Ordering::SeqCst);
                w.exit();
            })
        })
        .collect();
    // Collect all N before running any, so that swaps find targets.
    let dl = deadline();
    while group.runq.lock().unwrap().len() < N {
        s.wait_for_workers(dl);
        assert!(Instant::now() < dl, "workers never registered");
        thread::yield_now();
    }
    let mut returns = 0u32;
    while sh.exited.load(Ordering::SeqCst) < N as u32 {
        let w = group
            .pop_runnable()
            .expect("every live worker that does not run is queued");
        s.run(w).unwrap();
        returns += 1;
        for &a in sh.tasks.lock().unwrap().iter() {
            assert_ne!(
                task_at(a).load_state().state(),
                TaskState::Running,
                "a worker is RUNNING while its server has control"
            );
        }
    }
    for w in workers {
        w.join().unwrap();
    }
    let yields = sh.yields.load(Ordering::SeqCst);
    let swaps = sh.swaps.load(Ordering::SeqCst);
    assert_eq!(
        sh.overlaps.load(Ordering::SeqCst),
        0,
        "two workers ran at once"
    );
    assert_eq!(sh.bad_states.load(Ordering::SeqCst), 0);
    assert_eq!(sh.bodies.load(Ordering::SeqCst), N as u32 * (ROUNDS + 1));
    assert_eq!(yields + swaps, N as u32 * ROUNDS);
    assert!(swaps > 0 && yields > 0, "yields {yields}, swaps {swaps}");
    assert_eq!(returns, yields + N as u32, "a swap woke the server");
}

/// §7.1 item 13 (`umcg_swap_test`): ten workers; the server takes all ten from the list and
/// runs each once (each yields back); then it runs worker 0, and worker i swaps to worker
/// i + 1 until the last one yields. The chain runs in order without returning to the server
/// early (the server is woken once, by the last worker), and ends with every worker IDLE;
/// then every worker is run to completion.
#[test]
fn swap_chain_of_ten_workers() {
    init();
    const N: usize = 10;
    let group = Group::new();
    let tasks: Arc<Vec<AtomicUsize>> = Arc::new((0..N).map(|_| AtomicUsize::new(0)).collect());
    let seq = Arc::new(AtomicU32::new(0));
    let finished: Arc<Vec<AtomicBool>> = Arc::new((0..N).map(|_| AtomicBool::new(false)).collect());
    let workers: Vec<_> = (0..N)
        .map(|i| {
            let (g, tasks, seq, fin) =
                (group.clone(), tasks.clone(), seq.clone(), finished.clone());
            thread::spawn(move || {
                let w =
                    Worker::register_with(&g, |t, _| tasks[i].store(addr(t), Ordering::Release));
                w.yield_with_timeout(0).expect("first yield");
                // The chain.
                assert_eq!(seq.fetch_add(1, Ordering::SeqCst), i as u32, "chain order");
                if i + 1 < N {
                    w.swap_to(task_at(tasks[i + 1].load(Ordering::Acquire)));
                } else {
                    w.yield_with_timeout(0).expect("last yield");
                }
                fin[i].store(true, Ordering::Release);
                w.exit();
            })
        })
        .collect();
    let s = Server::register(&group);
    announce(&s);
    let dl = deadline();
    while group.runq.lock().unwrap().len() < N {
        s.wait_for_workers(dl);
        assert!(Instant::now() < dl, "workers never registered");
        thread::yield_now();
    }
    // Run each once: it yields back at once (IDLE, held by the server, not queued).
    while let Some(w) = group.pop_runnable() {
        assert_eq!(s.run(w).unwrap().state(), TaskState::Idle);
    }
    assert!(group.idle_workers.is_empty());
    let task = |i: usize| task_at(tasks[i].load(Ordering::Acquire));
    // The chain: one run of worker 0 returns when worker 9 yields.
    s.run(task(0)).unwrap();
    assert_eq!(
        seq.load(Ordering::SeqCst),
        N as u32,
        "the server got control back early"
    );
    for i in 0..N {
        wait_for("the chain's workers back in umcg_wait", || {
            !task(i).load_state().is_locked()
        });
        assert_eq!(task(i).load_state(), StateWord(UMCG_TASK_IDLE));
        assert!(!finished[i].load(Ordering::Acquire));
    }
    // Every worker to completion.
    for i in 0..N {
        assert!(s.run(task(i)).unwrap().is_locked());
        assert!(finished[i].load(Ordering::Acquire));
    }
    for w in workers {
        w.join().unwrap();
    }
}

// ------------------------------------------------------------------------------------------
// §7.3 item 23, §7.1 items 3–9: wake-only, wait, and context switches between servers

/// §7.3 item 23: a `WAKE_ONLY` aimed at a task that has written IDLE but has not called
/// `umcg_wait` yet is not lost: the waker wrote RUNNING first, and the later wait returns 0 at
/// once instead of sleeping for a wake that already happened.
#[test]
fn wake_only_before_the_wait_is_not_lost() {
    init();
    const ROUNDS: u32 = 200;
    let group = Group::new();
    let waiter_task = Arc::new(AtomicUsize::new(0));
    let waiter_tid = Arc::new(AtomicU32::new(0));
    let idle_written = Arc::new(AtomicU32::new(0));
    let woken = Arc::new(AtomicU32::new(0));
    let waiter = {
        let (g, wt, wtid) = (group.clone(), waiter_task.clone(), waiter_tid.clone());
        let (idle_written, woken) = (idle_written.clone(), woken.clone());
        thread::spawn(move || {
            let s = Server::register(&g);
            wt.store(addr(&s.task), Ordering::Release);
            wtid.store(s.tid, Ordering::Release);
            for r in 1..=ROUNDS {
                s.task.store_state(StateWord(UMCG_TASK_IDLE));
                idle_written.store(r, Ordering::Release);
                // Not asleep yet: the wake is issued now.
                wait_for("the wake", || woken.load(Ordering::Acquire) == r);
                assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_RUNNING));
                server_wait(&s.task);
            }
        })
    };
    let me = Server::register(&group);
    wait_for("the waiter registered", || {
        waiter_tid.load(Ordering::Acquire) != 0
    });
    let t = task_at(waiter_task.load(Ordering::Acquire));
    me.task
        .next_tid
        .store(waiter_tid.load(Ordering::Acquire), Ordering::Release);
    for r in 1..=ROUNDS {
        wait_for("the waiter's IDLE", || {
            idle_written.load(Ordering::Acquire) == r
        });
        t.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
            .expect("the waiter is IDLE");
        assert_eq!(kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), Ok(()));
        woken.store(r, Ordering::Release);
    }
    waiter.join().unwrap();
    me.task.next_tid.store(0, Ordering::Release);
}

/// §7.1 item 3 (`umcg_wake_wait`): a waiter loops {IDLE; raise a "waiting" flag; every fifth
/// round yield the CPU; `umcg_wait`} while the waker does 10,000 × {claim the flag; waiter
/// IDLE=>RUNNING; `WAKE_ONLY`}, plus one final wake with "stop". Wakes often land before the
/// wait; none may be lost (a lost one times the waiter out), and the waiter must count
/// exactly 10,001 returns.
#[test]
fn wake_wait_ten_thousand_rounds_none_lost() {
    init();
    const STEPS: u32 = 10_000;
    let group = Group::new();
    let waiter_task = Arc::new(AtomicUsize::new(0));
    let waiter_tid = Arc::new(AtomicU32::new(0));
    let waiting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (g, wt, wtid) = (group.clone(), waiter_task.clone(), waiter_tid.clone());
        let (waiting, stop) = (waiting.clone(), stop.clone());
        thread::spawn(move || {
            let s = Server::register(&g);
            wt.store(addr(&s.task), Ordering::Release);
            wtid.store(s.tid, Ordering::Release);
            let (mut iters, mut early) = (0u32, 0u32);
            while !stop.load(Ordering::Acquire) {
                s.task.store_state(StateWord(UMCG_TASK_IDLE));
                waiting.store(true, Ordering::Release);
                if iters % 5 == 0 {
                    thread::yield_now();
                }
                if s.task.load_state().state() == TaskState::Running {
                    early += 1;
                }
                server_wait(&s.task);
                iters += 1;
            }
            (iters, early)
        })
    };
    let me = Server::register(&group);
    wait_for("the waiter registered", || {
        waiter_tid.load(Ordering::Acquire) != 0
    });
    let t = task_at(waiter_task.load(Ordering::Acquire));
    me.task
        .next_tid
        .store(waiter_tid.load(Ordering::Acquire), Ordering::Release);
    let dl = deadline();
    for i in 0..=STEPS {
        let mut spins = 0u32;
        while waiting
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins.is_multiple_of(64) {
                assert!(Instant::now() < dl, "the waiter stopped at wake {i}");
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if i == STEPS {
            stop.store(true, Ordering::Release);
        }
        t.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
            .expect("the waiter wrote IDLE before raising the flag");
        assert_eq!(kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), Ok(()));
    }
    let (iters, early) = waiter.join().unwrap();
    me.task.next_tid.store(0, Ordering::Release);
    assert_eq!(iters, STEPS + 1);
    eprintln!("wake/wait: {early} of {iters} wakes arrived before the wait");
}

/// How one side of a ping-pong hands over to the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hand {
    /// `WAKE_ONLY` the other, then `umcg_wait` (v0.1 `umcg_wake` + `umcg_wait`).
    WakeThenWait,
    /// One context switch: `next_tid` = other, `umcg_wait` (v0.1 `umcg_swap`).
    Switch,
}

/// One handover: write own IDLE (if the caller will wait), make the other RUNNING once it has
/// written its own IDLE (the wait/wake rule of §2.4: a wakee writes IDLE before it can be
/// woken; the waker writes RUNNING before it wakes), wake it, and wait (if `wait`).
fn hand_over(me: &UmcgTask, other: &UmcgTask, other_tid: u32, hand: Hand, wait: bool) {
    if wait {
        me.store_state(StateWord(UMCG_TASK_IDLE));
    }
    let t0 = Instant::now();
    while other
        .cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
        .is_err()
    {
        assert!(t0.elapsed() < WATCHDOG, "the other side never went IDLE");
        thread::yield_now();
    }
    me.next_tid.store(other_tid, Ordering::Release);
    if hand == Hand::Switch && wait {
        server_wait(me);
    } else {
        assert_eq!(kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), Ok(()));
        me.next_tid.store(0, Ordering::Release);
        if wait {
            server_wait(me);
        }
    }
}

/// §7.1 items 4–9: two server tasks play ping-pong for `ROUNDS` rounds each way. `loose`:
/// pong does not wait for the first ping and both sides switch from the start (item 7:
/// mutual switches must be legal; a switch may then target a task that is still running,
/// whose RUNNING state holds the wake). `payload`: one `gettid()` system call per round.
/// Counts are asserted, never timings.
fn ping_pong(ping_hand: Hand, pong_hand: Hand, loose: bool, payload: bool) {
    init();
    const ROUNDS: u32 = 10_000;
    let group = Group::new();
    let tasks: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let tids: Arc<[AtomicU32; 2]> = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let (ready, done) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let side = move |me: usize,
                     g: &Arc<Group>,
                     tasks: &[AtomicUsize; 2],
                     tids: &[AtomicU32; 2],
                     ready: &Barrier,
                     done: &Barrier| {
        let s = Server::register(g);
        tasks[me].store(addr(&s.task), Ordering::Release);
        tids[me].store(s.tid, Ordering::Release);
        ready.wait();
        let other = task_at(tasks[1 - me].load(Ordering::Acquire));
        let other_tid = tids[1 - me].load(Ordering::Acquire);
        let mut rounds = 0u32;
        if me == 0 || loose {
            let hand = if me == 0 { ping_hand } else { pong_hand };
            for _ in 0..ROUNDS {
                if payload {
                    // SAFETY: gettid takes no arguments and cannot fail.
                    unsafe { libc::syscall(libc::SYS_gettid) };
                }
                hand_over(&s.task, other, other_tid, hand, true);
                rounds += 1;
            }
        } else {
            // Strict pong: wait for the first ping; the last answer only wakes.
            s.task.store_state(StateWord(UMCG_TASK_IDLE));
            server_wait(&s.task);
            for r in 0..ROUNDS {
                if payload {
                    // SAFETY: as above.
                    unsafe { libc::syscall(libc::SYS_gettid) };
                }
                hand_over(&s.task, other, other_tid, pong_hand, r + 1 < ROUNDS);
                rounds += 1;
            }
        }
        done.wait();
        rounds
    };
    let pong = {
        let (g, tasks, tids, ready, done) = (
            group.clone(),
            tasks.clone(),
            tids.clone(),
            ready.clone(),
            done.clone(),
        );
        thread::spawn(move || side(1, &g, &tasks, &tids, &ready, &done))
    };
    let ping_rounds = side(0, &group, &tasks, &tids, &ready, &done);
    let pong_rounds = pong.join().unwrap();
    assert_eq!((ping_rounds, pong_rounds), (ROUNDS, ROUNDS));
}

/// §7.1 item 4 (`umcg_ping_pong_no_swaps_nop`): wake + wait on both sides.
#[test]
fn ping_pong_no_switches() {
    ping_pong(Hand::WakeThenWait, Hand::WakeThenWait, false, false);
}

/// §7.1 item 5 (`umcg_ping_pong_one_swap_nop`): ping switches, pong wakes + waits.
#[test]
fn ping_pong_one_side_switches() {
    ping_pong(Hand::Switch, Hand::WakeThenWait, false, false);
}

/// §7.1 item 6 (`umcg_ping_pong_all_swaps_nop`): both sides switch.
#[test]
fn ping_pong_both_sides_switch() {
    ping_pong(Hand::Switch, Hand::Switch, false, false);
}

/// §7.1 item 7 (`umcg_ping_pong_all_swaps_loose_nop`): both switch, pong does not wait for
/// the first ping.
#[test]
fn ping_pong_loose_mutual_switches() {
    ping_pong(Hand::Switch, Hand::Switch, true, false);
}

/// §7.1 item 8 (`umcg_ping_pong_no_swaps_payload`): as item 4 with a `gettid()` per round.
#[test]
fn ping_pong_no_switches_with_payload() {
    ping_pong(Hand::WakeThenWait, Hand::WakeThenWait, false, true);
}

/// §7.1 item 9 (`umcg_ping_pong_all_swaps_payload`): as item 6 with a `gettid()` per round.
#[test]
fn ping_pong_both_sides_switch_with_payload() {
    ping_pong(Hand::Switch, Hand::Switch, false, true);
}

// ------------------------------------------------------------------------------------------
// §7.1 item 12: a waiting worker woken with WAKE_ONLY

/// §7.1 item 12 (`umcg_wait_wake_test`) and §2.6 "IDLE → IDLE (+ queued)": a worker waits in
/// `umcg_wait` (it yielded; the server sees it IDLE and not queued = RUNNABLE) and cannot
/// proceed by itself. A `WAKE_ONLY` aimed at it runs the wake hook: it is queued (IDLE on the
/// list = UNBLOCKED) and the idle server on the list is popped and woken, but the worker
/// still cannot proceed until a server takes it and runs it.
#[test]
fn waiting_worker_woken_with_wake_only_is_queued_not_run() {
    init();
    let group = Group::new();
    let checkpoint = Arc::new(AtomicU32::new(0));
    let wtid = Arc::new(AtomicU32::new(0));
    let worker = {
        let (g, cp, wtid) = (group.clone(), checkpoint.clone(), wtid.clone());
        thread::spawn(move || {
            let w = Worker::register_with(&g, |_, tid| wtid.store(tid, Ordering::Release));
            cp.store(1, Ordering::Release);
            w.yield_with_timeout(0).expect("wait");
            cp.store(2, Ordering::Release);
            w.exit();
        })
    };
    let s = Server::register(&group);
    announce(&s);
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    assert_eq!(s.run(w).unwrap().state(), TaskState::Idle);
    let wtid = wtid.load(Ordering::Acquire);
    // LOCKED is cleared right before the worker's idle loop sleeps.
    wait_for("the worker in umcg_wait", || !w.load_state().is_locked());
    wait_until_sleeping(wtid);
    assert_eq!(w.load_state(), StateWord(UMCG_TASK_IDLE));
    assert!(group.idle_workers.is_empty(), "a yield does not queue");
    assert_eq!(checkpoint.load(Ordering::Acquire), 1);

    // A second server idles on the list.
    let s2_tid = Arc::new(AtomicU32::new(0));
    let s2 = {
        let (g, s2_tid) = (group.clone(), s2_tid.clone());
        thread::spawn(move || {
            let s2 = Server::register(&g);
            announce(&s2);
            s2_tid.store(s2.tid, Ordering::Release);
            let popped = s2.idle_once(deadline());
            s2.reclaim_node();
            popped
        })
    };
    wait_for("S2 on the idle-server list", || {
        live_idle_servers(&group) == 1
    });
    wait_until_sleeping(s2_tid.load(Ordering::Acquire));

    // WAKE_ONLY the waiting worker: its state is not changed by the waker.
    s.task.next_tid.store(wtid, Ordering::Release);
    assert_eq!(kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), Ok(()));
    s.task.next_tid.store(0, Ordering::Release);
    assert!(
        s2.join().unwrap(),
        "the wake hook must pop and wake the idle server"
    );
    assert!(!group.idle_workers.is_empty(), "queued before the pop");
    wait_until_sleeping(wtid);
    assert_eq!(
        checkpoint.load(Ordering::Acquire),
        1,
        "proceeded without a server"
    );
    assert_eq!(w.load_state(), StateWord(UMCG_TASK_IDLE));
    assert_eq!(group.drain_idle_workers(), 1);
    let again = group.pop_runnable().unwrap();
    assert!(std::ptr::eq(again, w));
    assert!(s.run(again).unwrap().is_locked());
    assert_eq!(checkpoint.load(Ordering::Acquire), 2);
    worker.join().unwrap();
}

// ------------------------------------------------------------------------------------------
// §7.3 item 24: LOCKED

/// §7.3 item 24: LOCKED suppresses block detection (a RUNNING|LOCKED worker that sleeps stays
/// RUNNING|LOCKED and its server is not woken) and wake detection (a worker that becomes
/// BLOCKED|LOCKED during its sleep is not queued when it wakes; once it clears LOCKED the
/// wake hook runs normally); `umcg_wait` clears LOCKED (a worker that yields as IDLE|LOCKED is
/// plain IDLE once it sleeps).
#[test]
fn locked_suppresses_block_and_wake_detection_and_wait_clears_it() {
    init();
    let group = Group::new();
    // Handshake: the server stays RUNNING until the worker has checked it (`checked`); the
    // worker stays BLOCKED until the server has checked it (`saw_block`).
    let (checked, saw_block) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let s = Server::register(&group);
    announce(&s);
    let stid = s.tid;
    let worker = {
        let (g, checked, saw_block) = (group.clone(), checked.clone(), saw_block.clone());
        thread::spawn(move || {
            let w = Worker::register(&g);
            let t = w.task();
            let server = announced_server(stid).unwrap();
            // 1. RUNNING|LOCKED: neither hook does anything.
            t.set_flags_if(TaskState::Running, UMCG_TF_LOCKED).unwrap();
            kernel::blocking(|| {
                assert_eq!(
                    t.load_state(),
                    StateWord(UMCG_TASK_RUNNING | UMCG_TF_LOCKED)
                );
                assert_eq!(server.load_state(), StateWord(UMCG_TASK_IDLE), "woken");
            })
            .unwrap();
            assert_eq!(
                t.load_state(),
                StateWord(UMCG_TASK_RUNNING | UMCG_TF_LOCKED)
            );
            assert!(g.idle_workers.is_empty(), "queued although LOCKED");
            assert_eq!(server.load_state(), StateWord(UMCG_TASK_IDLE));
            // 2. Unlocked block; LOCKED set while blocked suppresses the wake hook.
            t.clear_flags_if(TaskState::Running, UMCG_TF_LOCKED)
                .unwrap();
            kernel::blocking(|| {
                assert_eq!(t.load_state(), StateWord(UMCG_TASK_BLOCKED));
                assert_eq!(server.load_state(), StateWord(UMCG_TASK_RUNNING));
                checked.store(true, Ordering::Release);
                wait_for("the server saw the block", || {
                    saw_block.load(Ordering::Acquire)
                });
                t.set_flags_if(TaskState::Blocked, UMCG_TF_LOCKED).unwrap();
            })
            .unwrap();
            assert_eq!(
                t.load_state(),
                StateWord(UMCG_TASK_BLOCKED | UMCG_TF_LOCKED)
            );
            assert!(g.idle_workers.is_empty(), "queued although LOCKED");
            // Unlock: the wake hook now runs (queued; returns once run).
            t.clear_flags_if(TaskState::Blocked, UMCG_TF_LOCKED)
                .unwrap();
            kernel::block_end().unwrap();
            assert_eq!(t.load_state(), StateWord(UMCG_TASK_RUNNING));
            // 3. Yield as IDLE|LOCKED; umcg_wait clears LOCKED.
            w.yield_with_timeout(0).unwrap();
            w.exit();
        })
    };
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    assert_eq!(
        s.run(w).unwrap(),
        StateWord(UMCG_TASK_BLOCKED),
        "only the unlocked block"
    );
    wait_for("the worker checked", || checked.load(Ordering::Acquire));
    saw_block.store(true, Ordering::Release);
    // The worker comes back through the list only after clearing LOCKED.
    s.wait_for_workers(deadline());
    let again = group.pop_runnable().unwrap();
    assert!(std::ptr::eq(again, w));
    assert_eq!(again.load_state(), StateWord(UMCG_TASK_IDLE));
    assert_eq!(s.run(again).unwrap().state(), TaskState::Idle);
    wait_for("umcg_wait clears LOCKED", || !w.load_state().is_locked());
    assert_eq!(w.load_state(), StateWord(UMCG_TASK_IDLE));
    assert!(s.run(w).unwrap().is_locked());
    worker.join().unwrap();
}

// ------------------------------------------------------------------------------------------
// §7.3 item 26: timeouts (extension; v0.3 answered EOPNOTSUPP)

/// §7.3 item 26, §4.3 step 7, servers: a server that waits with a timeout returns
/// `ETIMEDOUT` still IDLE, both idle on the list (its node still live: nobody popped it) and
/// after switching to a worker that keeps running (the worker is still RUNNING); user space
/// puts it back to RUNNING.
#[test]
fn server_timeout_returns_etimedout_still_idle() {
    init();
    let group = Group::new();
    let s = Server::register(&group);
    announce(&s);
    // Idle on the list with a timeout.
    s.task.store_state(StateWord(UMCG_TASK_IDLE));
    // SAFETY: `s` outlives the list's use.
    let pushed = unsafe { group.idle_servers.push(&s.task) };
    assert_eq!(pushed, Ok(Push::Pushed));
    fence(Ordering::SeqCst);
    assert!(group.idle_workers.is_empty());
    let r = loop {
        match kernel::umcg_wait(0, abs_after(Duration::from_millis(5))) {
            Err(UmcgError::Errno(Errno::EINTR)) => continue,
            r => break r,
        }
    };
    assert_eq!(r, err(Errno::ETIMEDOUT));
    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_IDLE));
    assert_eq!(
        group.idle_servers.remove(&s.task),
        Remove::Removed,
        "still live"
    );
    assert_eq!(group.idle_servers.reclaim(&s.task), Ok(Reclaim::Reset));
    s.task.store_state(StateWord(UMCG_TASK_RUNNING));

    // Switch to a worker with a timeout; the worker keeps running past it.
    let release = Arc::new(AtomicBool::new(false));
    let worker = {
        let (g, release) = (group.clone(), release.clone());
        thread::spawn(move || {
            let w = Worker::register(&g);
            wait_for("release", || release.load(Ordering::Acquire));
            w.yield_with_timeout(0).unwrap();
            w.exit();
        })
    };
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    let wtid = tid_of(w);
    s.task.store_state(StateWord(UMCG_TASK_IDLE));
    w.server_tid.store(s.tid, Ordering::Release);
    w.transition(TaskState::Idle, TaskState::Running).unwrap();
    s.task.next_tid.store(wtid, Ordering::Release);
    let r = kernel::umcg_wait(0, abs_after(Duration::from_millis(5)));
    s.task.next_tid.store(0, Ordering::Release);
    assert_eq!(r, err(Errno::ETIMEDOUT));
    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_IDLE));
    assert_eq!(w.load_state(), StateWord(UMCG_TASK_RUNNING));
    s.task
        .cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
        .unwrap();
    release.store(true, Ordering::Release);
    wait_for("the worker yields", || {
        w.load_state() == StateWord(UMCG_TASK_IDLE)
    });
    assert!(s.run(w).unwrap().is_locked());
    worker.join().unwrap();
}

/// §7.3 item 26, §4.3 step 6, workers: a worker whose `umcg_wait` times out while IDLE goes
/// through wake detection: it is queued (IDLE on the idle-worker list) and an idle server is
/// popped and woken; it does not return from `umcg_wait` until a server runs it again, and only
/// then sees `ETIMEDOUT`.
#[test]
fn worker_timeout_requeues_and_reports_etimedout_after_run() {
    init();
    let group = Group::new();
    let w_running = Arc::new(AtomicBool::new(false));
    let s2_idle = Arc::new(AtomicBool::new(false));
    let result: Slot<Result<(), UmcgError>> = Arc::default();
    let returned = Arc::new(AtomicBool::new(false));
    let wtid = Arc::new(AtomicU32::new(0));
    let s = Server::register(&group);
    announce(&s);
    // S2 idles on the list only once the worker runs, so that the worker's registration
    // cannot pop it; the worker times out only once S2 is on the list.
    let s2 = {
        let (g, w_running, s2_idle) = (group.clone(), w_running.clone(), s2_idle.clone());
        thread::spawn(move || {
            let s2 = Server::register(&g);
            announce(&s2);
            wait_for("the worker running", || w_running.load(Ordering::Acquire));
            // The server-idles protocol, announcing itself between the re-check and the wait.
            s2.task.store_state(StateWord(UMCG_TASK_IDLE));
            // SAFETY: `s2` outlives the list's use.
            assert_eq!(unsafe { g.idle_servers.push(&s2.task) }, Ok(Push::Pushed));
            fence(Ordering::SeqCst);
            assert!(g.idle_workers.is_empty());
            s2_idle.store(true, Ordering::Release);
            server_wait(&s2.task);
            let popped = s2.task.idle_servers_ptr.load(Ordering::Acquire) & 1 != 0;
            s2.reclaim_node();
            popped
        })
    };
    let worker = {
        let (g, w_running, s2_idle) = (group.clone(), w_running.clone(), s2_idle.clone());
        let (result, returned, wtid) = (result.clone(), returned.clone(), wtid.clone());
        thread::spawn(move || {
            let w = Worker::register_with(&g, |_, tid| wtid.store(tid, Ordering::Release));
            w_running.store(true, Ordering::Release);
            wait_for("S2 idle", || s2_idle.load(Ordering::Acquire));
            // Yield with a timeout that passes before anybody runs it again.
            let r = w.yield_with_timeout(abs_after(Duration::from_millis(1)));
            returned.store(true, Ordering::Release);
            assert_eq!(w.task().load_state(), StateWord(UMCG_TASK_RUNNING));
            *result.lock().unwrap() = Some(r);
            w.exit();
        })
    };
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    // Returns when the worker yields (with its timeout running).
    assert_eq!(s.run(w).unwrap().state(), TaskState::Idle);
    // The timeout: IDLE=>BLOCKED=>IDLE, queued, S2 popped and woken.
    assert!(
        s2.join().unwrap(),
        "the timed-out worker must pop the idle server"
    );
    assert!(!group.idle_workers.is_empty(), "queued before the pop");
    wait_until_sleeping(wtid.load(Ordering::Acquire));
    assert!(
        !returned.load(Ordering::Acquire),
        "returned before a server ran it"
    );
    assert_eq!(w.load_state(), StateWord(UMCG_TASK_IDLE));
    assert_eq!(group.drain_idle_workers(), 1);
    let again = group.pop_runnable().unwrap();
    assert!(std::ptr::eq(again, w));
    assert!(s.run(again).unwrap().is_locked());
    assert_eq!(
        take_slot("the worker's result", &result),
        err(Errno::ETIMEDOUT)
    );
    worker.join().unwrap();
}

// ------------------------------------------------------------------------------------------
// §7.3 item 27: the idle-server list under the kernel

/// A server thread that idles once on `g`'s list, reports whether it was popped, and keeps
/// its node (marked) until `may_reclaim`.
fn idle_server_thread(
    g: &Arc<Group>,
    task_out: &Arc<AtomicUsize>,
    popped: &Arc<AtomicU32>,
    may_reclaim: &Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let (g, task_out, popped, may_reclaim) = (
        g.clone(),
        task_out.clone(),
        popped.clone(),
        may_reclaim.clone(),
    );
    thread::spawn(move || {
        let s = Server::register(&g);
        announce(&s);
        task_out.store(addr(&s.task), Ordering::Release);
        let was_popped = s.idle_once(deadline());
        popped.store(if was_popped { 1 } else { 2 }, Ordering::Release);
        wait_for("may reclaim", || may_reclaim.load(Ordering::Acquire));
        s.reclaim_node();
    })
}

/// §7.3 item 27: the kernel pops idle servers by marking them and never unlinks a node: two
/// servers idle (Sb on top of Sa); an unblocking worker pops Sb (marked, still the head), a
/// second unblock skips Sb and pops Sa; the head word never changes until user-space GC
/// (the servers' reclaim) unlinks both.
#[test]
fn kernel_marks_idle_servers_and_never_unlinks_them() {
    init();
    let group = Group::new();
    let go = Arc::new(AtomicU32::new(0));
    let worker = {
        let (g, go) = (group.clone(), go.clone());
        thread::spawn(move || {
            let w = Worker::register(&g);
            for round in 1..=2 {
                kernel::blocking(|| wait_for("go", || go.load(Ordering::Acquire) >= round))
                    .unwrap();
            }
            w.exit();
        })
    };
    let s = Server::register(&group);
    announce(&s);
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    assert_eq!(s.run(w).unwrap(), StateWord(UMCG_TASK_BLOCKED));

    let may_reclaim = Arc::new(AtomicBool::new(false));
    let (sa_task, sa_popped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU32::new(0)));
    let (sb_task, sb_popped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU32::new(0)));
    let sa = idle_server_thread(&group, &sa_task, &sa_popped, &may_reclaim);
    wait_for("Sa idle", || live_idle_servers(&group) == 1);
    let sb = idle_server_thread(&group, &sb_task, &sb_popped, &may_reclaim);
    wait_for("Sb idle", || live_idle_servers(&group) == 2);
    let sa_t = task_at(sa_task.load(Ordering::Acquire));
    let sb_t = task_at(sb_task.load(Ordering::Acquire));
    let (na, nb) = (Node::of(sa_t).addr(), Node::of(sb_t).addr());
    assert_eq!(group.idle_servers.head_word(), nb);
    assert_eq!(sb_t.idle_servers_ptr.load(Ordering::Acquire), na);
    assert_eq!(sa_t.idle_servers_ptr.load(Ordering::Acquire), 0);

    // First unblock: Sb popped, marked in place.
    go.store(1, Ordering::Release);
    wait_for("Sb woken", || sb_popped.load(Ordering::Acquire) != 0);
    assert_eq!(
        sb_popped.load(Ordering::Acquire),
        1,
        "Sb woken but not popped"
    );
    assert_eq!(
        group.idle_servers.head_word(),
        nb,
        "the kernel unlinked a node"
    );
    assert_eq!(sb_t.idle_servers_ptr.load(Ordering::Acquire), na | 1);
    assert_eq!(
        sa_t.idle_servers_ptr.load(Ordering::Acquire),
        0,
        "Sa popped too"
    );
    assert_eq!(sa_popped.load(Ordering::Acquire), 0);
    assert_eq!(group.idle_servers.leading_deleted(8), Ok(1));
    wait_for("the worker queued", || !group.idle_workers.is_empty());
    assert_eq!(group.drain_idle_workers(), 1);
    let w = group.pop_runnable().unwrap();
    assert_eq!(s.run(w).unwrap(), StateWord(UMCG_TASK_BLOCKED));

    // Second unblock: the pop skips the marked Sb and marks Sa.
    go.store(2, Ordering::Release);
    wait_for("Sa woken", || sa_popped.load(Ordering::Acquire) != 0);
    assert_eq!(
        sa_popped.load(Ordering::Acquire),
        1,
        "Sa woken but not popped"
    );
    assert_eq!(
        group.idle_servers.head_word(),
        nb,
        "the kernel unlinked a node"
    );
    assert_eq!(sb_t.idle_servers_ptr.load(Ordering::Acquire), na | 1);
    assert_eq!(sa_t.idle_servers_ptr.load(Ordering::Acquire), 1);
    assert_eq!(group.idle_servers.leading_deleted(8), Ok(2));
    assert_eq!(group.idle_servers.is_empty(), Ok(true));

    // User-space GC unlinks the marked nodes.
    may_reclaim.store(true, Ordering::Release);
    sa.join().unwrap();
    sb.join().unwrap();
    assert_eq!(group.idle_servers.head_word(), 0);
    wait_for("the worker queued", || !group.idle_workers.is_empty());
    assert_eq!(group.drain_idle_workers(), 1);
    let w = group.pop_runnable().unwrap();
    assert!(s.run(w).unwrap().is_locked());
    worker.join().unwrap();
}

fn assert_violation(r: Result<Ctl, UmcgError>, kind: ViolationKind, tid: u32) {
    match r {
        Err(UmcgError::Violation(Violation {
            kind: k, tid: t, ..
        })) => {
            assert_eq!((k, t), (kind, tid));
        }
        other => panic!("expected a {kind:?} violation by {tid}, got {other:?}"),
    }
}

/// §7.3 item 27: a tagged head word of the idle-server list is detected by every kernel path
/// that pops it (the real kernel killed the worker; with `OnViolation::ReturnError` the Rust
/// API reports it): the wake hook after a block (`UmcgError::Violation`), the wake hook run
/// from a worker's `umcg_wait` idle loop (`EFAULT`), and a worker's registration
/// (`UmcgError::Violation`).
#[test]
fn tagged_idle_server_head_is_a_violation() {
    init();
    let group = Group::new();
    let s = Server::register(&group);
    announce(&s);
    let bad = Node::of(&s.task).addr() | idle_servers::DELETED;
    let want = ViolationKind::IdleServersCorrupt(Corruption::TaggedHead(bad));
    let corrupted = Arc::new(AtomicBool::new(false));

    // 1. The wake hook after a block.
    let result: Slot<(Result<(), UmcgError>, u32)> = Arc::default();
    let worker = {
        let (g, corrupted, result) = (group.clone(), corrupted.clone(), result.clone());
        thread::spawn(move || {
            let _w = Worker::register(&g);
            kernel::block_begin().unwrap();
            wait_for("the head corrupted", || corrupted.load(Ordering::Acquire));
            let r = kernel::block_end();
            *result.lock().unwrap() = Some((r, sys::gettid()));
            // The kernel would have killed it: leave.
            let _ = unregister_self();
        })
    };
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    assert_eq!(s.run(w).unwrap(), StateWord(UMCG_TASK_BLOCKED));
    group.idle_servers.corrupt_head_for_test(bad);
    corrupted.store(true, Ordering::Release);
    let (r, tid) = take_slot("the block_end result", &result);
    assert_violation(r.map(|()| Ctl::Done), want, tid);
    worker.join().unwrap();
    group.idle_servers.corrupt_head_for_test(0);
    assert_eq!(
        group.drain_idle_workers(),
        1,
        "pushed before the pop failed"
    );
    group.runq.lock().unwrap().clear();

    // 2. The wake hook inside umcg_wait (WAKE_ONLY to a waiting worker): EFAULT.
    let wait_result: Slot<Result<(), UmcgError>> = Arc::default();
    let worker = {
        let (g, wait_result) = (group.clone(), wait_result.clone());
        thread::spawn(move || {
            let w = Worker::register(&g);
            let r = w.yield_with_timeout(0);
            *wait_result.lock().unwrap() = Some(r);
            let _ = unregister_self();
        })
    };
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    let wtid = tid_of(w);
    assert_eq!(s.run(w).unwrap().state(), TaskState::Idle);
    wait_for("the worker in umcg_wait", || !w.load_state().is_locked());
    wait_until_sleeping(wtid);
    group.idle_servers.corrupt_head_for_test(bad);
    s.task.next_tid.store(wtid, Ordering::Release);
    assert_eq!(kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), Ok(()));
    s.task.next_tid.store(0, Ordering::Release);
    assert_eq!(
        take_slot("the umcg_wait result", &wait_result),
        err(Errno::EFAULT)
    );
    worker.join().unwrap();
    group.idle_servers.corrupt_head_for_test(0);
    assert_eq!(group.drain_idle_workers(), 1);
    group.runq.lock().unwrap().clear();

    // 3. A worker's registration.
    group.idle_servers.corrupt_head_for_test(bad);
    let g = group.clone();
    let (r, tid) = thread::spawn(move || {
        let tid = AtomicU32::new(0);
        let (r, _) = Worker::try_register_with(&g, |_, t| tid.store(t, Ordering::Release));
        let _ = unregister_self();
        (r, tid.load(Ordering::Acquire))
    })
    .join()
    .unwrap();
    assert_violation(r, want, tid);
    group.idle_servers.corrupt_head_for_test(0);
    assert_eq!(group.drain_idle_workers(), 1);
    group.runq.lock().unwrap().clear();
}

fn unregister_self() -> Result<Ctl, UmcgError> {
    // SAFETY: unregister takes no pointer.
    unsafe { kernel::umcg_ctl(UMCG_CTL_UNREGISTER, std::ptr::null_mut()) }
}

/// §7.3 item 27 and hazard H4: the kernel's pop visits at most `2 × nr_cpu_ids` nodes.
/// With `bound − 1` leading marked nodes it still reaches a live server behind them (and
/// consumes it without waking it, since it is RUNNING: H8); with `bound` or `bound + 1` leading
/// marked nodes a registering worker's wake hook reports `IdleServersBoundExceeded`; once
/// user-space GC has unlinked them, registration works again.
#[test]
fn too_many_leading_marked_nodes_is_a_violation() {
    init();
    let bound = kernel::list_bound();
    let n = bound + 1;
    let group = Group::new();
    // n registered servers (nodes must be registered servers' nodes), RUNNING, parked.
    let park = Arc::new(Barrier::new(n + 1));
    let (tx, rx) = mpsc::channel::<usize>();
    let parked: Vec<_> = (0..n)
        .map(|_| {
            let (g, park, tx) = (group.clone(), park.clone(), tx.clone());
            thread::spawn(move || {
                let s = Server::register(&g);
                tx.send(addr(&s.task)).unwrap();
                park.wait();
            })
        })
        .collect();
    let nodes: Vec<&UmcgTask> = (0..n).map(|_| task_at(rx.recv().unwrap())).collect();
    for t in &nodes {
        // SAFETY: the parked servers stay registered (and their tasks alive) until `park`.
        assert_eq!(unsafe { group.idle_servers.push(t) }, Ok(Push::Pushed));
    }
    // Top of the list: nodes[n - 1]. Mark the top bound − 1 nodes: nodes[2..n].
    for t in &nodes[2..] {
        assert_eq!(group.idle_servers.remove(t), Remove::Removed);
    }
    let head = group.idle_servers.head_word();
    assert_eq!(group.idle_servers.leading_deleted(4 * n), Ok(bound - 1));

    let s = Server::register(&group);
    announce(&s);
    let register = || {
        let g = group.clone();
        thread::spawn(move || {
            let tid = AtomicU32::new(0);
            let (r, w) = Worker::try_register_with(&g, |_, t| tid.store(t, Ordering::Release));
            match r {
                Ok(_) => w.exit(),
                Err(_) => {
                    let _ = unregister_self();
                }
            }
            (r, tid.load(Ordering::Acquire))
        })
    };

    // bound − 1 leading marked nodes: the pop reaches the live nodes[1] and marks it.
    let h = register();
    wait_for("nodes[1] popped", || {
        nodes[1].idle_servers_ptr.load(Ordering::Acquire) & idle_servers::DELETED != 0
    });
    assert_eq!(
        nodes[1].load_state(),
        StateWord(UMCG_TASK_RUNNING),
        "H8: a RUNNING server is consumed, not woken"
    );
    assert_eq!(group.drain_idle_workers(), 1);
    let w = group.pop_runnable().unwrap();
    assert!(s.run(w).unwrap().is_locked());
    assert_eq!(h.join().unwrap().0, Ok(Ctl::Done));
    assert_eq!(
        group.idle_servers.head_word(),
        head,
        "the kernel unlinked a node"
    );
    assert_eq!(group.idle_servers.leading_deleted(4 * n), Ok(bound));

    // bound leading marked nodes, the live nodes[0] behind them: the bound is exhausted.
    let (r, tid) = register().join().unwrap();
    assert_violation(r, ViolationKind::IdleServersBoundExceeded, tid);
    assert_eq!(
        nodes[0].idle_servers_ptr.load(Ordering::Acquire) & idle_servers::DELETED,
        0
    );
    // bound + 1 leading marked nodes (all of them).
    assert_eq!(group.idle_servers.remove(nodes[0]), Remove::Removed);
    let (r, tid) = register().join().unwrap();
    assert_violation(r, ViolationKind::IdleServersBoundExceeded, tid);
    assert_eq!(
        group.idle_servers.head_word(),
        head,
        "the kernel unlinked a node"
    );
    assert_eq!(group.idle_servers.leading_deleted(4 * n), Ok(n));
    // The two failed registrations were queued before their pops failed.
    assert_eq!(group.drain_idle_workers(), 2);
    group.runq.lock().unwrap().clear();

    // User-space GC unlinks every marked node; registration works again (nothing to pop).
    match group.idle_servers.gc() {
        Gc::Done(st) => assert_eq!(st.unlinked, n),
        other => panic!("gc: {other:?}"),
    }
    assert_eq!(group.idle_servers.head_word(), 0);
    let h = register();
    wait_for("the worker queued", || !group.idle_workers.is_empty());
    assert_eq!(group.drain_idle_workers(), 1);
    let w = group.pop_runnable().unwrap();
    assert!(s.run(w).unwrap().is_locked());
    assert_eq!(h.join().unwrap().0, Ok(Ctl::Done));
    park.wait();
    for p in parked {
        p.join().unwrap();
    }
}

// ------------------------------------------------------------------------------------------
// Extension: same-CPU placement

/// Extension (the emulation of `WF_CURRENT_CPU`): under [`Placement::SameCpu`] a worker woken
/// by a context switch is pinned to one CPU (the waker's at the time of the wake). Skipped
/// when placement is `Free` (`UMCG_PLACEMENT=free`) or the thread may run on one CPU only.
#[test]
fn same_cpu_placement_pins_a_switched_worker() {
    init();
    if kernel::placement() != Placement::SameCpu || sys::allowed_cpus().unwrap().len() < 2 {
        eprintln!("skipped: placement {:?}", kernel::placement());
        return;
    }
    let group = Group::new();
    let ran = Arc::new(AtomicBool::new(false));
    let worker = {
        let (g, ran) = (group.clone(), ran.clone());
        thread::spawn(move || {
            let before = sys::allowed_cpus().unwrap();
            let w = Worker::register(&g);
            w.exit();
            // The waker pins the wakee after storing its RUNNING, and the wakee may see that
            // store early: read the mask once the server's switch has certainly returned.
            wait_for("the server's switch done", || ran.load(Ordering::Acquire));
            (before, sys::allowed_cpus().unwrap())
        })
    };
    let s = Server::register(&group);
    announce(&s);
    s.wait_for_workers(deadline());
    let w = group.pop_runnable().unwrap();
    assert!(s.run(w).unwrap().is_locked());
    ran.store(true, Ordering::Release);
    let (before, after) = worker.join().unwrap();
    assert!(before.len() >= 2);
    assert_eq!(after.len(), 1, "not pinned: {after:?}");
    assert!(before.contains(&after[0]));
}
