//! criterion benches of thread handoffs through the emulated UMCG kernel (v0.3), each against
//! a raw futex baseline measured in the same run (LIMITS.md gives this machine's floors;
//! absolute figures drift with load from other work, ratios far less).
//!
//! Every thread is pinned with `sys::pin_to_cpu`, except the worker of `roundtrip_placement`.
//! The scheduler is the minimal v0.3 one of spec §2.6, inline (as in the runtime's test
//! harness, without depending on it):
//! 1. A server runs its worker: S:IDLE, `W.server_tid = S`, W IDLE=>RUNNING,
//!    `S.next_tid = W`, `umcg_wait(0, 0)`.
//! 2. A worker yields: W:IDLE (plain: the emulator has no page-fault hooks, so LOCKED is not
//!    needed), S IDLE=>RUNNING (CAS), `next_tid = 0`, `umcg_wait(0, 0)`. A server may re-run
//!    a worker that has not fallen asleep yet; its `umcg_wait` then returns at once.
//! 3. A server with nothing to run goes idle: S:IDLE, push itself on the idle-server list,
//!    `fence(SeqCst)`, re-check the idle-worker list (and the stop flag), `umcg_wait(0, 0)`.
//!    Once RUNNING again it reclaims its node and drains the idle-worker list
//!    (`IdleWorkerHead::take_all`, which resets each node).
//!
//! Groups (each benchmark's baseline is in its own group, so criterion's report puts them
//! side by side):
//! - `roundtrip_one_cpu`: server → worker → server through `umcg_wait`, both on CPU 0
//!   (`umcg_wait`); baseline `futex_pingpong`: two threads on CPU 0.
//! - `roundtrip_placement`: the same with the server on CPU 0 and the worker unpinned,
//!   `Placement::SameCpu` vs `Placement::Free` (stderr: where the worker ran); baseline
//!   `futex_pingpong` with one thread per CPU.
//! - `block_to_server`: the worker's timestamp right before `kernel::block_begin` → its server
//!   running after `umcg_wait` returns, one CPU; baseline `futex_wake`: the waker's timestamp
//!   → the wakee running, one CPU. Every latency goes into an hdrhistogram (stderr:
//!   p50/p99/p99.9/max); criterion gets their sum.
//! - `block_hook_nonblocking`: `kernel::blocking(gettid)` from a running worker (the block
//!   hook wakes the server eagerly, so the worker must be run again: a full round trip) vs
//!   the bare `gettid`. Stderr: how often the server went through the idle-server list.
//! - `unblock_to_running`: a worker's sleep (150 µs, meanwhile both servers, S0 on CPU 0 and
//!   S1 on CPU 1, go idle) ends → `block_end` returns, measured by the worker,
//!   `IdleWakeup::List` vs `IdleWakeup::EventFd`, worker on CPU 0 under `SameCpu`; baseline
//!   `futex_roundtrip`: the same sleep, then a futex round trip, on CPU 0. The idle-server
//!   list is a stack and S0 is pushed last (the rig starts S1 first), so S0 is popped, runs
//!   the worker, goes idle on top again: every unblock is a same-CPU wakeup of S0. The
//!   worker's blocking call extends the sleep until both servers are listed (counted on
//!   stderr): a server woken late would otherwise leave the other one on top for good.
//! - `unblock_to_running_cross_cpu`: the same with the worker pinned to CPU 1 under
//!   `Placement::Free`, so both wakeups (worker → S0, S0 → worker) cross CPUs; baseline: the
//!   sleeper on CPU 1, its partner on CPU 0. Percentiles on stderr for both groups.
//! - `emulator_call_overhead`: single-thread costs, from a registered server on CPU 0, of the
//!   emulator's bookkeeping around a wake: `kernel::wake(self)` and `umcg_wait(WAKE_ONLY)`
//!   aimed at itself vs the bare `futex_wake` (nobody waiting), and the empty eventfd read
//!   an `EventFd`-mode server makes before each `epoll_wait`.
//!
//! No wait is unbounded for the process: the criterion thread waits for every batch with a
//! timeout and panics (ending the process) when a bench thread is stuck or gone; teardown
//! unregisters every task and joins every thread, also bounded.
//!
//! Run: `cargo bench --bench handoff`. Results: BENCHMARKS.md.

use std::hint::black_box;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use umcg::abi::idle_servers::{IdleServerList, Pop, Remove};
use umcg::abi::idle_workers::IdleWorkerHead;
use umcg::abi::{
    StateWord, TaskState, UMCG_CTL_REGISTER, UMCG_CTL_UNREGISTER, UMCG_CTL_WORKER, UMCG_TASK_IDLE,
    UMCG_TASK_RUNNING, UMCG_TF_LOCKED, UMCG_WAIT_WAKE_ONLY, UmcgTask,
};
use umcg::runtime::kernel::{self, Ctl, IdleWakeup, Placement, UmcgError};
use umcg::runtime::sys::{self, Errno};

/// How long the criterion thread waits for one batch or for teardown before it gives up
/// (a lost wakeup or a dead bench thread then fails the run instead of hanging it).
const BOUND: Duration = Duration::from_secs(60);

/// The blocking call of `unblock_to_running`: long enough for both servers to go idle.
const UNBLOCK_SLEEP: Duration = Duration::from_micros(150);

type Cmd = Option<u64>;
type Measure = criterion::measurement::WallTime;

// ------------------------------------------------------------------------------------------
// Machine helpers

