//! Faults (issue 6, reliability): signal storms during every kind of wait, threads that
//! exit while registered, fork, fds closed under epoll, and thread creation that fails.
//!
//! Every test runs alone (`serial()`): the storms signal every thread of the process, the
//! idle-wakeup mode is process-wide, and the fd and task counts are too. No timing asserts:
//! every wait is bounded by a watchdog that prints diagnostics and aborts the binary (a lost
//! wakeup leaves threads asleep in `umcg_wait` that no panic could unstick).
#![cfg(not(umcg_loom))]

mod common;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::{Group, Server, Worker, announce, announced_server, tid_of};
use umcg_abi::idle_servers::{Pop, Remove};
use umcg_abi::*;
use umcg_runtime::kernel::{self, IdleWakeup, UmcgError};
use umcg_runtime::sys::signal::{self as sig, Signal};
use umcg_runtime::sys::{self, Errno};

// ------------------------------------------------------------------------------------------
// Infrastructure

/// One test at a time (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::init();
    g
}

/// Diagnostics a watchdog prints before it aborts.
type Diag = Arc<dyn Fn() -> String + Send + Sync>;

/// Aborts the process with diagnostics unless dropped within `limit`: "this phase ends".
///
/// The diagnostics go straight to fd 2 with `write(2)` (not `eprintln!`, whose capture lock a
/// stuck thread may hold), and a second thread aborts without printing 15 s later in case
/// building them blocks too (on a lock held by a stuck thread, e.g. malloc's).
struct Watchdog {
    tx: Vec<mpsc::Sender<()>>,
    h: Vec<thread::JoinHandle<()>>,
}

fn watchdog(what: &'static str, limit: Duration, diag: Diag) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let (tx2, rx2) = mpsc::channel::<()>();
    let h = thread::Builder::new()
        .name("faults-watchdog".into())
        .spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                raw_eprint(&format!(
                    "faults: {what} did not finish within {limit:?} (lost wakeup or hang)\n"
                ));
                raw_eprint(&format!("{}\n{}", diag(), dump_threads()));
                std::process::abort();
            }
        })
        .unwrap();
    let h2 = thread::Builder::new()
        .name("faults-watchdog".into())
        .spawn(move || {
            if let Err(RecvTimeoutError::Timeout) =
                rx2.recv_timeout(limit + Duration::from_secs(15))
            {
                // SAFETY: abort takes no arguments and does not return.
                unsafe { libc::abort() };
            }
        })
        .unwrap();
    Watchdog {
        tx: vec![tx, tx2],
        h: vec![h, h2],
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.tx.clear();
        for h in self.h.drain(..) {
            let _ = h.join();
        }
    }
}

/// `write(2)` to fd 2, bypassing the test harness's output capture and its lock.
fn raw_eprint(s: &str) {
    let mut b = s.as_bytes();
    while !b.is_empty() {
        // SAFETY: `b` is a valid buffer of `b.len()` bytes for the duration of the call.
        let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            return;
        }
        b = &b[n as usize..];
    }
}

/// Every thread of the process: name, scheduler state and kernel wait channel.
fn dump_threads() -> String {
    let mut out = String::from("threads (tid name state wchan):\n");
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let tid = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
        let _ = writeln!(out, "  {tid} {} {state} {wchan}", comm.trim());
    }
    out
}

/// Panics of the runtime's own threads (servers, and workers outside a job) and of the
/// runtime's internal checks: a signal or an exit must never cause one.
static RUNTIME_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Record panics whose thread is a runtime server or whose message comes from the runtime
/// (`umcg ...`), then run the default hook. Jobs' own panics (caught into their handles)
/// are not recorded.
fn watch_runtime_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Preemption deferred while this hook allocates and locks (see `Builder::build`).
            kernel::no_preempt(|| record_runtime_panic(info));
            default(info);
        }));
    });
    RUNTIME_PANICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}

fn record_runtime_panic(info: &std::panic::PanicHookInfo<'_>) {
    let msg = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let name = thread::current().name().unwrap_or("").to_string();
    if name.starts_with("umcg-server") || msg.starts_with("umcg") {
        RUNTIME_PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{name}: {msg}"));
    }
}

/// Fail if a runtime thread panicked since [`watch_runtime_panics`].
fn assert_no_runtime_panics() {
    let p = RUNTIME_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(p.is_empty(), "runtime threads panicked: {p:#?}");
}

/// Poll `cond` until it holds; fail naming `what` after a generous bound.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for: {what}"
        );
        thread::sleep(Duration::from_micros(100));
    }
}

// ------------------------------------------------------------------------------------------
// Signal storms

/// SIGALRM handler runs (all threads).
static ALRM: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_alrm(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Atomics only: async-signal-safe.
    ALRM.fetch_add(1, Ordering::Relaxed);
}

/// A storm of SIGALRM, whose handler is installed **without `SA_RESTART`**: an interval
/// timer every 100 µs (process-directed: the kernel picks a thread) plus a thread that sends
/// the signal to every other thread of the process with `tgkill`, then sleeps 100 µs, until
/// dropped. Every wait of every server, worker and helper thread is hit, over and over.
struct Storm {
    stop: Arc<AtomicBool>,
    h: Option<thread::JoinHandle<u64>>,
}

impl Storm {
    fn start() -> Storm {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            // SAFETY: the handler only bumps an atomic; SIGALRM is used by nothing else in
            // this binary. The handler stays installed (a late timer signal must not kill).
            unsafe { sig::install_handler(Signal::SIGALRM, on_alrm) }.unwrap();
        });
        set_itimer(Duration::from_micros(100));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = thread::Builder::new()
            .name("faults-storm".into())
            .spawn(move || {
                let me = sys::gettid();
                let mut sent = 0u64;
                while !s.load(Ordering::Relaxed) {
                    for tid in process_tids() {
                        if tid != me && sys::tgkill(tid, Signal::SIGALRM).is_ok() {
                            sent += 1;
                        }
                    }
                    thread::sleep(Duration::from_micros(100));
                }
                sent
            })
            .unwrap();
        Storm { stop, h: Some(h) }
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        set_itimer(Duration::ZERO);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            let sent = h.join().unwrap();
            eprintln!(
                "storm: {sent} directed signals sent, {} handled",
                ALRM.load(Ordering::Relaxed)
            );
        }
    }
}