/// The first two CPUs the process may run on (the same CPU twice on a one-CPU machine; the
/// cross-CPU figures are then meaningless, and a note says so). Called first by every group.
///
/// Also switches the process to the kernel's global futex hash, as the emulator does at its
/// first registration (`sys::futex::use_global_futex_hash`): the raw baselines must run on
/// the same futex hash as the emulator, whichever benchmark criterion runs first.
fn cpus() -> (usize, usize) {
    static CPUS: OnceLock<(usize, usize)> = OnceLock::new();
    *CPUS.get_or_init(|| {
        sys::futex::use_global_futex_hash();
        let all = sys::allowed_cpus().expect("sched_getaffinity");
        let a = all[0];
        let b = all.get(1).copied().unwrap_or_else(|| {
            eprintln!("handoff: only one CPU allowed; cross-CPU figures use CPU {a} twice");
            a
        });
        (a, b)
    })
}

fn pin(cpu: usize) {
    sys::pin_to_cpu(cpu).unwrap_or_else(|e| panic!("pin to CPU {cpu}: {e}"));
}

/// `CLOCK_MONOTONIC` in ns (the clock `Instant` reads), for stamps that cross threads.
fn now_ns() -> u64 {
    sys::futex::monotonic_now_ns()
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

fn print_percentiles(name: &str, h: &Histogram<u64>) {
    if h.is_empty() {
        return;
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    eprintln!(
        "{name}: n={} p50={:.2} µs p99={:.2} µs p99.9={:.2} µs max={:.2} µs (mean {:.2} µs)",
        h.len(),
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
        h.mean() / 1000.0,
    );
}

/// Sleep until `word == want` (the waker stores, then wakes).
fn wait_eq(word: &AtomicU32, want: u32) {
    loop {
        // Acquire: pairs with the waker's Release store.
        let v = word.load(Ordering::Acquire);
        if v == want {
            return;
        }
        sys::futex_wait(word, v, None);
    }
}

/// Sleep while `word == old`; returns the new value.
fn wait_ne(word: &AtomicU32, old: u32) -> u32 {
    loop {
        // Acquire: pairs with the waker's Release store.
        let v = word.load(Ordering::Acquire);
        if v != old {
            return v;
        }
        sys::futex_wait(word, old, None);
    }
}

// ------------------------------------------------------------------------------------------
// The criterion side: a batch channel to the measuring thread, and bounded teardown

/// Bench threads driven over a channel: `Some(iters)` runs a batch and answers with the time
/// it measured, `None` (or a dropped sender) ends the run.
struct Rig {
    cmd: Sender<Cmd>,
    res: Receiver<Duration>,
    threads: Vec<JoinHandle<()>>,
    /// Called repeatedly during teardown until every thread has ended (releases sleepers).
    release: Box<dyn Fn()>,
}

impl Rig {
    fn batch(&self, iters: u64) -> Duration {
        self.cmd.send(Some(iters)).expect("bench thread gone");
        match self.res.recv_timeout(BOUND) {
            Ok(d) => d,
            Err(e) => panic!("no answer from the bench threads within {BOUND:?} ({e:?})"),
        }
    }

    fn finish(self) {
        let _ = self.cmd.send(None);
        drop(self.cmd);
        let deadline = Instant::now() + BOUND;
        while !self.threads.iter().all(JoinHandle::is_finished) {
            (self.release)();
            assert!(Instant::now() < deadline, "bench threads did not end");
            thread::sleep(Duration::from_millis(1));
        }
        for t in self.threads {
            t.join().expect("bench thread panicked");
        }
    }
}

/// Run one benchmark on a rig built on first use (not at all when criterion filters the
/// benchmark out) and tear it down afterwards. Returns whether it ran.
fn bench_rig(
    g: &mut BenchmarkGroup<'_, Measure>,
    id: BenchmarkId,
    make: impl FnOnce() -> Rig,
) -> bool {
    let mut make = Some(make);
    let mut rig: Option<Rig> = None;
    g.bench_function(id, |b| {
        if rig.is_none() {
            rig = Some((make.take().expect("built once"))());
        }
        let r = rig.as_ref().expect("built");
        b.iter_custom(|iters| r.batch(iters));
    });
    match rig {
        Some(r) => {
            r.finish();
            true
        }
        None => false,
    }
}

// ------------------------------------------------------------------------------------------
// Raw futex baselines

#[derive(Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// A wakes B and sleeps until B answers; A times the batch.
    PingPong,
    /// A stamps, wakes B, sleeps; B stamps when it runs (one way, recorded by B).
    WakeLatency,
    /// A sleeps `UNBLOCK_SLEEP`, then a round trip timed by A (recorded by A).
    RoundTripAfterSleep,
}

#[derive(Default)]
struct RawShared {
    ping: AtomicU32,
    pong: AtomicU32,
    stamp: AtomicU64,
    sum_ns: AtomicU64,
    stop: AtomicBool,
}

/// Two threads, A on `cpu_a` (the driver) and B on `cpu_b`, each sleeping on its own word
/// with the same `sys::futex_wait`/`futex_wake` the emulator uses.
fn raw_rig(kind: Raw, cpu_a: usize, cpu_b: usize, hist: Arc<Mutex<Histogram<u64>>>) -> Rig {
    let sh = Arc::new(RawShared::default());
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
    let (res_tx, res_rx) = mpsc::channel();
    let b = {
        let (sh, hist) = (sh.clone(), hist.clone());
        thread::spawn(move || {
            pin(cpu_b);
            let mut last = 0;
            loop {
                let v = wait_ne(&sh.ping, last);
                let t1 = now_ns();
                if sh.stop.load(Ordering::Acquire) {
                    return;
                }
                last = v;
                if kind == Raw::WakeLatency {
                    let d = t1.saturating_sub(sh.stamp.load(Ordering::Relaxed));
                    hist.lock().unwrap().saturating_record(d);
                    sh.sum_ns.fetch_add(d, Ordering::Relaxed);
                }
                // Release: publishes the sum to A.
                sh.pong.store(v, Ordering::Release);
                sys::futex_wake(&sh.pong, 1);
            }
        })
    };
    let a = {
        let sh = sh.clone();
        thread::spawn(move || {
            pin(cpu_a);
            let mut seq = 0u32;
            while let Ok(Some(iters)) = cmd_rx.recv() {
                let t0 = Instant::now();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    seq = seq.wrapping_add(1);
                    match kind {
                        Raw::PingPong => {
                            sh.ping.store(seq, Ordering::Release);
                            sys::futex_wake(&sh.ping, 1);
                        }
                        Raw::WakeLatency => {
                            sh.stamp.store(now_ns(), Ordering::Relaxed);
                            // Release: publishes the stamp to B.
                            sh.ping.store(seq, Ordering::Release);
                            sys::futex_wake(&sh.ping, 1);
                        }
                        Raw::RoundTripAfterSleep => {
                            thread::sleep(UNBLOCK_SLEEP);
                            let t = Instant::now();
                            sh.ping.store(seq, Ordering::Release);
                            sys::futex_wake(&sh.ping, 1);
                            wait_eq(&sh.pong, seq);
                            let d = t.elapsed();
                            hist.lock().unwrap().saturating_record(d.as_nanos() as u64);
                            total += d;
                            continue;
                        }
                    }
                    wait_eq(&sh.pong, seq);
                }
                let d = match kind {
                    Raw::PingPong => t0.elapsed(),
                    Raw::WakeLatency => Duration::from_nanos(sh.sum_ns.swap(0, Ordering::Relaxed)),
                    Raw::RoundTripAfterSleep => total,
                };
                if res_tx.send(d).is_err() {
                    break;
                }
            }
            sh.stop.store(true, Ordering::Release);
            sh.ping.store(seq.wrapping_add(1), Ordering::Release);
            sys::futex_wake(&sh.ping, 1);
        })
    };
    Rig {
        cmd: cmd_tx,
        res: res_rx,
        threads: vec![a, b],
        release: Box::new(|| {}),
    }
}