/// `setitimer(ITIMER_REAL)` with `interval` as period and first expiry (zero: disarm).
fn set_itimer(interval: Duration) {
    let tv = libc::timeval {
        tv_sec: interval.as_secs() as libc::time_t,
        tv_usec: interval.subsec_micros() as libc::suseconds_t,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: `it` is a valid itimerval; the old value is not asked for (null).
    let r = unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
    assert_eq!(r, 0, "setitimer");
}

/// The TIDs of every thread of this process (`/proc/self/task`).
fn process_tids() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Run `f` in each idle-wakeup mode (list, then eventfd), restoring the mode in force.
fn in_both_modes(mut f: impl FnMut(IdleWakeup)) {
    let was = kernel::idle_wakeup();
    for mode in [IdleWakeup::List, IdleWakeup::EventFd] {
        wait_for("every task of the previous run to unregister", || {
            kernel::registered_tasks() == 0
        });
        kernel::set_idle_wakeup(mode).unwrap();
        f(mode);
    }
    wait_for("every task to unregister", || {
        kernel::registered_tasks() == 0
    });
    kernel::set_idle_wakeup(was).unwrap();
}

// ------------------------------------------------------------------------------------------
// Kernel level: a v0.3 scheduler written against the emulated calls, retrying EINTR

/// What the kernel-level storm saw. Every `eintr_*` counts `EINTR` returns of one kind of
/// wait (each retried).
#[derive(Default)]
struct KStats {
    rounds: AtomicU64,
    blocks: AtomicU64,
    raw_blocks: AtomicU64,
    h5: AtomicU64,
    yields: AtomicU64,
    swaps: AtomicU64,
    exits: AtomicU64,
    runs: AtomicU64,
    idle_timed: AtomicU64,
    idle_untimed: AtomicU64,
    timeouts: AtomicU64,
    eintr_run: AtomicU64,
    eintr_idle: AtomicU64,
    eintr_worker: AtomicU64,
    /// Switches whose worker had already run and exited (`ESRCH`).
    gone: AtomicU64,
    /// Workers in user code per server index: never more than one.
    occupancy: Vec<AtomicU32>,
    /// Server TIDs by index.
    server_tids: Vec<AtomicU32>,
}

impl KStats {
    fn new(servers: usize) -> Arc<KStats> {
        Arc::new(KStats {
            occupancy: (0..servers).map(|_| AtomicU32::new(0)).collect(),
            server_tids: (0..servers).map(|_| AtomicU32::new(0)).collect(),
            ..KStats::default()
        })
    }

    fn report(&self) -> String {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "rounds {} blocks {} raw_blocks {} h5 {} yields {} swaps {} exits {} runs {} \
             idle timed/untimed {}/{} timeouts {} EINTR run/idle/worker {}/{}/{} gone {} \
             occupancy {:?} registered {}",
            l(&self.rounds),
            l(&self.blocks),
            l(&self.raw_blocks),
            l(&self.h5),
            l(&self.yields),
            l(&self.swaps),
            l(&self.exits),
            l(&self.runs),
            l(&self.idle_timed),
            l(&self.idle_untimed),
            l(&self.timeouts),
            l(&self.eintr_run),
            l(&self.eintr_idle),
            l(&self.eintr_worker),
            l(&self.gone),
            self.occupancy
                .iter()
                .map(|o| o.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
            kernel::registered_tasks(),
        )
    }

    fn server_index(&self, tid: u32) -> usize {
        self.server_tids
            .iter()
            .position(|t| t.load(Ordering::Acquire) == tid)
            .unwrap_or_else(|| panic!("server_tid {tid} is not one of the servers"))
    }

    /// The calling worker is back in user code on its server: it must be alone there.
    fn on_cpu(&self, t: &UmcgTask) {
        let w = t.load_state();
        assert_eq!(w.state(), TaskState::Running, "resumed while {w:?}");
        let s = self.server_index(t.server_tid.load(Ordering::Acquire));
        let n = self.occupancy[s].fetch_add(1, Ordering::AcqRel);
        assert_eq!(n, 0, "two workers in user code on server {s}");
    }

    /// The calling worker is about to leave its server.
    fn off_cpu(&self, t: &UmcgTask) {
        let s = self.server_index(t.server_tid.load(Ordering::Acquire));
        self.occupancy[s].fetch_sub(1, Ordering::AcqRel);
    }
}

fn addr(t: &UmcgTask) -> usize {
    (t as *const UmcgTask).expose_provenance()
}

/// The worker side of `umcg_wait(0, 0)` after it left the CPU (yield, swap, or H5): retry
/// `EINTR` until RUNNING. A retry has `next_tid == 0`: it must not switch again.
fn worker_wait(t: &UmcgTask, st: &KStats) {
    loop {
        match kernel::umcg_wait(0, 0) {
            Ok(()) => break,
            Err(UmcgError::Errno(Errno::EINTR)) => {
                st.eintr_worker.fetch_add(1, Ordering::Relaxed);
                t.next_tid.store(0, Ordering::Release);
            }
            Err(e) => panic!("worker umcg_wait: {e}"),
        }
    }
    t.next_tid.store(0, Ordering::Release);
    assert_eq!(t.load_state().state(), TaskState::Running);
}

/// Yield (§2.6): IDLE|LOCKED, back on the run queue, the server RUNNING, wait.
fn k_yield(w: &Worker, g: &Group, st: &KStats) {
    let t = w.task();
    let stid = t.server_tid.load(Ordering::Acquire);
    st.off_cpu(t);
    t.store_state(StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
    g.runq.lock().unwrap().insert(0, addr(t));
    let s = announced_server(stid).expect("announced server");
    let _ = s.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
    t.next_tid.store(0, Ordering::Release);
    worker_wait(t, st);
    st.yields.fetch_add(1, Ordering::Relaxed);
    st.on_cpu(t);
}

/// Swap to another runnable worker (§2.6 "W1 swaps to W2"), or yield if there is none.
fn k_swap(w: &Worker, g: &Group, st: &KStats) {
    let Some(next) = g.pop_runnable() else {
        return k_yield(w, g, st);
    };
    let t = w.task();
    let stid = t.server_tid.load(Ordering::Acquire);
    // Still on its way into umcg_wait (it yielded): wait until it has detached.
    wait_for("the swap target to clear LOCKED", || {
        !next.load_state().is_locked()
    });
    st.off_cpu(t);
    t.store_state(StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
    g.runq.lock().unwrap().insert(0, addr(t));
    next.server_tid.store(stid, Ordering::Release);
    next.transition(TaskState::Idle, TaskState::Running)
        .expect("swap target must be IDLE");
    t.next_tid.store(tid_of(next), Ordering::Release);
    worker_wait(t, st);
    st.swaps.fetch_add(1, Ordering::Relaxed);
    st.on_cpu(t);
}

/// Block inside `kernel::blocking`: it must come back RUNNING, however many signals hit
/// the blocked call and the wake hook's wait.
fn k_blocking(w: &Worker, st: &KStats) {
    let t = w.task();
    st.off_cpu(t);
    kernel::blocking(|| thread::sleep(Duration::from_micros(30))).unwrap();
    st.blocks.fetch_add(1, Ordering::Relaxed);
    st.on_cpu(t);
}

/// Block through the raw hooks (v0.3 semantics): a signal in the wake hook's wait returns
/// the worker to user space IDLE and queued (H5); it must then wait in `umcg_wait`.
fn k_raw_block(w: &Worker, st: &KStats) {
    let t = w.task();
    st.off_cpu(t);
    kernel::block_begin().unwrap();
    thread::sleep(Duration::from_micros(30));
    kernel::block_end().unwrap();
    let s = t.load_state();
    if s.state() != TaskState::Running {
        // (A server may make it RUNNING from here on: one load.)
        assert_eq!(
            s.state(),
            TaskState::Idle,
            "after an interrupted wake hook: {s:?}"
        );
        st.h5.fetch_add(1, Ordering::Relaxed);
        worker_wait(t, st);
    }
    st.raw_blocks.fetch_add(1, Ordering::Relaxed);
    st.on_cpu(t);
}

/// Run `w` (T1 of §2.6) until its server is RUNNING again; `EINTR` retries without the
/// switch.
fn k_run(s: &Server, w: &UmcgTask, st: &KStats) {
    wait_for("a worker to run to clear LOCKED", || {
        !w.load_state().is_locked()
    });
    s.task.store_state(StateWord(UMCG_TASK_IDLE));
    w.server_tid.store(s.tid, Ordering::Release);
    w.transition(TaskState::Idle, TaskState::Running)
        .expect("worker to run must be IDLE");
    s.task.next_tid.store(tid_of(w), Ordering::Release);
    loop {
        match kernel::umcg_wait(0, 0) {
            Ok(()) => break,
            Err(UmcgError::Errno(Errno::EINTR)) => {
                st.eintr_run.fetch_add(1, Ordering::Relaxed);
                s.task.next_tid.store(0, Ordering::Release);
            }
            // The worker ran before the switch woke it (a signal ended its wait and it saw
            // RUNNING) and exited; its exit made us RUNNING before it unregistered.
            Err(UmcgError::Errno(Errno::ESRCH)) => {
                st.gone.fetch_add(1, Ordering::Relaxed);
                s.task.next_tid.store(0, Ordering::Release);
            }
            Err(e) => panic!("server umcg_wait: {e}"),
        }
    }
    s.task.next_tid.store(0, Ordering::Release);
    assert_eq!(s.task.load_state().state(), TaskState::Running);
    st.runs.fetch_add(1, Ordering::Relaxed);
}

/// Sleep until RUNNING: with a 2 ms timeout per call (`ETIMEDOUT` leaves the server IDLE
/// and it waits again), or without.
fn k_server_wait(s: &Server, timed: bool, st: &KStats) {
    loop {
        let abs = if timed {
            sys::futex::realtime_now_ns() + 2_000_000
        } else {
            0
        };
        match kernel::umcg_wait(0, abs) {
            Ok(()) => break,
            Err(UmcgError::Errno(Errno::EINTR)) => {
                st.eintr_idle.fetch_add(1, Ordering::Relaxed);
            }
            Err(UmcgError::Errno(Errno::ETIMEDOUT)) if timed => {
                st.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("server idle umcg_wait: {e}"),
        }
    }
    assert_eq!(s.task.load_state().state(), TaskState::Running);
}

/// The server-idles protocol of §2.6, once.
fn k_idle(s: &Server, g: &Group, timed: bool, st: &KStats) {
    if timed {
        st.idle_timed.fetch_add(1, Ordering::Relaxed);
    } else {
        st.idle_untimed.fetch_add(1, Ordering::Relaxed);
    }
    s.task.store_state(StateWord(UMCG_TASK_IDLE));
    // SAFETY: the server's task outlives the list's use (the test keeps it).
    unsafe { g.idle_servers.push(&s.task) }.expect("push self");
    fence(Ordering::SeqCst);
    let work = !g.idle_workers.is_empty()
        || !g.runq.lock().unwrap().is_empty()
        || g.stop.load(Ordering::Acquire);
    if !work || g.idle_servers.remove(&s.task) == Remove::AlreadyDeleted {
        k_server_wait(s, timed, st);
    } else {
        s.task.store_state(StateWord(UMCG_TASK_RUNNING));
    }
    g.idle_servers.reclaim(&s.task).expect("reclaim");
}

fn k_server_loop(s: &Server, g: &Group, st: &KStats) {
    let mut round = 0u64;
    loop {
        g.drain_idle_workers();
        if let Some(w) = g.pop_runnable() {
            k_run(s, w, st);
            continue;
        }
        if g.stop.load(Ordering::Acquire) {
            return;
        }
        round += 1;
        k_idle(s, g, round.is_multiple_of(2), st);
    }
}

/// Pop every idle server from the group's list, make it RUNNING and wake it.
fn release_idle_servers(g: &Group) {
    while let Pop::Got(node) = g.idle_servers.pop(kernel::list_bound()) {
        // SAFETY: nodes on the list are registered servers' boxed tasks, alive until their
        // thread is joined (after this loop).
        let s = unsafe { &*node.task() };
        if s.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
            .is_ok()
        {
            let _ = kernel::wake(s.server_tid.load(Ordering::Acquire));
        }
    }
}

/// Kernel level, both idle-wakeup modes: 2 servers and 6 workers under a SIGALRM storm.
/// Workers block in `kernel::blocking` and through the raw hooks, yield and swap; servers
/// run them and go idle with and without a timeout. Every round of every worker completes
/// once, no server ever has two workers in user code, registration and `kernel::blocking`
/// never surface `EINTR`, and every `EINTR` from `umcg_wait` is retried to the same result.
#[test]
fn signal_storm_kernel_waits() {
    let _s = serial();
    in_both_modes(|mode| {
        const SERVERS: usize = 2;
        const WORKERS: usize = 6;
        const ROUNDS: u64 = 150;
        let g = Group::new();
        let st = KStats::new(SERVERS);
        let st2 = st.clone();
        let _wd = watchdog(
            "the kernel-level storm",
            Duration::from_secs(40),
            Arc::new(move || format!("mode {mode:?}: {}", st2.report())),
        );
        let storm = Storm::start();
        let servers: Vec<_> = (0..SERVERS)
            .map(|i| {
                let (g, st) = (g.clone(), st.clone());
                thread::spawn(move || {
                    let s = Server::register(&g);
                    announce(&s);
                    st.server_tids[i].store(s.tid, Ordering::Release);
                    k_server_loop(&s, &g, &st);
                })
            })
            .collect();
        wait_for("servers to register", || {
            st.server_tids
                .iter()
                .all(|t| t.load(Ordering::Acquire) != 0)
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|i| {
                let (g, st) = (g.clone(), st.clone());
                thread::spawn(move || {
                    // Registration waits for a server; a signal must not end it early.
                    let w = Worker::register(&g);
                    st.on_cpu(w.task());
                    for r in 0..ROUNDS {
                        match (r + i as u64) % 4 {
                            0 => k_blocking(&w, &st),
                            1 => k_yield(&w, &g, &st),
                            2 => k_swap(&w, &g, &st),
                            _ => k_raw_block(&w, &st),
                        }
                        st.rounds.fetch_add(1, Ordering::Relaxed);
                    }
                    st.off_cpu(w.task());
                    w.exit();
                    st.exits.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        g.stop.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        while servers.iter().any(|s| !s.is_finished()) {
            release_idle_servers(&g);
            thread::sleep(Duration::from_micros(200));
        }
        for s in servers {
            s.join().unwrap();
        }
        drop(storm);
        eprintln!("kernel storm, {mode:?}: {}", st.report());
        assert_eq!(st.rounds.load(Ordering::Relaxed), WORKERS as u64 * ROUNDS);
        assert_eq!(st.exits.load(Ordering::Relaxed), WORKERS as u64);
        assert!(g.runq.lock().unwrap().is_empty());
        assert!(g.idle_workers.is_empty());
    });
}

// ------------------------------------------------------------------------------------------
// M:N level

use umcg_runtime::cancel::{CancelToken, Cancelled};
use umcg_runtime::sync::{Condvar, Mutex as UMutex, channel};
use umcg_runtime::{Runtime, Unparker, io as uio};

/// Progress of the M:N storm, per kind of wait.
#[derive(Default, Debug)]
struct MStats {
    mutex: AtomicU64,
    produced: AtomicU64,
    consumed: AtomicU64,
    pings: AtomicU64,
    parks: AtomicU64,
    sleeps: AtomicU64,
    pipe_bytes: AtomicU64,
    cancelled: AtomicU64,
    joined: AtomicU64,
    panics: AtomicU64,
}

fn l(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// M:N level, both idle-wakeup modes, 2 servers with a 1 ms time slice (so preemption kicks
/// mix with the storm): contended `Mutex` (workers and a plain thread), `Condvar` with timed
/// and untimed waits, channel ping-pong, `park`/`Unparker` against a plain thread, `sleep`,
/// pipe reads through `io`, a `CancelToken` ending blocked reads, nested spawn/join and
/// panicking jobs. Every operation completes exactly once and `shutdown` returns.
#[test]
fn signal_storm_mn_runtime() {
    let _s = serial();
    watch_runtime_panics();
    in_both_modes(|mode| {
        let st = Arc::new(MStats::default());
        let st2 = st.clone();
        let _wd = watchdog(
            "the M:N storm",
            Duration::from_secs(40),
            Arc::new(move || {
                format!(
                    "mode {mode:?}: {st2:?}, registered {}",
                    kernel::registered_tasks()
                )
            }),
        );
        let storm = Storm::start();
        let rt = Runtime::builder()
            .servers(2)
            .idle_wakeup(mode)
            .time_slice(Some(Duration::from_millis(1)))
            .build()
            .unwrap();
        let mut hs: Vec<umcg_runtime::JoinHandle<()>> = Vec::new();

        // 1. A contended mutex: 6 workers and a plain thread.
        const INCS: u64 = 300;
        let m = Arc::new(UMutex::new(0u64));
        for _ in 0..6 {
            let (m, st) = (m.clone(), st.clone());
            hs.push(rt.spawn(move || {
                for i in 0..INCS {
                    *m.lock() += 1;
                    st.mutex.fetch_add(1, Ordering::Relaxed);
                    if i % 25 == 0 {
                        umcg_runtime::yield_now();
                    }
                }
            }));
        }
        let plain = {
            let m = m.clone();
            thread::spawn(move || {
                for _ in 0..INCS {
                    *m.lock() += 1;
                }
            })
        };

        // 2. Condvar producer/consumer, one consumer with timed waits.
        const ITEMS: u64 = 150;
        let q = Arc::new((UMutex::new(VecDeque::<u64>::new()), Condvar::new()));
        let sum = Arc::new(AtomicU64::new(0));
        for p in 0..2u64 {
            let (q, st) = (q.clone(), st.clone());
            hs.push(rt.spawn(move || {
                for i in 0..ITEMS {
                    q.0.lock().push_back(p * ITEMS + i);
                    q.1.notify_one();
                    st.produced.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let taken = Arc::new(AtomicU64::new(0));
        for c in 0..2 {
            let (q, st, sum, taken) = (q.clone(), st.clone(), sum.clone(), taken.clone());
            hs.push(rt.spawn(move || {
                loop {
                    let mut g = q.0.lock();
                    loop {
                        if let Some(v) = g.pop_front() {
                            sum.fetch_add(v, Ordering::Relaxed);
                            taken.fetch_add(1, Ordering::AcqRel);
                            st.consumed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        if taken.load(Ordering::Acquire) == 2 * ITEMS {
                            q.1.notify_all();
                            return;
                        }
                        g = if c == 0 {
                            q.1.wait(g)
                        } else {
                            q.1.wait_timeout(g, Duration::from_micros(300)).0
                        };
                    }
                    drop(g);
                    if taken.load(Ordering::Acquire) == 2 * ITEMS {
                        q.1.notify_all();
                        return;
                    }
                }
            }));
        }

        // 3. Channel ping-pong, 3 pairs.
        const PINGS: u64 = 200;
        for _ in 0..3 {
            let (to_b, b_rx) = channel::<u64>();
            let (to_a, a_rx) = channel::<u64>();
            let st1 = st.clone();
            hs.push(rt.spawn(move || {
                for i in 0..PINGS {
                    to_b.send(i).unwrap();
                    assert_eq!(a_rx.recv().unwrap(), i + 1);
                    st1.pings.fetch_add(1, Ordering::Relaxed);
                }
            }));
            hs.push(rt.spawn(move || {
                for i in 0..PINGS {
                    assert_eq!(b_rx.recv().unwrap(), i);
                    to_a.send(i + 1).unwrap();
                }
            }));
        }

        // 4. park/Unparker against a plain thread: strict turns.
        const TURNS: u32 = 100;
        let turn = Arc::new(AtomicU32::new(0));
        let (utx, urx) = mpsc::channel::<Unparker>();
        let main_thread = thread::current();
        {
            let (turn, st, main_thread) = (turn.clone(), st.clone(), main_thread.clone());
            hs.push(rt.spawn(move || {
                utx.send(Unparker::current()).unwrap();
                for r in 0..TURNS {
                    while turn.load(Ordering::Acquire) != 2 * r + 1 {
                        umcg_runtime::park();
                    }
                    turn.store(2 * r + 2, Ordering::Release);
                    main_thread.unpark();
                    st.parks.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let u = urx.recv().unwrap();
        let parker = {
            let turn = turn.clone();
            thread::spawn(move || {
                for r in 0..TURNS {
                    turn.store(2 * r + 1, Ordering::Release);
                    u.unpark();
                    let t0 = Instant::now();
                    while turn.load(Ordering::Acquire) != 2 * r + 2 {
                        // The worker unparks the test's main thread, not this one: poll.
                        thread::sleep(Duration::from_micros(50));
                        assert!(t0.elapsed() < Duration::from_secs(20), "turn {r} lost");
                    }
                }
            })
        };

        // 5. sleep.
        for _ in 0..4 {
            let st = st.clone();
            hs.push(rt.spawn(move || {
                for _ in 0..30 {
                    umcg_runtime::sleep(Duration::from_micros(100));
                    st.sleeps.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }

        // 6. Pipe reads and writes through `io`.
        const MSGS: u64 = 200;
        for _ in 0..2 {
            let (r, w) = std::io::pipe().unwrap();
            hs.push(rt.spawn(move || {
                for i in 0..MSGS {
                    let mut b = &i.to_le_bytes()[..];
                    while !b.is_empty() {
                        let n = uio::write(&w, b).unwrap();
                        b = &b[n..];
                    }
                    if i % 20 == 0 {
                        umcg_runtime::sleep(Duration::from_micros(50));
                    }
                }
            }));
            let st = st.clone();
            hs.push(rt.spawn(move || {
                let mut got = Vec::with_capacity(8 * MSGS as usize);
                let mut buf = [0u8; 64];
                while got.len() < 8 * MSGS as usize {
                    let n = uio::read(&r, &mut buf).unwrap();
                    assert_ne!(n, 0, "EOF before every message");
                    got.extend_from_slice(&buf[..n]);
                    st.pipe_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                for (i, c) in got.chunks(8).enumerate() {
                    assert_eq!(u64::from_le_bytes(c.try_into().unwrap()), i as u64);
                }
            }));
        }

        // 7. A CancelToken ends 4 blocked reads.
        let token = CancelToken::new();
        let mut keep = Vec::new();
        for _ in 0..4 {
            let (r, w) = std::io::pipe().unwrap();
            keep.push(w);
            let (t, st) = (token.clone(), st.clone());
            hs.push(rt.spawn(move || {
                let e = t.run(|| uio::read(&r, &mut [0u8; 8])).unwrap_err();
                assert!(Cancelled::is(&e), "{e}");
                st.cancelled.fetch_add(1, Ordering::Relaxed);
            }));
        }

        // 8. Nested spawn/join and panicking jobs.
        for _ in 0..2 {
            let st = st.clone();
            hs.push(rt.spawn(move || {
                let inner: Vec<_> = (0..10u64)
                    .map(|i| umcg_runtime::spawn(move || i * 2))
                    .collect();
                let s: u64 = inner.into_iter().map(|h| h.join().unwrap()).sum();
                assert_eq!(s, 90);
                st.joined.fetch_add(10, Ordering::Relaxed);
                let e = umcg_runtime::spawn(|| -> u32 { panic!("storm panic") })
                    .join()
                    .unwrap_err();
                assert!(e.is_panic());
                st.panics.fetch_add(1, Ordering::Relaxed);
            }));
        }

        wait_for("the 4 readers to wait", || token.waiters() == 4);
        token.cancel();
        for h in hs {
            h.join().unwrap();
        }
        plain.join().unwrap();
        parker.join().unwrap();
        rt.shutdown().unwrap();
        drop(keep);
        drop(storm);
        eprintln!("M:N storm, {mode:?}: {st:?}");
        assert_eq!(*m.lock(), 7 * INCS);
        assert_eq!(l(&st.mutex), 6 * INCS);
        assert_eq!(l(&st.produced), 2 * ITEMS);
        assert_eq!(l(&st.consumed), 2 * ITEMS);
        assert_eq!(sum.load(Ordering::Relaxed), (0..2 * ITEMS).sum::<u64>());
        assert_eq!(l(&st.pings), 3 * PINGS);
        assert_eq!(l(&st.parks), u64::from(TURNS));
        assert_eq!(l(&st.sleeps), 4 * 30);
        assert_eq!(l(&st.pipe_bytes), 2 * 8 * MSGS);
        assert_eq!(l(&st.cancelled), 4);
        assert_eq!(l(&st.joined), 20);
        assert_eq!(l(&st.panics), 2);
        assert_no_runtime_panics();
    });
}

// ------------------------------------------------------------------------------------------
// Threads that exit while registered

/// `umcg_wait(0, 0)` for a server whose `next_tid` is set (or 0), retrying `EINTR` without
/// the switch; fails (instead of hanging) if nobody makes the server RUNNING within `limit`.
fn server_wait_bounded(s: &Server, limit: Duration) -> Result<(), UmcgError> {
    let abs = sys::futex::realtime_now_ns() + limit.as_nanos() as u64;
    let r = loop {
        match kernel::umcg_wait(0, abs) {
            Err(UmcgError::Errno(Errno::EINTR)) => s.task.next_tid.store(0, Ordering::Release),
            Err(UmcgError::Errno(Errno::ETIMEDOUT))
                if s.task.load_state().state() == TaskState::Running =>
            {
                break Ok(());
            }
            r => break r,
        }
    };
    s.task.next_tid.store(0, Ordering::Release);
    r
}

/// Run `w` (T1): S:IDLE, W's server and W:RUNNING, then the bounded wait.
fn run_bounded(s: &Server, w: &UmcgTask, limit: Duration) -> Result<StateWord, UmcgError> {
    s.task.store_state(StateWord(UMCG_TASK_IDLE));
    w.server_tid.store(s.tid, Ordering::Release);
    w.transition(TaskState::Idle, TaskState::Running)
        .expect("worker to run must be IDLE");
    s.task.next_tid.store(tid_of(w), Ordering::Release);
    server_wait_bounded(s, limit)?;
    Ok(w.load_state())
}

/// A worker thread that ends while RUNNING on its server, without unregistering: its
/// thread-local destructor unregisters it, marks it NONE (the state v0.9.1's successors give
/// an unregistered task) and wakes the server that was waiting for it (what
/// `UNREGISTER|WORKER` does in the later ABIs; v0.3's kernel woke nobody and the server
/// slept for ever).
#[test]
fn worker_exits_running_without_unregistering() {
    let _s = serial();
    let g = Group::new();
    let gw = g.clone();
    let exited = Arc::new(AtomicBool::new(false));
    let ex = exited.clone();
    let worker = thread::spawn(move || {
        let w = Worker::register(&gw);
        assert_eq!(w.task().load_state().state(), TaskState::Running);
        ex.store(true, Ordering::Release);
        // Returns while registered and RUNNING.
    });
    let s = Server::register(&g);
    announce(&s);
    s.wait_for_workers(Instant::now() + Duration::from_secs(20));
    let w = g.pop_runnable().unwrap();
    let st = run_bounded(&s, w, Duration::from_secs(10))
        .expect("the server must be woken when its running worker's thread exits");
    worker.join().unwrap();
    assert!(exited.load(Ordering::Acquire));
    assert_eq!(
        st.state(),
        TaskState::None,
        "the exited worker reads {st:?}"
    );
    assert_eq!(s.task.load_state().state(), TaskState::Running);
    assert_eq!(kernel::registered_tasks(), 1, "only the server is left");
}

static USR2: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_usr2(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    USR2.fetch_add(1, Ordering::Relaxed);
}

fn install_usr2() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handler only bumps an atomic; SIGUSR2 is used by nothing else in this
        // binary (no SA_RESTART: it ends the wake hook's wait, H5).
        unsafe { sig::install_handler(Signal::SIGUSR2, on_usr2) }.unwrap();
    });
}

/// Block and unblock through the raw hooks while the server is busy, and return once a
/// SIGUSR2 ended the wake hook's wait (H5, sent by [`interrupt_until`]): the worker is back
/// in user space IDLE and queued on the idle-worker list; `h5` tells the test.
fn block_until_h5(w: &Worker, h5: &AtomicBool) {
    kernel::block_begin().unwrap();
    thread::sleep(Duration::from_millis(1));
    kernel::block_end().unwrap();
    assert_eq!(w.task().load_state().state(), TaskState::Idle, "H5: IDLE");
    h5.store(true, Ordering::Release);
}

/// Signal `tid` (asleep in the wake hook) until it reports H5.
fn interrupt_until(tid: u32, h5: &AtomicBool) {
    let t0 = Instant::now();
    while !h5.load(Ordering::Acquire) {
        assert!(t0.elapsed() < Duration::from_secs(20), "H5 never happened");
        if common::is_sleeping(tid) {
            let _ = sys::tgkill(tid, Signal::SIGUSR2);
        }
        thread::sleep(Duration::from_micros(200));
    }
}

/// A worker that exits while queued on the idle-worker list (after H5, not yet taken by a
/// server) must not leave a node that the emulated kernel later dereferences or writes.
///
/// W1 exits queued; W2 is queued above it (W2's link is W1's node). A `WAKE_ONLY` aimed at
/// W2 runs its wake hook while it is queued: the double-enqueue guard must still read W2's
/// link as a link (W1's node is a tombstone in the registry), not as a list head to push
/// onto, which would write W2's node into the exited W1's task. Then the server takes the
/// list: W2 once, and W1 marked NONE (gone; user space drops it).
#[test]
fn worker_exits_while_queued() {
    let _s = serial();
    install_usr2();
    let g = Group::new();
    let (h5_1, h5_2) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let go2 = Arc::new(AtomicBool::new(false));
    let (tid1, tid2) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let w1 = {
        let (g, h5, tid) = (g.clone(), h5_1.clone(), tid1.clone());
        thread::spawn(move || {
            let w = Worker::register(&g);
            tid.store(sys::gettid(), Ordering::Release);
            block_until_h5(&w, &h5);
            // Returns while registered, IDLE and queued.
        })
    };
    let s = Server::register(&g);
    announce(&s);
    let limit = Duration::from_secs(10);
    s.wait_for_workers(Instant::now() + limit);
    let t1 = g.pop_runnable().unwrap();
    let w1_task = addr(t1);
    // W1 runs, blocks: BLOCKED (or already unblocked and queued), the server is woken.
    run_bounded(&s, t1, limit).unwrap();
    let w2 = {
        let (g, h5, tid, go) = (g.clone(), h5_2.clone(), tid2.clone(), go2.clone());
        thread::spawn(move || {
            let w = Worker::register(&g);
            tid.store(sys::gettid(), Ordering::Release);
            while !go.load(Ordering::Acquire) {
                thread::yield_now();
            }
            block_until_h5(&w, &h5);
            // Queued: wait until a server runs it (WAKE_ONLYs re-run the wake hook).
            loop {
                match kernel::umcg_wait(0, 0) {
                    Ok(()) => break,
                    Err(UmcgError::Errno(Errno::EINTR)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            w.exit();
        })
    };
    // W2 registers (queued), the server takes it off the list (W1 may be on it too).
    wait_for("W2 on the idle-worker list", || {
        g.drain_idle_workers();
        let q = g.runq.lock().unwrap();
        q.len() == 1 + usize::from(q.contains(&w1_task))
    });
    let t2 = {
        let mut q = g.runq.lock().unwrap();
        let i = q.iter().position(|&a| a != w1_task).unwrap();
        q.remove(i)
    };
    // SAFETY: worker tasks are leaked by the harness.
    let t2: &UmcgTask = unsafe { &*std::ptr::with_exposed_provenance(t2) };
    // W1 unblocked meanwhile and was queued: if that drain took it, put it back on the list
    // (the test needs it queued below W2). It sleeps IDLE in the wake hook; re-pushing it is
    // what the kernel's next wake hook would do.
    if g.runq.lock().unwrap().contains(&w1_task) {
        g.runq.lock().unwrap().retain(|&a| a != w1_task);
        // SAFETY: as above.
        let t1: &UmcgTask = unsafe { &*std::ptr::with_exposed_provenance(w1_task) };
        g.idle_workers.push(t1, 64).unwrap();
    }
    // W1 ends its wake-hook wait by H5 and exits while queued.
    interrupt_until(tid1.load(Ordering::Acquire), &h5_1);
    w1.join().unwrap();
    // SAFETY: as above.
    let t1: &UmcgTask = unsafe { &*std::ptr::with_exposed_provenance(w1_task) };
    assert_eq!(t1.load_state().state(), TaskState::None, "exited W1");
    let w1_link = t1.idle_workers_ptr.load(Ordering::Acquire);
    assert_ne!(w1_link, g.idle_workers.addr(), "W1 is still queued");
    // W2 runs on the server, blocks and unblocks while the server is busy (here), is queued
    // above W1, and H5 returns it to user space, where it waits in umcg_wait.
    go2.store(true, Ordering::Release);
    run_bounded(&s, t2, limit).unwrap();
    interrupt_until(tid2.load(Ordering::Acquire), &h5_2);
    assert_eq!(
        t2.idle_workers_ptr.load(Ordering::Acquire),
        t1.idle_workers_node(),
        "W2 is queued right above W1"
    );
    // Re-run W2's wake hook while it is queued.
    let wtid = tid2.load(Ordering::Acquire);
    s.task.next_tid.store(wtid, Ordering::Release);
    for _ in 0..3 {
        common::wait_until_sleeping(wtid);
        kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0).unwrap();
    }
    common::wait_until_sleeping(wtid);
    s.task.next_tid.store(0, Ordering::Release);
    assert_eq!(
        t1.idle_workers_ptr.load(Ordering::Acquire),
        w1_link,
        "the kernel wrote through the exited worker's node"
    );
    // The list holds W2 once and the exited W1, which user space drops (state NONE).
    assert_eq!(g.drain_idle_workers(), 2);
    let taken: Vec<usize> = std::mem::take(&mut *g.runq.lock().unwrap());
    assert_eq!(taken.iter().filter(|&&a| a == addr(t2)).count(), 1);
    assert!(taken.contains(&w1_task));
    assert_eq!(kernel::registered_tasks(), 2, "the server and W2");
    run_bounded(&s, t2, limit).unwrap();
    w2.join().unwrap();
}

/// A registering worker waits in the wake hook until a server runs it; a signal ends that
/// wait (H5), but not the registration, which waits on. It must not run the wake hook again:
/// a server may already have taken the worker off the idle-worker list (resetting its
/// field), and a second hook would queue it again, so that user space would later run a
/// worker that is already running (found by `signal_storm_mn_runtime`: "worker 18 is
/// runnable but Blocked").
#[test]
fn registration_interrupted_by_signals_queues_once() {
    let _s = serial();
    install_usr2();
    let g = Group::new();
    let s = Server::register(&g);
    announce(&s);
    let tid = Arc::new(AtomicU32::new(0));
    let (gw, t2) = (g.clone(), tid.clone());
    let worker = thread::spawn(move || {
        let w = Worker::register_with(&gw, |_, tid| t2.store(tid, Ordering::Release));
        w.exit();
    });
    // Queued by the registration's wake hook; take it off the list (user space now holds
    // it), then interrupt the registration's wait a few times.
    wait_for("the registering worker on the idle-worker list", || {
        !g.idle_workers.is_empty()
    });
    assert_eq!(g.drain_idle_workers(), 1);
    let wtid = tid.load(Ordering::Acquire);
    for _ in 0..5 {
        common::wait_until_sleeping(wtid);
        let n = USR2.load(Ordering::Relaxed);
        sys::tgkill(wtid, Signal::SIGUSR2).unwrap();
        wait_for("the signal to be handled", || {
            USR2.load(Ordering::Relaxed) > n
        });
    }
    common::wait_until_sleeping(wtid);
    assert!(
        g.idle_workers.is_empty(),
        "an interrupted registration queued the worker again"
    );
    let w = g.pop_runnable().unwrap();
    assert!(
        run_bounded(&s, w, Duration::from_secs(10))
            .unwrap()
            .is_locked()
    );
    worker.join().unwrap();
}

// ------------------------------------------------------------------------------------------
// A server that leaves while workers wait for it

/// How S1 leaves in the tests below.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// `umcg_ctl(UNREGISTER)`; the thread stays alive until the test ends.
    Unregister,
    /// The thread returns registered (its task leaked): the TLS destructor unregisters it.
    Exit,
}

/// S1, the server that leaves: registers, reports its TID, runs `body` (which takes and
/// runs the workers), then leaves as `leave` says when `go` is set. The returned handle
/// finishes once S1 has left (for `Unregister`, the thread then waits for `release`).
fn leaving_server(
    g: &Arc<Group>,
    leave: Leave,
    go: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    left: Arc<AtomicBool>,
    body: impl FnOnce(&Server) + Send + 'static,
) -> (thread::JoinHandle<()>, u32) {
    let (tx, rx) = mpsc::channel();
    let g = g.clone();
    let h = thread::spawn(move || {
        let s = Server::register(&g);
        announce(&s);
        tx.send(s.tid).unwrap();
        body(&s);
        wait_for("the test to let S1 leave", || go.load(Ordering::Acquire));
        match leave {
            Leave::Unregister => {
                // SAFETY: unregister takes no pointer.
                let r = unsafe { kernel::umcg_ctl(UMCG_CTL_UNREGISTER, std::ptr::null_mut()) };
                assert_eq!(r, Ok(kernel::Ctl::Done));
                left.store(true, Ordering::Release);
                wait_for("the end of the test", || release.load(Ordering::Acquire));
                drop(s); // Its second unregister fails (EINVAL), ignored by Drop.
            }
            Leave::Exit => {
                // Exit registered: no unregister, the task stays allocated (leaked).
                std::mem::forget(s);
                // `left` is set by the test after the join: the TLS destructor runs after
                // this closure returns.
            }
        }
    });
    (h, rx.recv().unwrap())
}

/// Let S1 (see [`leaving_server`]) leave, and wait until it has.
fn s1_leaves(
    leave: Leave,
    go: &AtomicBool,
    left: &AtomicBool,
    s1: &mut Option<thread::JoinHandle<()>>,
) {
    go.store(true, Ordering::Release);
    match leave {
        Leave::Unregister => wait_for("S1 to unregister", || left.load(Ordering::Acquire)),
        Leave::Exit => {
            s1.take().unwrap().join().unwrap();
            left.store(true, Ordering::Release);
        }
    }
}

/// S2, the server that stays: an idle server serving the idle-worker list until `n`
/// workers ran to their exit (LOCKED) on it. Returns the TIDs of the workers it ran.
fn staying_server(g: &Arc<Group>, n: usize, limit: Duration) -> thread::JoinHandle<()> {
    let g = g.clone();
    thread::spawn(move || {
        let s = Server::register(&g);
        announce(&s);
        let mut exited = 0;
        while exited < n {
            s.wait_for_workers(Instant::now() + limit);
            while let Some(w) = g.pop_runnable() {
                let st = run_bounded(&s, w, limit).unwrap();
                assert_eq!(st.state(), TaskState::Idle, "S2 ran a worker: {st:?}");
                assert!(st.is_locked(), "a worker S2 runs only exits: {st:?}");
                exited += 1;
            }
        }
        // S2 is RUNNING and off the idle-server list (wait_for_workers reclaimed its node):
        // its Drop unregisters it.
    })
}

/// Wait until S2 sleeps on the idle-server list (so that no worker can reach it earlier).
fn wait_until_idle_on_list(g: &Group, n: usize) {
    wait_for("S2 idle on the idle-server list", || {
        common::live_idle_servers(g) == n
    });
}

/// `umcg_wait(0, 0)` of a worker, retrying `EINTR` (without switching again).
fn worker_wait_once(t: &UmcgTask) -> Result<(), UmcgError> {
    loop {
        match kernel::umcg_wait(0, 0) {
            Err(UmcgError::Errno(Errno::EINTR)) => t.next_tid.store(0, Ordering::Release),
            r => return r,
        }
    }
}

/// A server leaves (unregisters, or its thread exits registered) while two workers that
/// handed it the CPU (they yielded: IDLE, in its private run queue, asleep in `umcg_wait`)
/// wait for it to run them again. v0.3's kernel left them asleep for ever. Here:
///
/// 1. Their `umcg_wait` fails with `ESRCH`, state unchanged (IDLE) (the leaving server's
///    scan, "A server that leaves" step 2: both are asleep in the kernel before S1 leaves).
/// 2. A second `umcg_wait` naming the departed server fails with `ESRCH` at once (step 1:
///    the departure count invalidates the worker's cached check).
/// 3. Each puts itself back on the idle-worker list the v0.3 way (RUNNING without a server,
///    then `umcg_wait`: the wake hook queues it and wakes the idle server S2), and S2 runs
///    it to its exit.
///
/// Deterministic: S2 only registers once S1 holds both workers (nothing else can take them
/// off the list first), and S1 leaves only once S2 is idle on the idle-server list and both
/// workers are asleep in the kernel with LOCKED cleared. Both idle-wakeup modes.
#[test]
fn server_exits_while_workers_wait_on_it() {
    let _s = serial();
    in_both_modes(|mode| {
        for leave in [Leave::Exit, Leave::Unregister] {
            server_leaves_with_yielded_workers(mode, leave);
        }
    });
}

fn server_leaves_with_yielded_workers(mode: IdleWakeup, leave: Leave) {
    const WORKERS: usize = 2;
    let limit = Duration::from_secs(10);
    let g = Group::new();
    let esrch = Arc::new(AtomicU32::new(0));
    let _wd = {
        let esrch = esrch.clone();
        watchdog(
            "a server leaving with yielded workers",
            Duration::from_secs(30),
            Arc::new(move || {
                format!(
                    "{mode:?}/{leave:?}: ESRCH seen by {} workers, registered {}",
                    esrch.load(Ordering::Acquire),
                    kernel::registered_tasks()
                )
            }),
        )
    };
    let (go, release, left) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let held = Arc::new(Mutex::new(Vec::<usize>::new()));
    // S1 takes both workers off the list and runs each once; each yields back to it.
    let (s1, s1_tid) = {
        let (g, held) = (g.clone(), held.clone());
        leaving_server(
            &g.clone(),
            leave,
            go.clone(),
            release.clone(),
            left.clone(),
            move |s| {
                let mut n = 0;
                while n < WORKERS {
                    g.drain_idle_workers();
                    let Some(w) = g.pop_runnable() else {
                        thread::sleep(Duration::from_micros(100));
                        continue;
                    };
                    let st = run_bounded(s, w, limit).unwrap();
                    assert_eq!(st.state(), TaskState::Idle, "it yielded: {st:?}");
                    held.lock().unwrap().push(addr(w));
                    n += 1;
                }
            },
        )
    };
    let mut s1 = Some(s1);
    let tids = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (g, esrch, tids) = (g.clone(), esrch.clone(), tids.clone());
            thread::spawn(move || {
                let w = Worker::register_with(&g, |_, tid| tids.lock().unwrap().push(tid));
                let t = w.task();
                assert_eq!(t.server_tid.load(Ordering::Acquire), s1_tid);
                // Yield to S1: it keeps us in its own queue (`held`).
                t.store_state(StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
                let s = announced_server(s1_tid).unwrap();
                let _ = s.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
                t.next_tid.store(0, Ordering::Release);
                let r = worker_wait_once(t);
                assert_eq!(r, Err(UmcgError::Errno(Errno::ESRCH)), "its server left");
                assert_eq!(t.load_state(), StateWord(UMCG_TASK_IDLE), "state unchanged");
                // Again, still naming the departed server: ESRCH at once.
                let r = worker_wait_once(t);
                assert_eq!(r, Err(UmcgError::Errno(Errno::ESRCH)), "second wait");
                esrch.fetch_add(1, Ordering::AcqRel);
                // Back on the idle-worker list: RUNNING without a server, then wait.
                t.server_tid.store(0, Ordering::Release);
                t.store_state(StateWord(UMCG_TASK_RUNNING));
                worker_wait_once(t).unwrap();
                assert_eq!(t.load_state(), StateWord(UMCG_TASK_RUNNING));
                assert_ne!(t.server_tid.load(Ordering::Acquire), s1_tid);
                w.exit();
            })
        })
        .collect();
    wait_for("S1 to hold both workers", || {
        held.lock().unwrap().len() == WORKERS
    });
    // Both asleep in umcg_wait's idle loop: LOCKED cleared (after the server check), asleep.
    for &a in held.lock().unwrap().iter() {
        // SAFETY: worker tasks are leaked by the harness.
        let t: &UmcgTask = unsafe { &*std::ptr::with_exposed_provenance(a) };
        wait_for("a yielded worker to clear LOCKED", || {
            t.load_state() == StateWord(UMCG_TASK_IDLE)
        });
        common::wait_until_sleeping(tid_of(t));
    }
    assert_eq!(esrch.load(Ordering::Acquire), 0, "ESRCH before S1 left");
    let s2 = staying_server(&g, WORKERS, limit);
    wait_until_idle_on_list(&g, 1);
    s1_leaves(leave, &go, &left, &mut s1);
    wait_for("both workers to see ESRCH", || {
        esrch.load(Ordering::Acquire) == WORKERS as u32
    });
    for w in workers {
        w.join().unwrap();
    }
    s2.join().unwrap();
    release.store(true, Ordering::Release);
    if let Some(h) = s1 {
        h.join().unwrap();
    }
    assert!(g.idle_workers.is_empty());
    assert_eq!(kernel::registered_tasks(), 0);
}

/// A server leaves (unregisters, or exits registered) while workers it ran are queued on
/// the idle-worker list with `server_tid` still naming it: W1 asleep in the wake hook after
/// `kernel::blocking` (it blocked on S1, unblocked while S1 was busy), W2 back in user space
/// after H5 and asleep in `umcg_wait` while queued. Neither is affected (any server may
/// take a queued worker: W2's wait must not end with `ESRCH`), and S2 runs both to their
/// exit. Both idle-wakeup modes.
#[test]
fn server_exits_while_workers_are_queued() {
    let _s = serial();
    install_usr2();
    in_both_modes(|mode| {
        for leave in [Leave::Exit, Leave::Unregister] {
            server_leaves_with_queued_workers(mode, leave);
        }
    });
}

fn server_leaves_with_queued_workers(mode: IdleWakeup, leave: Leave) {
    let limit = Duration::from_secs(10);
    let g = Group::new();
    let _wd = watchdog(
        "a server leaving with queued workers",
        Duration::from_secs(30),
        Arc::new(move || {
            format!(
                "{mode:?}/{leave:?}: registered {}",
                kernel::registered_tasks()
            )
        }),
    );
    let (go, release, left) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let unblock = Arc::new(AtomicBool::new(false));
    let h5 = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicU32::new(0));
    let (s1, s1_tid) = {
        let (g, ran) = (g.clone(), ran.clone());
        leaving_server(
            &g.clone(),
            leave,
            go.clone(),
            release.clone(),
            left.clone(),
            move |s| {
                let mut n = 0;
                while n < 2 {
                    g.drain_idle_workers();
                    let Some(w) = g.pop_runnable() else {
                        thread::sleep(Duration::from_micros(100));
                        continue;
                    };
                    // It blocks: BLOCKED, or already unblocked and queued again.
                    let st = run_bounded(s, w, limit).unwrap();
                    assert!(!st.is_locked(), "it blocked: {st:?}");
                    ran.fetch_add(1, Ordering::AcqRel);
                    n += 1;
                }
            },
        )
    };
    let mut s1 = Some(s1);
    let tids = Arc::new(Mutex::new(Vec::new()));
    let tasks = Arc::new(Mutex::new(Vec::new()));
    let raw_tid = Arc::new(AtomicU32::new(0));
    let spawn_worker = |raw: bool| {
        let (g, tids, tasks, unblock, h5, raw_tid) = (
            g.clone(),
            tids.clone(),
            tasks.clone(),
            unblock.clone(),
            h5.clone(),
            raw_tid.clone(),
        );
        thread::spawn(move || {
            let w = Worker::register_with(&g, |t, tid| {
                tids.lock().unwrap().push(tid);
                tasks.lock().unwrap().push(addr(t));
                if raw {
                    raw_tid.store(tid, Ordering::Release);
                }
            });
            let t = w.task();
            assert_eq!(t.server_tid.load(Ordering::Acquire), s1_tid);
            if raw {
                // Block on S1 through the raw hooks; SIGUSR2 ends the wake hook's wait (H5):
                // IDLE and queued, in user space; then wait in umcg_wait while queued.
                kernel::block_begin().unwrap();
                wait_for("the test to unblock", || unblock.load(Ordering::Acquire));
                kernel::block_end().unwrap();
                assert_eq!(t.load_state().state(), TaskState::Idle, "H5: IDLE");
                h5.store(true, Ordering::Release);
                t.next_tid.store(0, Ordering::Release);
                worker_wait_once(t).expect("a queued worker's wait is not ended by S1 leaving");
            } else {
                kernel::blocking(|| {
                    wait_for("the test to unblock", || unblock.load(Ordering::Acquire));
                })
                .unwrap();
            }
            assert_eq!(t.load_state(), StateWord(UMCG_TASK_RUNNING));
            assert_ne!(t.server_tid.load(Ordering::Acquire), s1_tid);
            w.exit();
        })
    };
    let workers = [spawn_worker(false), spawn_worker(true)];
    wait_for("S1 to run both workers", || {
        ran.load(Ordering::Acquire) == 2
    });
    // Both unblock while S1 is busy (not idle: nobody is woken) and are queued.
    unblock.store(true, Ordering::Release);
    let queued = |a: usize| {
        // SAFETY: worker tasks are leaked by the harness.
        let t: &UmcgTask = unsafe { &*std::ptr::with_exposed_provenance(a) };
        t.idle_workers_ptr.load(Ordering::Acquire) != g.idle_workers.addr()
    };
    let all_queued = || tasks.lock().unwrap().iter().all(|&a| queued(a));
    wait_for("both workers queued on the idle-worker list", all_queued);
    // The raw-hook worker sleeps in the wake hook until a signal ends that wait (H5); it
    // then waits in umcg_wait, still queued.
    interrupt_until(raw_tid.load(Ordering::Acquire), &h5);
    let all_tids: Vec<u32> = tids.lock().unwrap().clone();
    for &tid in &all_tids {
        common::wait_until_sleeping(tid);
    }
    assert!(all_queued(), "a signal made a worker leave the list");
    s1_leaves(leave, &go, &left, &mut s1);
    // S1 is gone; both are still queued and asleep (nobody ended their waits).
    for &tid in &all_tids {
        common::wait_until_sleeping(tid);
    }
    assert!(all_queued(), "S1 leaving took a worker off the list");
    let s2 = staying_server(&g, 2, limit);
    for w in workers {
        w.join().unwrap();
    }
    s2.join().unwrap();
    release.store(true, Ordering::Release);
    if let Some(h) = s1 {
        h.join().unwrap();
    }
    assert!(g.idle_workers.is_empty());
    assert_eq!(kernel::registered_tasks(), 0);
}

/// A server unregisters while two workers wait in its run queue (they get `ESRCH`), then
/// the same thread registers again (same TID) and runs them; when they yield to it again,
/// their wait must not end with `ESRCH`: the departure of the first registration says
/// nothing about the second (found by this test: the flag a leaving server sets on its
/// waiters was kept and matched the same TID in a later wait). Both idle-wakeup modes.
#[test]
fn server_reregisters_after_leaving() {
    let _s = serial();
    in_both_modes(|mode| {
        const WORKERS: usize = 2;
        let limit = Duration::from_secs(10);
        let g = Group::new();
        let _wd = watchdog(
            "a server re-registering",
            Duration::from_secs(30),
            Arc::new(move || format!("{mode:?}: registered {}", kernel::registered_tasks())),
        );
        let go = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::<usize>::new()));
        // Workers about to exit (both a yield and an exit hand the server back its CPU
        // IDLE|LOCKED; a yield clears LOCKED later, inside its umcg_wait).
        let exiting = Arc::new(Mutex::new(Vec::<usize>::new()));
        let (tx, rx) = mpsc::channel();
        let server = {
            let (g, go, held, exiting) = (g.clone(), go.clone(), held.clone(), exiting.clone());
            thread::spawn(move || {
                let s = Server::register(&g);
                announce(&s);
                tx.send(s.tid).unwrap();
                while held.lock().unwrap().len() < WORKERS {
                    g.drain_idle_workers();
                    let Some(w) = g.pop_runnable() else {
                        thread::sleep(Duration::from_micros(100));
                        continue;
                    };
                    let st = run_bounded(&s, w, limit).unwrap();
                    assert_eq!(st.state(), TaskState::Idle, "it yielded: {st:?}");
                    held.lock().unwrap().push(addr(w));
                }
                wait_for("the test to let S leave", || go.load(Ordering::Acquire));
                // SAFETY: unregister takes no pointer.
                let r = unsafe { kernel::umcg_ctl(UMCG_CTL_UNREGISTER, std::ptr::null_mut()) };
                assert_eq!(r, Ok(kernel::Ctl::Done));
                // Keep the first task allocated, and its Drop from unregistering the second.
                let tid = s.tid;
                std::mem::forget(s);
                let s = Server::register(&g);
                assert_eq!(s.tid, tid);
                announce(&s);
                // Run each worker until it exits; a yield puts it back on the run queue.
                let mut exited = 0;
                let mut yields = 0;
                while exited < WORKERS {
                    s.wait_for_workers(Instant::now() + limit);
                    while let Some(w) = g.pop_runnable() {
                        wait_for("a yielded worker to clear LOCKED", || {
                            !w.load_state().is_locked()
                        });
                        let st = run_bounded(&s, w, limit).unwrap();
                        assert_eq!(st.state(), TaskState::Idle, "{st:?}");
                        if exiting.lock().unwrap().contains(&addr(w)) {
                            exited += 1;
                        } else {
                            yields += 1;
                            g.runq.lock().unwrap().insert(0, addr(w));
                        }
                    }
                }
                assert_eq!(yields, WORKERS);
            })
        };
        let s_tid = rx.recv().unwrap();
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (g, exiting) = (g.clone(), exiting.clone());
                thread::spawn(move || {
                    let w = Worker::register(&g);
                    let t = w.task();
                    let yield_to_server = || {
                        t.store_state(StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
                        let s = announced_server(s_tid).unwrap();
                        let _ = s.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
                        t.next_tid.store(0, Ordering::Release);
                        worker_wait_once(t)
                    };
                    let r = yield_to_server();
                    assert_eq!(r, Err(UmcgError::Errno(Errno::ESRCH)), "its server left");
                    t.server_tid.store(0, Ordering::Release);
                    t.store_state(StateWord(UMCG_TASK_RUNNING));
                    worker_wait_once(t).unwrap();
                    assert_eq!(t.server_tid.load(Ordering::Acquire), s_tid, "same TID");
                    yield_to_server().expect("a yield to the re-registered server");
                    assert_eq!(t.load_state(), StateWord(UMCG_TASK_RUNNING));
                    exiting.lock().unwrap().push(addr(t));
                    w.exit();
                })
            })
            .collect();
        wait_for("S to hold both workers", || {
            held.lock().unwrap().len() == WORKERS
        });
        for &a in held.lock().unwrap().iter() {
            // SAFETY: worker tasks are leaked by the harness.
            let t: &UmcgTask = unsafe { &*std::ptr::with_exposed_provenance(a) };
            wait_for("a yielded worker to clear LOCKED", || {
                t.load_state() == StateWord(UMCG_TASK_IDLE)
            });
            common::wait_until_sleeping(tid_of(t));
        }
        go.store(true, Ordering::Release);
        for w in workers {
            w.join().unwrap();
        }
        server.join().unwrap();
        assert_eq!(kernel::registered_tasks(), 0);
    });
}

// ------------------------------------------------------------------------------------------
// Idle-wakeup fds closed or replaced by user space (eventfd mode)

/// Open fds of this process (`/proc/self/fd`, minus the directory's own fd).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count() - 1
}

/// Whether fd `fd` is open.
fn fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads the fd's flags.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    r != -1
}

/// What a [`FdServer`] is told to do.
enum FdCmd {
    /// Go IDLE and `umcg_wait(0, 0)` (retrying `EINTR`); report the result and the state.
    Wait,
    /// Unregister and end the thread.
    Unregister,
    /// End the thread registered.
    Exit,
}

/// A server thread driven by commands; the test is its waker.
struct FdServer {
    tid: u32,
    task: &'static UmcgTask,
    cmd: mpsc::Sender<FdCmd>,
    res: mpsc::Receiver<(Result<(), UmcgError>, StateWord)>,
    h: thread::JoinHandle<()>,
}

impl FdServer {
    fn start(g: &Arc<Group>) -> FdServer {
        let (cmd, cmd_rx) = mpsc::channel();
        let (res_tx, res) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        let g = g.clone();
        let h = thread::spawn(move || {
            let s = Server::register(&g);
            announce(&s);
            // The task outlives an exit. Kept reachable from a static: LeakSanitizer
            // (`ci/asan.sh`) reports a bare `Box::leak` that no live memory points to.
            static KEPT: Mutex<Vec<&'static Server>> = Mutex::new(Vec::new());
            let s: &'static Server = Box::leak(Box::new(s));
            KEPT.lock().unwrap().push(s);
            // SAFETY: leaked above: valid for the rest of the process.
            let task: &'static UmcgTask = unsafe { &*(&*s.task as *const UmcgTask) };
            tx.send((s.tid, task)).unwrap();
            for c in cmd_rx {
                match c {
                    FdCmd::Wait => {
                        task.store_state(StateWord(UMCG_TASK_IDLE));
                        let r = loop {
                            match kernel::umcg_wait(0, 0) {
                                Err(UmcgError::Errno(Errno::EINTR)) => {}
                                r => break r,
                            }
                        };
                        res_tx.send((r, task.load_state())).unwrap();
                    }
                    FdCmd::Unregister => {
                        // SAFETY: unregister takes no pointer.
                        let r =
                            unsafe { kernel::umcg_ctl(UMCG_CTL_UNREGISTER, std::ptr::null_mut()) };
                        assert_eq!(r, Ok(kernel::Ctl::Done));
                        return;
                    }
                    FdCmd::Exit => return,
                }
            }
        });
        let (tid, task) = rx.recv().unwrap();
        FdServer {
            tid,
            task,
            cmd,
            res,
            h,
        }
    }

    /// Start an idle wait and return once the server sleeps in it.
    fn idle(&self) {
        self.cmd.send(FdCmd::Wait).unwrap();
        wait_for("the server to go IDLE", || {
            self.task.load_state() == StateWord(UMCG_TASK_IDLE)
        });
        common::wait_until_sleeping(self.tid);
    }

    /// Make it RUNNING and wake it (as a worker's wake hook would).
    fn wake(&self) {
        self.task
            .cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
            .unwrap();
        kernel::wake(self.tid).unwrap();
    }

    /// The result of the idle wait (bounded: a lost wake fails the test).
    fn result(&self) -> (Result<(), UmcgError>, StateWord) {
        self.res
            .recv_timeout(Duration::from_secs(20))
            .expect("the server's wait never returned (lost wakeup)")
    }

    fn end(self, how: FdCmd) {
        self.cmd.send(how).unwrap();
        self.h.join().unwrap();
    }
}

fn is_idle_fd_broken(r: &Result<(), UmcgError>) -> bool {
    matches!(
        r,
        Err(UmcgError::Violation(kernel::Violation {
            kind: kernel::ViolationKind::IdleFdBroken(_),
            ..
        }))
    )
}

/// After the fds are found broken: the server sleeps on its futex and a wake still reaches
/// it (twice, to see that the fallback lasts).
fn assert_futex_fallback(s: &FdServer) {
    for _ in 0..2 {
        s.idle();
        s.wake();
        let (r, st) = s.result();
        assert_eq!(r, Ok(()), "after the report, waits work on the futex");
        assert_eq!(st, StateWord(UMCG_TASK_RUNNING));
    }
}

/// Eventfd idle-wakeup mode, user space closes or replaces a server's fds while it sleeps
/// idle (module doc of `kernel`, "Idle-wakeup fds that user space closes"):
///
/// 1. The eventfd closed: the waker's write fails, the server (asleep in `epoll_wait`, its
///    set now empty) finds out at its periodic check: its wait ends with `IdleFdBroken`,
///    RUNNING (the wake was late, not lost). Later waits and wakes use the futex. On
///    unregistration the epoll fd is not closed (its number is not proven ours any more).
/// 2. A pipe `dup2`ed over the eventfd's number: the one wake written before the detection
///    lands in the pipe (documented), the server detects the replacement (`ENOENT`) and is
///    RUNNING; no later wake writes to the pipe, and unregistration does not close it.
/// 3. The epoll fd closed while the server sleeps in it: that wait completes normally (the
///    sleeping call holds the instance), the next one reports `IdleFdBroken` at once, still
///    IDLE, and the futex takes over.
#[test]
fn idle_fd_closed_or_replaced() {
    let _s = serial();
    let was = kernel::idle_wakeup();
    wait_for("no task registered", || kernel::registered_tasks() == 0);
    kernel::set_idle_wakeup(IdleWakeup::EventFd).unwrap();
    let _wd = watchdog(
        "the closed-fd scenarios",
        Duration::from_secs(40),
        Arc::new(|| format!("registered {}", kernel::registered_tasks())),
    );
    let g = Group::new();

    // 1. The eventfd closed.
    let s = FdServer::start(&g);
    let (efd, epfd) = kernel::idle_fds(s.tid).expect("eventfd mode");
    s.idle();
    // SAFETY: closing the emulator's eventfd on purpose (the fault under test).
    assert_eq!(unsafe { libc::close(efd) }, 0);
    s.wake();
    let (r, st) = s.result();
    assert!(is_idle_fd_broken(&r), "closed eventfd: {r:?}");
    assert_eq!(st, StateWord(UMCG_TASK_RUNNING), "the wake was not lost");
    assert_futex_fallback(&s);
    s.end(FdCmd::Unregister);
    assert!(fd_open(epfd), "the epoll fd is left open (not proven ours)");
    // SAFETY: the leaked epoll fd; nothing uses it any more.
    unsafe { libc::close(epfd) };

    // 2. A pipe dup2ed over the eventfd's number.
    let s = FdServer::start(&g);
    let (efd, epfd) = kernel::idle_fds(s.tid).expect("eventfd mode");
    let (pr, pw) = std::io::pipe().unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: O_NONBLOCK on our pipe's read end (only flags change).
        unsafe { libc::fcntl(pr.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    }
    let pipe_bytes = || {
        use std::io::Read;
        let mut b = [0u8; 64];
        match (&pr).read(&mut b) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{e}"),
        }
    };
    s.idle();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: replacing the emulator's eventfd number with our pipe (the fault under test).
        assert_eq!(unsafe { libc::dup2(pw.as_raw_fd(), efd) }, efd);
    }
    s.wake();
    let (r, st) = s.result();
    assert_eq!(
        r,
        Err(UmcgError::Violation(kernel::Violation {
            kind: kernel::ViolationKind::IdleFdBroken(Errno::ENOENT),
            tid: s.tid,
            other_tid: 0,
            state: None,
        })),
        "replaced eventfd"
    );
    assert_eq!(st, StateWord(UMCG_TASK_RUNNING), "the wake was not lost");
    assert_eq!(
        pipe_bytes(),
        8,
        "the wake before the detection went to the pipe"
    );
    assert_futex_fallback(&s);
    assert_eq!(
        pipe_bytes(),
        0,
        "no write reached the pipe after the detection"
    );
    s.end(FdCmd::Unregister);
    assert!(
        fd_open(efd),
        "the emulator closed the pipe behind its old number"
    );
    assert!(fd_open(epfd));
    // SAFETY: our dup of the pipe and the leaked epoll fd; nothing uses them any more.
    unsafe {
        libc::close(efd);
        libc::close(epfd);
    }
    drop((pr, pw));

    // 3. The epoll fd closed while the server sleeps in it.
    let s = FdServer::start(&g);
    let (efd, epfd) = kernel::idle_fds(s.tid).expect("eventfd mode");
    s.idle();
    // SAFETY: closing the emulator's epoll fd on purpose (the fault under test).
    assert_eq!(unsafe { libc::close(epfd) }, 0);
    s.wake();
    let (r, st) = s.result();
    assert_eq!(r, Ok(()), "the sleeping epoll_wait still held the instance");
    assert_eq!(st, StateWord(UMCG_TASK_RUNNING));
    s.cmd.send(FdCmd::Wait).unwrap();
    let (r, st) = s.result();
    assert_eq!(
        r,
        Err(UmcgError::Violation(kernel::Violation {
            kind: kernel::ViolationKind::IdleFdBroken(Errno::EBADF),
            tid: s.tid,
            other_tid: 0,
            state: None,
        })),
        "closed epoll fd"
    );
    assert_eq!(
        st,
        StateWord(UMCG_TASK_IDLE),
        "reported at once, before any wake"
    );
    s.task.store_state(StateWord(UMCG_TASK_RUNNING));
    assert_futex_fallback(&s);
    s.end(FdCmd::Exit);
    wait_for("the server's exit cleanup", || {
        kernel::registered_tasks() == 0
    });
    assert!(fd_open(efd), "the eventfd is left open (not proven ours)");
    // SAFETY: the leaked eventfd; nothing uses it any more.
    unsafe { libc::close(efd) };

    kernel::set_idle_wakeup(was).unwrap();
}

/// Eventfd idle-wakeup mode: every server's eventfd and epoll fd are closed when it
/// unregisters or exits registered (deleted from the epoll set first): the process's fd
/// count is back where it was.
#[test]
fn idle_fds_closed_on_unregister_and_exit() {
    let _s = serial();
    let was = kernel::idle_wakeup();
    wait_for("no task registered", || kernel::registered_tasks() == 0);
    kernel::set_idle_wakeup(IdleWakeup::EventFd).unwrap();
    let g = Group::new();
    let before = open_fds();
    let servers: Vec<FdServer> = (0..4).map(|_| FdServer::start(&g)).collect();
    assert_eq!(open_fds(), before + 2 * servers.len(), "two fds per server");
    for (i, s) in servers.into_iter().enumerate() {
        // Each has slept and been woken once through its fds.
        s.idle();
        s.wake();
        assert_eq!(s.result().0, Ok(()));
        s.end(if i % 2 == 0 {
            FdCmd::Unregister
        } else {
            FdCmd::Exit
        });
    }
    wait_for("every server's cleanup", || kernel::registered_tasks() == 0);
    assert_eq!(open_fds(), before, "fds leaked by unregistration or exit");
    kernel::set_idle_wakeup(was).unwrap();
}

// ------------------------------------------------------------------------------------------
// Memory pressure: thread creation that fails

/// Run `f` in a forked child and return its exit code: `f`'s value, 101 if it panicked
/// (the message goes to the inherited stderr). A child killed by a signal (a crash) fails
/// the test. The child starts with one thread, the caller's; it leaves with `_exit`.
fn in_child(what: &str, f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: fork in a process whose other threads hold no lock the child needs (the tests
    // run one at a time; malloc is fork-safe in glibc, the emulator resets its registry).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
            // The harness's output capture dies with the child: print straight to fd 2.
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            raw_eprint(&format!("{what}: the child panicked: {msg}\n"));
            101
        });
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
    assert!(
        !libc::WIFSIGNALED(status),
        "{what}: the child crashed with signal {}",
        libc::WTERMSIG(status)
    );
    libc::WEXITSTATUS(status)
}

/// `setrlimit(RLIMIT_AS)` soft limit (the hard limit is left alone, so it can be raised
/// back); `None` = unlimited.
fn set_as_limit(bytes: Option<u64>) {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut cur) }, 0);
    cur.rlim_cur = bytes.map_or(cur.rlim_max, |b| b.min(cur.rlim_max));
    // SAFETY: valid in-pointer.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &cur) }, 0);
}

/// The process's mapped address space (`VmSize` of `/proc/self/status`), bytes.
fn vm_size() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn threads() -> usize {
    process_tids().len()
}

/// Spawning when no worker thread can be created (its stack cannot be mapped): `try_spawn`
/// returns [`umcg_runtime::Error::Spawn`], `spawn`'s handle returns a (non-panic) error from
/// `join`, nothing is left registered or running, and the runtime still works and shuts
/// down. In a forked child: a 1 PiB worker stack (more than the address space; the same
/// `pthread_create` failure as the thread limit or `vm.max_map_count`), then `RLIMIT_AS` just
/// above the child's current size.
#[test]
fn worker_creation_fails_with_an_error() {
    let _s = serial();
    let code = in_child("a 1 PiB worker stack", || {
        let rt = Runtime::builder()
            .servers(1)
            .time_slice(None)
            .worker_stack_size(1 << 50)
            .build()
            .unwrap();
        let threads0 = threads();
        match rt.try_spawn(|| 1) {
            Err(umcg_runtime::Error::Spawn(_)) => {}
            r => panic!("try_spawn: {:?}", r.map(|_| ())),
        }
        let e = rt.spawn(|| 1).join().unwrap_err();
        assert!(!e.is_panic(), "{e}");
        assert!(
            e.to_string().contains("no worker thread could be started"),
            "{e}"
        );
        assert_eq!(threads(), threads0, "a thread was left behind");
        assert_eq!(rt.live_workers(), 0);
        rt.shutdown().unwrap();
        assert_eq!(kernel::registered_tasks(), 0);
        0
    });
    assert_eq!(code, 0, "a 1 PiB worker stack");

    let code = in_child("RLIMIT_AS", || {
        // No pool: every spawn creates a thread. No spawn before the limit: a 16 MiB stack
        // freed by a finished worker would be cached and reused without a mapping.
        let rt = Runtime::builder()
            .servers(1)
            .time_slice(None)
            .worker_stack_size(16 << 20)
            .max_pooled_workers(0)
            .build()
            .unwrap();
        let threads0 = threads();
        // A 16 MiB stack no longer fits; small allocations still do.
        set_as_limit(Some(vm_size() + (4 << 20)));
        for _ in 0..3 {
            match rt.try_spawn(|| 1) {
                Err(umcg_runtime::Error::Spawn(e)) => {
                    assert!(
                        matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)),
                        "{e}"
                    )
                }
                r => panic!("try_spawn under RLIMIT_AS: {:?}", r.map(|_| ())),
            }
        }
        set_as_limit(None);
        assert_eq!(threads(), threads0);
        assert_eq!(rt.try_spawn(|| 6 * 7).unwrap().join().unwrap(), 42, "after");
        rt.shutdown().unwrap();
        assert_eq!(kernel::registered_tasks(), 0);
        0
    });
    assert_eq!(code, 0, "RLIMIT_AS");
}

/// The `RLIMIT_NPROC` at which this (single-threaded) process can create no thread: the
/// number of tasks its user already has, as the kernel counts them (probed, since `/proc`
/// may show tasks of other namespaces).
fn nproc_in_use() -> u64 {
    for l in 1..4096 {
        set_nproc_limit(Some(l));
        let r = thread::Builder::new().spawn(|| {});
        set_nproc_limit(None);
        if let Ok(h) = r {
            h.join().unwrap();
            wait_for("the probe thread to be reaped", || threads() == 1);
            return l - 1;
        }
    }
    panic!("RLIMIT_NPROC never allowed a thread");
}

/// `setrlimit(RLIMIT_NPROC)` soft limit; `None`: back to the hard limit.
fn set_nproc_limit(n: Option<u64>) {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut cur) }, 0);
    cur.rlim_cur = n.map_or(cur.rlim_max, |n| n.min(cur.rlim_max));
    // SAFETY: valid in-pointer.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &cur) }, 0);
}

/// `build` when a server thread cannot be created (the thread limit): it returns
/// [`umcg_runtime::Error::Spawn`], and the servers that did start are stopped and joined:
/// nothing registered, no thread left. In a forked child under `RLIMIT_NPROC` (root is exempt
/// from it, so a root child first becomes `nobody`): room for no server, then for one of two;
/// then, with the limit lifted, a runtime builds and runs a job.
#[test]
fn server_creation_fails_with_an_error() {
    let _s = serial();
    let code = in_child("server creation under RLIMIT_NPROC", || {
        // SAFETY: getuid/setgid/setuid in the single-threaded child.
        unsafe {
            if libc::getuid() == 0 && (libc::setgid(65534) != 0 || libc::setuid(65534) != 0) {
                return 77; // Cannot drop root: RLIMIT_NPROC would not apply.
            }
        }
        let in_use = nproc_in_use();
        for (servers, room) in [(1usize, 0u64), (2, 1)] {
            set_nproc_limit(Some(in_use + room));
            let r = Runtime::builder()
                .servers(servers)
                .pin_servers(false)
                .time_slice(None)
                .build();
            set_nproc_limit(None);
            match r {
                Err(umcg_runtime::Error::Spawn(e)) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}")
                }
                Err(e) => panic!("{servers} servers: {e}"),
                Ok(_) => panic!("{servers} servers with room for {room} threads: built"),
            }
            assert_eq!(kernel::registered_tasks(), 0, "a server left registered");
            assert_eq!(threads(), 1, "a server thread left running");
        }
        let rt = Runtime::builder()
            .servers(2)
            .time_slice(None)
            .build()
            .unwrap();
        assert_eq!(rt.spawn(|| 6 * 7).join().unwrap(), 42, "after");
        rt.shutdown().unwrap();
        0
    });
    if code == 77 {
        eprintln!("skipped: a root child could not become nobody (RLIMIT_NPROC)");
        return;
    }
    assert_eq!(code, 0, "server creation under RLIMIT_NPROC");
}