// ------------------------------------------------------------------------------------------
// The inline v0.3 scheduler

/// What the worker does with each batch (and what its server does when it comes back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Server-driven: the server runs the worker `iters` times; the worker yields each time.
    Yield,
    /// Worker-driven: stamp, `block_begin`, wait for the server's release, `block_end`.
    BlockToServer,
    /// Worker-driven: `kernel::blocking(gettid)`.
    BlockingNoop,
    /// Worker-driven: bare `gettid`.
    BareNoop,
    /// Worker-driven: `block_begin`, sleep, stamp, `block_end`, stamp.
    UnblockToRunning,
}

/// Why the worker last left its server.
const BLOCK: u32 = 1;
const YIELD: u32 = 2;
const EXIT: u32 = 3;

/// The idle-list heads: boxed first, so that tasks can be created pointing at them.
struct Lists {
    idle_workers: IdleWorkerHead,
    idle_servers: IdleServerList,
}

struct Slot {
    /// Boxed: the kernel and the lists hold its address while it is registered.
    task: Box<UmcgTask>,
    tid: AtomicU32,
}

/// Everything the bench threads of one scheduling group share; it outlives all of them (the
/// criterion thread holds it until they are joined), so tasks never dangle.
struct Group {
    lists: Box<Lists>,
    servers: Vec<Slot>,
    worker: Slot,
    mode: Mode,
    /// Set at teardown: idle servers return instead of sleeping again.
    stop: AtomicBool,
    /// Server-driven mode: the worker leaves the next time it runs.
    worker_exit: AtomicBool,
    reason: AtomicU32,
    /// `BlockToServer`: the worker's stamp before `block_begin`, the server's release
    /// counter, and the sum of the latencies of a batch.
    t_block: AtomicU64,
    release: AtomicU32,
    sum_ns: AtomicU64,
    hist: Arc<Mutex<Histogram<u64>>>,
    /// `Yield` with an unpinned worker: runs on the server's CPU / elsewhere.
    record_cpu: bool,
    on_server_cpu: AtomicU64,
    off_server_cpu: AtomicU64,
    /// `UnblockToRunning`: which server ran the worker after each unblock.
    ran_by: [AtomicU64; 2],
    /// Worker-driven modes: worker iterations, server idle periods (pushes of itself), and
    /// those of them that slept (the rest left the list at once: work had arrived).
    calls: AtomicU64,
    idles: AtomicU64,
    idle_sleeps: AtomicU64,
    /// `UnblockToRunning`: extra 20 µs waits for a server not yet idle after the sleep.
    late_idle: AtomicU64,
}

impl Group {
    fn new(mode: Mode, servers: usize, hist: Arc<Mutex<Histogram<u64>>>) -> Arc<Group> {
        assert!((1..=2).contains(&servers));
        let lists = Box::new(Lists {
            idle_workers: IdleWorkerHead::new(),
            idle_servers: IdleServerList::new(),
        });
        let worker = Box::new(UmcgTask::new_worker(
            lists.idle_servers.head_addr(),
            lists.idle_workers.addr(),
        ));
        let slot = |task| Slot {
            task,
            tid: AtomicU32::new(0),
        };
        let server = || {
            let t = Box::new(UmcgTask::new_server());
            // Reset node (off the list): `server_listed` reads it before the server runs.
            lists.idle_servers.prepare(&t);
            slot(t)
        };
        Arc::new(Group {
            servers: (0..servers).map(|_| server()).collect(),
            worker: slot(worker),
            lists,
            mode,
            stop: AtomicBool::new(false),
            worker_exit: AtomicBool::new(false),
            reason: AtomicU32::new(0),
            t_block: AtomicU64::new(0),
            release: AtomicU32::new(0),
            sum_ns: AtomicU64::new(0),
            hist,
            record_cpu: false,
            on_server_cpu: AtomicU64::new(0),
            off_server_cpu: AtomicU64::new(0),
            ran_by: [AtomicU64::new(0), AtomicU64::new(0)],
            calls: AtomicU64::new(0),
            idles: AtomicU64::new(0),
            idle_sleeps: AtomicU64::new(0),
            late_idle: AtomicU64::new(0),
        })
    }

    fn server_index(&self, tid: u32) -> usize {
        self.servers
            .iter()
            .position(|s| s.tid.load(Ordering::Acquire) == tid)
            .unwrap_or_else(|| panic!("no server with tid {tid}"))
    }

    /// Teardown: make idle servers return. Store `stop`, `fence(SeqCst)`, then pop every idle
    /// server as the kernel does (mark, exactly IDLE=>RUNNING, wake). A server that pushed
    /// itself before our fence is found by the pop; one that pushes later sees `stop` in its
    /// re-check (the same store-then-check pairing as the two lists).
    fn release_idle_servers(&self) {
        self.stop.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        while let Pop::Got(node) = self.lists.idle_servers.pop(usize::MAX) {
            let task = node.task();
            let Some(s) = self.servers.iter().find(|s| ptr::eq(&*s.task, task)) else {
                panic!("foreign node on the idle-server list");
            };
            if s.task
                .cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
                .is_ok()
            {
                // ESRCH: it unregistered already; nothing to wake.
                let _ = kernel::wake(s.tid.load(Ordering::Acquire));
            }
        }
    }
}

fn task_ptr(t: &UmcgTask) -> *mut UmcgTask {
    ptr::from_ref(t).cast_mut()
}

fn unregister() {
    // SAFETY: unregistration takes no pointer.
    let r = unsafe { kernel::umcg_ctl(UMCG_CTL_UNREGISTER, ptr::null_mut()) };
    assert_eq!(r, Ok(Ctl::Done), "unregister");
}

/// `umcg_wait(0, 0)` until it returns 0 (`EINTR` retries with `next_tid` cleared).
fn wait_running(task: &UmcgTask) {
    loop {
        match kernel::umcg_wait(0, 0) {
            Ok(()) => return,
            Err(UmcgError::Errno(Errno::EINTR)) => task.next_tid.store(0, Ordering::Release),
            Err(e) => panic!("umcg_wait: {e}"),
        }
    }
}

/// The calling thread as server `idx` of `g`.
struct Server<'g> {
    g: &'g Group,
    me: &'g UmcgTask,
    tid: u32,
    /// Whether the worker is ours to run (taken off the idle-worker list, or yielded to us).
    runnable: bool,
}

impl<'g> Server<'g> {
    fn register(g: &'g Group, idx: usize) -> Server<'g> {
        let me = &*g.servers[idx].task;
        g.lists.idle_servers.prepare(me);
        // SAFETY: the task lives in `g`, which outlives this thread's registration (the
        // criterion thread joins us before dropping it).
        let r = unsafe { kernel::umcg_ctl(UMCG_CTL_REGISTER, task_ptr(me)) };
        assert_eq!(r, Ok(Ctl::Done), "register server");
        let tid = sys::gettid();
        g.servers[idx].tid.store(tid, Ordering::Release);
        Server {
            g,
            me,
            tid,
            runnable: false,
        }
    }

    /// Run the worker until it comes back (blocks, yields, leaves). Returns `now_ns()` taken
    /// right after `umcg_wait` returned if `stamp`, else 0.
    fn run(&mut self, stamp: bool) -> u64 {
        self.runnable = false;
        let w = &*self.g.worker.task;
        // S: RUNNING=>IDLE first (a worker blocking before that would find S RUNNING and
        // skip the wake), then W.server_tid and W: IDLE=>RUNNING, then S.next_tid = W.
        self.me.store_state(StateWord(UMCG_TASK_IDLE));
        w.server_tid.store(self.tid, Ordering::Release);
        w.transition(TaskState::Idle, TaskState::Running)
            .expect("worker to run must be IDLE");
        let wtid = self.g.worker.tid.load(Ordering::Acquire);
        self.me.next_tid.store(wtid, Ordering::Release);
        wait_running(self.me);
        let t = if stamp { now_ns() } else { 0 };
        self.me.next_tid.store(0, Ordering::Release);
        t
    }

    /// Take the idle-worker list; sets `runnable` if the worker was on it.
    fn drain(&mut self) {
        // SAFETY: only this group's worker is ever pushed on this list, and its task lives
        // in `g` for as long as any bench thread runs.
        for w in unsafe { self.g.lists.idle_workers.take_all(4) } {
            let w = w.expect("corrupt idle-worker list");
            assert!(ptr::eq(w.as_ptr(), &*self.g.worker.task), "foreign worker");
            self.runnable = true;
        }
    }

    /// The server-idles protocol (spec §2.6); returns RUNNING with its node reclaimed.
    fn idle(&mut self) {
        let lists = &self.g.lists;
        // S: RUNNING=>IDLE, push self, publish-then-check.
        self.me.store_state(StateWord(UMCG_TASK_IDLE));
        // SAFETY: the task lives in `g` (see `register`) and only this thread pushes it.
        unsafe { lists.idle_servers.push(self.me) }.expect("push self");
        // SeqCst: pairs with the wake hook's fence between pushing a worker and popping a
        // server, and with the fence in `release_idle_servers`: whichever side comes second
        // sees the other's push (or store).
        fence(Ordering::SeqCst);
        self.g.idles.fetch_add(1, Ordering::Relaxed);
        if !lists.idle_workers.is_empty() || self.g.stop.load(Ordering::Acquire) {
            match lists.idle_servers.remove(self.me) {
                // A popper claimed us first: it makes us RUNNING; wait for it.
                Remove::AlreadyDeleted => wait_running(self.me),
                // IDLE=>RUNNING by ourselves.
                _ => self.me.store_state(StateWord(UMCG_TASK_RUNNING)),
            }
        } else {
            self.g.idle_sleeps.fetch_add(1, Ordering::Relaxed);
            wait_running(self.me);
        }
        lists.idle_servers.reclaim(self.me).expect("reclaim");
    }

    /// Worker-driven modes: run the worker whenever it is ours, else go idle; `stop` ends it.
    fn serve(&mut self) {
        loop {
            self.drain();
            if self.runnable {
                let stamp = self.run(self.g.mode == Mode::BlockToServer);
                match self.g.reason.load(Ordering::Acquire) {
                    BLOCK if self.g.mode == Mode::BlockToServer => self.record_block(stamp),
                    // Blocked (it comes back through the idle-worker list) or gone.
                    BLOCK | EXIT => {}
                    YIELD => self.runnable = true,
                    r => panic!("worker came back with reason {r}"),
                }
                continue;
            }
            if self.g.stop.load(Ordering::Acquire) {
                return;
            }
            self.idle();
        }
    }

    fn record_block(&self, t1: u64) {
        let g = self.g;
        let d = t1.saturating_sub(g.t_block.load(Ordering::Relaxed));
        g.hist.lock().unwrap().saturating_record(d);
        g.sum_ns.fetch_add(d, Ordering::Relaxed);
        // Release: publishes the sum; the worker's blocking call ends.
        g.release.fetch_add(1, Ordering::Release);
        sys::futex_wake(&g.release, 1);
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        if !thread::panicking() {
            unregister();
        }
    }
}

/// The calling thread as the group's worker: registration returns once a server runs it.
fn register_worker(g: &Group) {
    g.worker.tid.store(sys::gettid(), Ordering::Release);
    // SAFETY: the task lives in `g`, which outlives this thread's registration.
    let r = unsafe {
        kernel::umcg_ctl(
            UMCG_CTL_REGISTER | UMCG_CTL_WORKER,
            task_ptr(&g.worker.task),
        )
    };
    assert_eq!(r, Ok(Ctl::Done), "register worker");
}

fn server_task_of(g: &Group, stid: u32) -> &UmcgTask {
    &g.servers[g.server_index(stid)].task
}

/// W yields to its server (plain IDLE; see the module doc).
fn worker_yield(g: &Group) {
    let t = &*g.worker.task;
    let stid = t.server_tid.load(Ordering::Acquire);
    g.reason.store(YIELD, Ordering::Relaxed);
    // W: RUNNING=>IDLE, then S: IDLE=>RUNNING.
    t.store_state(StateWord(UMCG_TASK_IDLE));
    let _ =
        server_task_of(g, stid).cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
    t.next_tid.store(0, Ordering::Release);
    wait_running(t);
}

/// W leaves: IDLE|LOCKED (nothing queues it), S IDLE=>RUNNING, wake S, unregister.
fn worker_exit(g: &Group) {
    let t = &*g.worker.task;
    let stid = t.server_tid.load(Ordering::Acquire);
    g.reason.store(EXIT, Ordering::Relaxed);
    t.store_state(StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
    let _ =
        server_task_of(g, stid).cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
    t.next_tid.store(stid, Ordering::Release);
    kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0).expect("wake server");
    unregister();
}

/// One batch of a worker-driven mode, in the worker; returns what criterion gets.
fn worker_batch(g: &Group, iters: u64, seq: &mut u32) -> Duration {
    let t = &*g.worker.task;
    match g.mode {
        Mode::BlockToServer => {
            for _ in 0..iters {
                *seq = seq.wrapping_add(1);
                g.reason.store(BLOCK, Ordering::Relaxed);
                // Published by block_begin's CAS on the server's state, which the server's
                // umcg_wait reads with Acquire.
                g.t_block.store(now_ns(), Ordering::Relaxed);
                kernel::block_begin().expect("block_begin");
                // The blocking call: until the server has recorded the latency.
                wait_eq(&g.release, *seq);
                kernel::block_end().expect("block_end");
            }
            Duration::from_nanos(g.sum_ns.swap(0, Ordering::Relaxed))
        }
        Mode::BlockingNoop => {
            let t0 = Instant::now();
            for _ in 0..iters {
                g.reason.store(BLOCK, Ordering::Relaxed);
                black_box(kernel::blocking(sys::gettid).expect("blocking"));
            }
            t0.elapsed()
        }
        Mode::BareNoop => {
            let t0 = Instant::now();
            for _ in 0..iters {
                black_box(sys::gettid());
            }
            t0.elapsed()
        }
        Mode::UnblockToRunning => {
            let mut total = 0;
            for _ in 0..iters {
                g.reason.store(BLOCK, Ordering::Relaxed);
                kernel::block_begin().expect("block_begin");
                // The blocking call: a sleep, extended until both servers are on the
                // idle-server list (the precondition; a server whose wakeup was delayed past
                // the sleep would otherwise leave the other on top, and the worker would
                // change servers and CPUs from then on).
                thread::sleep(UNBLOCK_SLEEP);
                let deadline = Instant::now() + BOUND;
                while !(0..g.servers.len()).all(|i| server_listed(g, i)) {
                    assert!(Instant::now() < deadline, "servers never went idle");
                    g.late_idle.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_micros(20));
                }
                let t0 = now_ns();
                kernel::block_end().expect("block_end");
                let d = now_ns().saturating_sub(t0);
                total += d;
                g.hist.lock().unwrap().saturating_record(d);
                let by = g.server_index(t.server_tid.load(Ordering::Acquire));
                g.ran_by[by].fetch_add(1, Ordering::Relaxed);
            }
            Duration::from_nanos(total)
        }
        Mode::Yield => unreachable!("server-driven"),
    }
}

/// Whether server `idx` is on the idle-server list (its node pushed and not deleted).
fn server_listed(g: &Group, idx: usize) -> bool {
    let link = g.servers[idx].task.idle_servers_ptr.load(Ordering::Acquire);
    link != g.lists.idle_servers.head_addr() && link & 1 == 0
}

/// A worker-driven group: server `i` on `server_cpus[i]`, the worker on `worker_cpu` driven
/// by the criterion thread. The servers start last to first, each once the one before is
/// on the idle-server list, so server 0 is on top: the worker's registration pops it, and
/// since a server that goes idle is pushed on top again, server 0 runs the worker every
/// time (the other servers stay idle).
fn worker_driven_rig(g: Arc<Group>, server_cpus: &[usize], worker_cpu: usize) -> Rig {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (i, &cpu) in server_cpus.iter().enumerate().rev() {
        let gs = g.clone();
        threads.push(thread::spawn(move || {
            pin(cpu);
            Server::register(&gs, i).serve();
        }));
        let deadline = Instant::now() + BOUND;
        while !server_listed(&g, i) {
            assert!(Instant::now() < deadline, "server {i} never went idle");
            thread::sleep(Duration::from_micros(100));
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
    let (res_tx, res_rx) = mpsc::channel();
    let gw = g.clone();
    threads.push(thread::spawn(move || {
        let g = &*gw;
        pin(worker_cpu);
        register_worker(g);
        let mut seq = g.release.load(Ordering::Acquire);
        // Waiting here (RUNNING, no hooks) keeps the server asleep in `run`.
        while let Ok(Some(iters)) = cmd_rx.recv() {
            let d = worker_batch(g, iters, &mut seq);
            g.calls.fetch_add(iters, Ordering::Relaxed);
            if res_tx.send(d).is_err() {
                break;
            }
        }
        worker_exit(g);
    }));
    Rig {
        cmd: cmd_tx,
        res: res_rx,
        threads,
        release: Box::new(move || g.release_idle_servers()),
    }
}

/// The server-driven group of the round-trip benches: one server on `server_cpu` (the
/// driver), the worker on `worker_cpu` (`None`: unpinned).
fn roundtrip_rig(g: Arc<Group>, server_cpu: usize, worker_cpu: Option<usize>) -> Rig {
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
    let (res_tx, res_rx) = mpsc::channel();
    let gs = g.clone();
    let server = thread::spawn(move || {
        let g = &*gs;
        pin(server_cpu);
        let mut s = Server::register(g, 0);
        // Wait for the worker's registration.
        loop {
            s.drain();
            if s.runnable {
                break;
            }
            s.idle();
        }
        s.run(false);
        while let Ok(Some(iters)) = cmd_rx.recv() {
            let t0 = Instant::now();
            for _ in 0..iters {
                s.run(false);
            }
            if res_tx.send(t0.elapsed()).is_err() {
                break;
            }
        }
        g.worker_exit.store(true, Ordering::Relaxed);
        s.run(false);
        assert_eq!(g.reason.load(Ordering::Acquire), EXIT);
    });
    let gw = g.clone();
    let worker = thread::spawn(move || {
        let g = &*gw;
        if let Some(cpu) = worker_cpu {
            pin(cpu);
        }
        register_worker(g);
        loop {
            // Published by the server's W: IDLE=>RUNNING (Release), read by our umcg_wait.
            if g.worker_exit.load(Ordering::Relaxed) {
                break;
            }
            if g.record_cpu {
                let c = if sys::current_cpu() == server_cpu {
                    &g.on_server_cpu
                } else {
                    &g.off_server_cpu
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
            worker_yield(g);
        }
        worker_exit(g);
    });
    Rig {
        cmd: cmd_tx,
        res: res_rx,
        threads: vec![server, worker],
        release: Box::new(move || g.release_idle_servers()),
    }
}

/// What one iteration of `emulator_call_overhead` does, from a registered server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `futex_wake` of a word nobody waits on (the baseline).
    FutexWake,
    /// `kernel::wake(self)`: registry lookup, then the same `futex_wake` (of our own state).
    KernelWake,
    /// `umcg_wait(WAKE_ONLY)` with `next_tid = self`: what a context switch adds around the
    /// wake (emulator section, `registry::current`, lookup of the target), plus the target's
    /// wake-event count.
    WakeOnlySelf,
    /// A non-blocking eventfd read that finds nothing: what `IdleWakeup::EventFd` servers pay
    /// before every `epoll_wait`.
    EventFdDrainEmpty,
}

/// One thread on `cpu`, registered as a server, timing `iters` calls per batch.
fn call_rig(kind: Call, cpu: usize) -> Rig {
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
    let (res_tx, res_rx) = mpsc::channel();
    let t = thread::spawn(move || {
        pin(cpu);
        let g = Group::new(Mode::Yield, 1, shared_hist());
        let s = Server::register(&g, 0);
        s.me.next_tid.store(s.tid, Ordering::Release);
        let word = AtomicU32::new(0);
        let efd = sys::EventFd::new_nonblocking().expect("eventfd");
        while let Ok(Some(iters)) = cmd_rx.recv() {
            let t0 = Instant::now();
            for _ in 0..iters {
                match kind {
                    Call::FutexWake => {
                        black_box(sys::futex_wake(&word, 1));
                    }
                    Call::KernelWake => kernel::wake(s.tid).expect("wake"),
                    Call::WakeOnlySelf => {
                        kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0).expect("wake only")
                    }
                    Call::EventFdDrainEmpty => {
                        black_box(efd.drain().expect("drain"));
                    }
                }
            }
            if res_tx.send(t0.elapsed()).is_err() {
                break;
            }
        }
        s.me.next_tid.store(0, Ordering::Release);
    });
    Rig {
        cmd: cmd_tx,
        res: res_rx,
        threads: vec![t],
        release: Box::new(|| {}),
    }
}

fn shared_hist() -> Arc<Mutex<Histogram<u64>>> {
    Arc::new(Mutex::new(new_histogram()))
}

/// Build a worker-driven rig and keep a handle on its group for the report.
fn keep(slot: &mut Option<Arc<Group>>, g: Arc<Group>) -> Arc<Group> {
    *slot = Some(g.clone());
    g
}

/// How often the servers went through the idle-server list, per worker iteration.
fn print_idles(id: &str, g: &Option<Arc<Group>>) {
    if let Some(g) = g {
        let calls = g.calls.load(Ordering::Relaxed).max(1) as f64;
        eprintln!(
            "{id}: per worker iteration, the server pushed itself idle {:.3} times and slept \
             there {:.3} times",
            g.idles.load(Ordering::Relaxed) as f64 / calls,
            g.idle_sleeps.load(Ordering::Relaxed) as f64 / calls,
        );
    }
}

/// Mode switches need every task torn down (the rigs unregister and join all of theirs).
fn set_modes(wakeup: IdleWakeup, placement: Placement) {
    assert_eq!(
        kernel::registered_tasks(),
        0,
        "tasks left from an earlier rig"
    );
    kernel::set_idle_wakeup(wakeup).expect("set_idle_wakeup");
    kernel::set_placement(placement);
}

// ------------------------------------------------------------------------------------------
// Groups

fn bench_roundtrip_one_cpu(c: &mut Criterion) {
    let (c0, _) = cpus();
    let mut g = c.benchmark_group("roundtrip_one_cpu");
    bench_rig(&mut g, BenchmarkId::new("futex_pingpong", 1), || {
        raw_rig(Raw::PingPong, c0, c0, shared_hist())
    });
    bench_rig(&mut g, BenchmarkId::new("umcg_wait", 1), || {
        set_modes(IdleWakeup::List, Placement::SameCpu);
        roundtrip_rig(Group::new(Mode::Yield, 1, shared_hist()), c0, Some(c0))
    });
    g.finish();
}

fn bench_roundtrip_placement(c: &mut Criterion) {
    let (c0, c1) = cpus();
    let mut g = c.benchmark_group("roundtrip_placement");
    bench_rig(
        &mut g,
        BenchmarkId::new("futex_pingpong_cross_cpu", 2),
        || raw_rig(Raw::PingPong, c0, c1, shared_hist()),
    );
    for (name, p) in [("same_cpu", Placement::SameCpu), ("free", Placement::Free)] {
        let mut group = None;
        bench_rig(&mut g, BenchmarkId::new(name, "worker_unpinned"), || {
            set_modes(IdleWakeup::List, p);
            let mut gr = Group::new(Mode::Yield, 1, shared_hist());
            Arc::get_mut(&mut gr).expect("fresh").record_cpu = true;
            group = Some(gr.clone());
            roundtrip_rig(gr, c0, None)
        });
        if let Some(gr) = group {
            let on = gr.on_server_cpu.load(Ordering::Relaxed);
            let off = gr.off_server_cpu.load(Ordering::Relaxed);
            eprintln!(
                "roundtrip_placement/{name}: the worker ran on the server's CPU {on} times, \
                 elsewhere {off} times ({:.1} % same CPU)",
                100.0 * on as f64 / (on + off).max(1) as f64
            );
        }
    }
    kernel::set_placement(Placement::SameCpu);
    g.finish();
}

fn bench_block_to_server(c: &mut Criterion) {
    let (c0, _) = cpus();
    let mut g = c.benchmark_group("block_to_server");
    let raw = shared_hist();
    if bench_rig(&mut g, BenchmarkId::new("futex_wake", 1), || {
        raw_rig(Raw::WakeLatency, c0, c0, raw.clone())
    }) {
        print_percentiles("block_to_server/futex_wake/1", &raw.lock().unwrap());
    }
    let hist = shared_hist();
    let mut group = None;
    if bench_rig(&mut g, BenchmarkId::new("block_hook", 1), || {
        set_modes(IdleWakeup::List, Placement::SameCpu);
        let gr = Group::new(Mode::BlockToServer, 1, hist.clone());
        worker_driven_rig(keep(&mut group, gr), &[c0], c0)
    }) {
        print_percentiles("block_to_server/block_hook/1", &hist.lock().unwrap());
        print_idles("block_to_server/block_hook/1", &group);
    }
    g.finish();
}

fn bench_block_hook_nonblocking(c: &mut Criterion) {
    let (c0, _) = cpus();
    let mut g = c.benchmark_group("block_hook_nonblocking");
    bench_rig(&mut g, BenchmarkId::new("bare_gettid", 1), || {
        set_modes(IdleWakeup::List, Placement::SameCpu);
        worker_driven_rig(Group::new(Mode::BareNoop, 1, shared_hist()), &[c0], c0)
    });
    let mut group = None;
    if bench_rig(&mut g, BenchmarkId::new("blocking_gettid", 1), || {
        set_modes(IdleWakeup::List, Placement::SameCpu);
        let gr = Group::new(Mode::BlockingNoop, 1, shared_hist());
        worker_driven_rig(keep(&mut group, gr), &[c0], c0)
    }) {
        print_idles("block_hook_nonblocking/blocking_gettid/1", &group);
    }
    g.finish();
}

/// `unblock_to_running` (`cross == false`: the worker, its sleep and server 0 on CPU 0, under
/// `SameCpu`) and `unblock_to_running_cross_cpu` (the worker pinned to CPU 1 under `Free`, so
/// that waking server 0 and being run by it are both cross-CPU wakeups).
fn unblock_group(c: &mut Criterion, cross: bool) {
    let (c0, c1) = cpus();
    let (name, wcpu, placement, param) = if cross {
        (
            "unblock_to_running_cross_cpu",
            c1,
            Placement::Free,
            "cross_cpu",
        )
    } else {
        ("unblock_to_running", c0, Placement::SameCpu, "same_cpu")
    };
    let mut g = c.benchmark_group(name);
    let raw = shared_hist();
    if bench_rig(&mut g, BenchmarkId::new("futex_roundtrip", param), || {
        raw_rig(Raw::RoundTripAfterSleep, wcpu, c0, raw.clone())
    }) {
        print_percentiles(
            &format!("{name}/futex_roundtrip/{param}"),
            &raw.lock().unwrap(),
        );
    }
    for (mode_name, mode) in [("list", IdleWakeup::List), ("eventfd", IdleWakeup::EventFd)] {
        let hist = shared_hist();
        let mut group = None;
        if bench_rig(&mut g, BenchmarkId::new(mode_name, param), || {
            set_modes(mode, placement);
            let gr = Group::new(Mode::UnblockToRunning, 2, hist.clone());
            worker_driven_rig(keep(&mut group, gr), &[c0, c1], wcpu)
        }) {
            let id = format!("{name}/{mode_name}/{param}");
            print_percentiles(&id, &hist.lock().unwrap());
            print_idles(&id, &group);
            if let Some(gr) = &group {
                eprintln!(
                    "{id}: run again by server 0 (CPU {c0}) {} times, server 1 (CPU {c1}) {} \
                     times; {} extra waits for a server not yet idle after the sleep",
                    gr.ran_by[0].load(Ordering::Relaxed),
                    gr.ran_by[1].load(Ordering::Relaxed),
                    gr.late_idle.load(Ordering::Relaxed),
                );
            }
        }
    }
    set_modes(IdleWakeup::List, Placement::SameCpu);
    g.finish();
}

fn bench_unblock_to_running(c: &mut Criterion) {
    unblock_group(c, false);
}

fn bench_unblock_to_running_cross_cpu(c: &mut Criterion) {
    unblock_group(c, true);
}

fn bench_emulator_call_overhead(c: &mut Criterion) {
    let (c0, _) = cpus();
    let mut g = c.benchmark_group("emulator_call_overhead");
    set_modes(IdleWakeup::List, Placement::SameCpu);
    for (name, kind) in [
        ("futex_wake", Call::FutexWake),
        ("kernel_wake", Call::KernelWake),
        ("umcg_wait_wake_only", Call::WakeOnlySelf),
        ("eventfd_drain_empty", Call::EventFdDrainEmpty),
    ] {
        bench_rig(&mut g, BenchmarkId::new(name, 0), || call_rig(kind, c0));
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_roundtrip_one_cpu,
    bench_roundtrip_placement,
    bench_block_to_server,
    bench_block_hook_nonblocking,
    bench_unblock_to_running,
    bench_unblock_to_running_cross_cpu,
    bench_emulator_call_overhead
);
criterion_main!(benches);
