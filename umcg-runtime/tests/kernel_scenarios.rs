//! Scenarios of spec §7.3 (v0.3 contract) against the emulated kernel, with real threads.
#![cfg(not(umcg_loom))]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use umcg_abi::*;
use umcg_runtime::kernel::{self, Ctl, UmcgError};
use umcg_runtime::sys::{self, Errno};

fn ctl(flags: u32, t: *const UmcgTask) -> Result<Ctl, UmcgError> {
    // SAFETY: tests pass either null, garbage that the checks must reject, or tasks that
    // outlive their registration.
    unsafe { kernel::umcg_ctl(flags, t as *mut UmcgTask) }
}

fn errno(e: Errno) -> Result<Ctl, UmcgError> {
    Err(UmcgError::Errno(e))
}

/// §7.3 item 18 and the errno rows of §2.3/§2.4, on a fresh thread each.
#[test]
fn registration_and_wait_errnos() {
    init();
    thread::spawn(|| {
        // Unregister without registering; wait without registering.
        assert_eq!(
            ctl(UMCG_CTL_UNREGISTER, std::ptr::null()),
            errno(Errno::EINVAL)
        );
        assert_eq!(
            kernel::umcg_wait(0, 0),
            Err(UmcgError::Errno(Errno::EINVAL))
        );
        let s = Box::new(UmcgTask::new_server());
        // Flags: no REGISTER; unknown bits; UNREGISTER with other bits.
        assert_eq!(ctl(0, &*s), errno(Errno::EINVAL));
        assert_eq!(ctl(UMCG_CTL_REGISTER | 0x40, &*s), errno(Errno::EINVAL));
        assert_eq!(
            ctl(UMCG_CTL_UNREGISTER | UMCG_CTL_WORKER, std::ptr::null()),
            errno(Errno::EINVAL)
        );
        // Bad pointers: NULL, misaligned, unmapped.
        assert_eq!(
            ctl(UMCG_CTL_REGISTER, std::ptr::null()),
            errno(Errno::EFAULT)
        );
        let misaligned = (&*s as *const UmcgTask).wrapping_byte_add(8);
        assert_eq!(ctl(UMCG_CTL_REGISTER, misaligned), errno(Errno::EFAULT));
        let unmapped = std::ptr::with_exposed_provenance::<UmcgTask>(64);
        assert_eq!(ctl(UMCG_CTL_REGISTER, unmapped), errno(Errno::EFAULT));
        // api_version != 1 returns +1.
        s.api_version.store(7, Ordering::Relaxed);
        assert_eq!(
            ctl(UMCG_CTL_REGISTER, &*s),
            Ok(Ctl::UnsupportedApiVersion(1))
        );
        s.api_version.store(1, Ordering::Relaxed);
        // server_tid / next_tid must be 0.
        s.next_tid.store(5, Ordering::Relaxed);
        assert_eq!(ctl(UMCG_CTL_REGISTER, &*s), errno(Errno::EINVAL));
        s.next_tid.store(0, Ordering::Relaxed);
        s.server_tid.store(5, Ordering::Relaxed);
        assert_eq!(ctl(UMCG_CTL_REGISTER, &*s), errno(Errno::EINVAL));
        s.server_tid.store(0, Ordering::Relaxed);
        // Server state must be exactly RUNNING; worker state exactly IDLE.
        s.store_state(StateWord(UMCG_TASK_IDLE));
        assert_eq!(ctl(UMCG_CTL_REGISTER, &*s), errno(Errno::EINVAL));
        s.store_state(StateWord(UMCG_TASK_RUNNING | 0x0100_0000));
        assert_eq!(ctl(UMCG_CTL_REGISTER, &*s), errno(Errno::EINVAL));
        let w = Box::new(UmcgTask::new_worker(0, 8));
        w.store_state(StateWord(UMCG_TASK_RUNNING));
        assert_eq!(
            ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, &*w),
            errno(Errno::EINVAL)
        );
        // A good registration; a second one fails; unregister with a pointer fails.
        s.store_state(StateWord(UMCG_TASK_RUNNING));
        assert_eq!(ctl(UMCG_CTL_REGISTER, &*s), Ok(Ctl::Done));
        assert_eq!(ctl(UMCG_CTL_REGISTER, &*s), errno(Errno::EINVAL));
        assert_eq!(ctl(UMCG_CTL_UNREGISTER, &*s), errno(Errno::EINVAL));
        // umcg_wait: WAKE_ONLY checks.
        assert_eq!(
            kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0),
            Err(UmcgError::Errno(Errno::EINVAL))
        );
        s.next_tid.store(sys::gettid(), Ordering::Relaxed);
        assert_eq!(
            kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 1),
            Err(UmcgError::Errno(Errno::EINVAL))
        );
        assert_eq!(
            kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY | 4, 0),
            Err(UmcgError::Errno(Errno::EINVAL))
        );
        assert_eq!(
            kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY | UMCG_WAIT_WF_CURRENT_CPU, 0),
            Ok(())
        );
        // WAKE_ONLY of a thread that is not a UMCG task: ESRCH.
        s.next_tid.store(1, Ordering::Relaxed);
        assert_eq!(
            kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0),
            Err(UmcgError::Errno(Errno::ESRCH))
        );
        // Context switch to a TID that does not exist: ESRCH.
        s.next_tid.store(0x7fff_fff0, Ordering::Relaxed);
        assert_eq!(kernel::umcg_wait(0, 0), Err(UmcgError::Errno(Errno::ESRCH)));
        s.next_tid.store(0, Ordering::Relaxed);
        // A server that waits with a timeout in the past: ETIMEDOUT, still IDLE.
        s.store_state(StateWord(UMCG_TASK_IDLE));
        assert_eq!(
            kernel::umcg_wait(0, 1),
            Err(UmcgError::Errno(Errno::ETIMEDOUT))
        );
        assert_eq!(s.load_state(), StateWord(UMCG_TASK_IDLE));
        s.store_state(StateWord(UMCG_TASK_RUNNING));
        assert_eq!(ctl(UMCG_CTL_UNREGISTER, std::ptr::null()), Ok(Ctl::Done));
        assert_eq!(
            ctl(UMCG_CTL_UNREGISTER, std::ptr::null()),
            errno(Errno::EINVAL)
        );
    })
    .join()
    .unwrap();
}

/// One server runs 4 workers that block (bracketed sleeps), yield, and exit; every worker
/// finishes and the server sees each block as BLOCKED and each yield as IDLE.
#[test]
fn one_server_four_workers_block_and_yield() {
    init();
    const WORKERS: usize = 4;
    const ROUNDS: u32 = 25;
    // Why a worker last left the CPU. Its state alone cannot tell: a worker that blocked
    // and already unblocked is IDLE (queued) just like one that yielded (not queued).
    const BLOCK: u32 = 1;
    const YIELD: u32 = 2;
    const EXIT: u32 = 3;
    let group = Group::new();
    let reason: Arc<Vec<AtomicU32>> = Arc::new((0..WORKERS).map(|_| AtomicU32::new(0)).collect());
    let blocks_seen = Arc::new(AtomicU32::new(0));

    let g = group.clone();
    let (rs, bs) = (reason.clone(), blocks_seen.clone());
    let server = thread::spawn(move || {
        let s = Server::register(&g);
        announce(&s);
        let deadline = Instant::now() + WATCHDOG;
        let mut done = 0;
        let mut by_task: HashMap<usize, usize> = HashMap::new();
        while done < WORKERS {
            s.wait_for_workers(deadline);
            while let Some(w) = g.pop_runnable() {
                let st = s.run(w).expect("run");
                let idx = *by_task
                    .entry((w as *const UmcgTask).expose_provenance())
                    .or_insert_with(|| tid_index(w));
                match rs[idx].load(Ordering::Acquire) {
                    // Blocked: BLOCKED, or already IDLE and queued again; it comes back
                    // through the idle-worker list.
                    BLOCK => {
                        assert!(
                            st.state() == TaskState::Blocked
                                || (st.state() == TaskState::Idle && !st.is_locked()),
                            "blocked worker came back {st:?}"
                        );
                        bs.fetch_add(1, Ordering::Relaxed);
                    }
                    YIELD => {
                        assert_eq!(st.state(), TaskState::Idle, "yielded worker {st:?}");
                        g.runq
                            .lock()
                            .unwrap()
                            .insert(0, (w as *const UmcgTask).expose_provenance());
                    }
                    EXIT => {
                        assert_eq!(st.state(), TaskState::Idle, "exited worker {st:?}");
                        done += 1;
                    }
                    r => panic!("worker came back with reason {r} in state {st:?}"),
                }
            }
        }
    });

    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            let g = group.clone();
            let rs = reason.clone();
            thread::spawn(move || {
                let w = Worker::register(&g);
                register_index(w.task(), i);
                for _ in 0..ROUNDS {
                    rs[i].store(BLOCK, Ordering::Release);
                    kernel::blocking(|| thread::sleep(Duration::from_micros(200))).unwrap();
                    assert_eq!(w.task().load_state().state(), TaskState::Running);
                    rs[i].store(YIELD, Ordering::Release);
                    w.yield_to_server();
                    assert_eq!(w.task().load_state().state(), TaskState::Running);
                }
                rs[i].store(EXIT, Ordering::Release);
                w.exit();
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    server.join().unwrap();
    assert_eq!(blocks_seen.load(Ordering::Relaxed), WORKERS as u32 * ROUNDS);
}

static INDEX: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

fn register_index(t: &UmcgTask, i: usize) {
    INDEX
        .lock()
        .unwrap()
        .push(((t as *const UmcgTask).expose_provenance(), i));
}

fn tid_index(t: &UmcgTask) -> usize {
    let a = (t as *const UmcgTask).expose_provenance();
    let deadline = Instant::now() + WATCHDOG;
    loop {
        if let Some(&(_, i)) = INDEX.lock().unwrap().iter().find(|(x, _)| *x == a) {
            return i;
        }
        assert!(Instant::now() < deadline);
        thread::yield_now();
    }
}

/// §7.3 item 21 and the v0.3 list semantics (item 27): a blocked worker that unblocks is
/// queued exactly once, and exactly one idle server is popped (marked, made RUNNING and
/// woken) while the other stays idle on the list.
#[test]
fn unblock_pops_exactly_one_idle_server() {
    init();
    let group = Group::new();
    let g = group.clone();
    let release = Arc::new(AtomicBool::new(false));
    let rel = release.clone();
    // Worker: registers, blocks until released, then exits.
    let worker = thread::spawn(move || {
        let w = Worker::register(&g);
        kernel::blocking(|| {
            let t0 = Instant::now();
            while !rel.load(Ordering::Acquire) {
                assert!(t0.elapsed() < WATCHDOG);
                thread::sleep(Duration::from_micros(100));
            }
        })
        .unwrap();
        w.exit();
    });
    // Server A runs the worker once, sees it BLOCKED, then both servers go idle.
    let popped = Arc::new(AtomicU32::new(0));
    // Server B starts only once A has run the worker into its block, so that the worker's
    // first run is A's.
    let a_ran = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = (0..2)
        .map(|i| {
            let g = group.clone();
            let popped = popped.clone();
            let a_ran = a_ran.clone();
            if i == 1 {
                let t0 = Instant::now();
                while !a_ran.load(Ordering::Acquire) {
                    assert!(t0.elapsed() < WATCHDOG);
                    thread::sleep(Duration::from_micros(100));
                }
            }
            thread::spawn(move || {
                let s = Server::register(&g);
                announce(&s);
                let deadline = Instant::now() + WATCHDOG;
                if i == 0 {
                    s.wait_for_workers(deadline);
                    let w = g.pop_runnable().unwrap();
                    assert_eq!(s.run(w).unwrap().state(), TaskState::Blocked);
                    // Worker blocked, server A RUNNING again (item 20).
                    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_RUNNING));
                    a_ran.store(true, Ordering::Release);
                }
                // Both go idle; exactly one is popped by the unblock.
                if s.wait_for_workers(deadline) > 0 {
                    popped.fetch_add(1, Ordering::SeqCst);
                    let w = g.pop_runnable().unwrap();
                    assert_eq!(w.load_state().state(), TaskState::Idle);
                    let st = s.run(w).unwrap();
                    assert!(st.is_locked(), "worker exits LOCKED");
                }
                s
            })
        })
        .collect();
    // Let both servers reach the idle list, then release the worker.
    let t0 = Instant::now();
    loop {
        let n = count_idle_servers(&group);
        if n == 2 {
            break;
        }
        assert!(t0.elapsed() < WATCHDOG, "servers never went idle ({n})");
        thread::sleep(Duration::from_micros(200));
    }
    release.store(true, Ordering::Release);
    worker.join().unwrap();
    // One server was popped and ran the worker; the other is still idle on the list.
    let t0 = Instant::now();
    while popped.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < WATCHDOG);
        thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(count_idle_servers(&group), 1);
    // Release the remaining idle server: pop it as the kernel would (mark, IDLE=>RUNNING)
    // and wake it with WAKE_ONLY from a registered helper; `stop` makes it return.
    group.stop.store(true, Ordering::Release);
    release_idle_servers(&group);
    for s in servers {
        drop(s.join().unwrap());
    }
    assert_eq!(popped.load(Ordering::SeqCst), 1);
}

fn count_idle_servers(g: &Group) -> usize {
    // Live (unmarked) nodes on the idle-server list.
    let mut n = 0;
    let mut cur = g.idle_servers.head_word();
    while cur != 0 {
        let task = std::ptr::with_exposed_provenance::<UmcgTask>(cur as usize - 16);
        // SAFETY: nodes are registered servers' tasks, alive during the test.
        let link = unsafe { &*task }.idle_servers_ptr.load(Ordering::Acquire);
        if link & 1 == 0 {
            n += 1;
        }
        cur = link & !1;
    }
    n
}

/// Pop every idle server as the kernel does and wake it (via a registered server thread's
/// WAKE_ONLY).
fn release_idle_servers(g: &Arc<Group>) {
    let g = g.clone();
    thread::spawn(move || {
        let me = Server::register(&g);
        while let umcg_abi::idle_servers::Pop::Got(node) = g.idle_servers.pop(64) {
            // SAFETY: registered server's task, alive until it is joined.
            let t = unsafe { &*node.task() };
            t.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
                .expect("idle server");
            me.task
                .next_tid
                .store(t.server_tid.load(Ordering::Acquire), Ordering::Release);
            kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0).unwrap();
        }
        me.task.next_tid.store(0, Ordering::Release);
    })
    .join()
    .unwrap();
}

/// The Tor KIST lesson: a worker that is woken while it is already queued must never be
/// queued twice.
///
/// The worker blocks and unblocks while its server is busy: it is queued (IDLE) and waits
/// in the wake hook. A signal ends that wait (hazard H5): it returns to user space still
/// queued, and waits again in `umcg_wait`. Now a `WAKE_ONLY` aimed at it makes its idle loop
/// run the wake hook, which would push it a second time. The list must hold it once.
#[test]
fn woken_while_queued_is_not_queued_twice() {
    init();
    extern "C" fn on_sigusr2(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    // SAFETY: the handler does nothing (async-signal-safe).
    unsafe { sys::signal::install_handler(sys::signal::Signal::SIGUSR2, on_sigusr2) }.unwrap();

    let group = Group::new();
    let g = group.clone();
    let interrupted = Arc::new(AtomicBool::new(false));
    let intr = interrupted.clone();
    let worker = thread::spawn(move || {
        let w = Worker::register(&g);
        // Unblocks while the server is busy: queued, nobody popped. The hook's wait is
        // then ended by SIGUSR2 (H5). The raw hooks keep v0.3's H5 behaviour (the
        // `kernel::blocking` helper would wait on instead).
        kernel::block_begin().unwrap();
        thread::sleep(Duration::from_millis(1));
        kernel::block_end().unwrap();
        assert_eq!(
            w.task().load_state().state(),
            TaskState::Idle,
            "H5: back in user space IDLE"
        );
        intr.store(true, Ordering::Release);
        // Wait again, as user space must after H5; it returns once a server runs it.
        loop {
            match kernel::umcg_wait(0, 0) {
                Ok(()) => break,
                Err(UmcgError::Errno(Errno::EINTR)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        w.exit();
    });
    let s = Server::register(&group);
    announce(&s);
    let deadline = Instant::now() + WATCHDOG;
    s.wait_for_workers(deadline);
    let w = group.pop_runnable().unwrap();
    let wtid = tid_of(w);
    assert_eq!(s.run(w).unwrap().state(), TaskState::Blocked);
    // Wait until the worker has queued itself and sleeps in the hook; interrupt it.
    while group.idle_workers.is_empty() {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_micros(100));
    }
    while !interrupted.load(Ordering::Acquire) {
        wait_until_sleeping(wtid);
        sys::tgkill(wtid, sys::signal::Signal::SIGUSR2).unwrap();
        thread::sleep(Duration::from_micros(200));
        assert!(Instant::now() < deadline);
    }
    // Now it sleeps in umcg_wait, still queued. Wake it (each wake runs the hook).
    s.task.next_tid.store(wtid, Ordering::Release);
    for _ in 0..3 {
        wait_until_sleeping(wtid);
        kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0).unwrap();
    }
    wait_until_sleeping(wtid);
    s.task.next_tid.store(0, Ordering::Release);
    assert_eq!(
        group.drain_idle_workers(),
        1,
        "the worker was queued more than once"
    );
    let w = group.pop_runnable().unwrap();
    assert!(s.run(w).unwrap().is_locked());
    worker.join().unwrap();
}

/// Run `w` for at most `slice`: the server waits with a timeout (its tick) and kicks the
/// worker when the tick fires. Returns the worker's state once it is back (for a kicked
/// worker: IDLE|PREEMPTED and already on the idle-worker list).
fn run_with_slice(s: &Server, w: &UmcgTask, slice: Duration) -> StateWord {
    let t0 = Instant::now();
    while w.load_state().is_locked() {
        assert!(t0.elapsed() < WATCHDOG);
        thread::yield_now();
    }
    s.task.store_state(StateWord(UMCG_TASK_IDLE));
    w.server_tid.store(s.tid, Ordering::Release);
    // IDLE(|PREEMPTED)=>RUNNING, clearing PREEMPTED: the server acknowledges the kick.
    let cur = w.load_state();
    assert_eq!(cur.state(), TaskState::Idle);
    w.cas_word(
        cur,
        cur.with_state(TaskState::Running)
            .without_flags(UMCG_TF_PREEMPTED),
    )
    .unwrap();
    let wtid = tid_of(w);
    s.task.next_tid.store(wtid, Ordering::Release);
    let abs = sys::futex::realtime_now_ns() + slice.as_nanos() as u64;
    let r = kernel::umcg_wait(0, abs);
    s.task.next_tid.store(0, Ordering::Release);
    match r {
        Ok(()) => {}
        Err(UmcgError::Errno(Errno::ETIMEDOUT)) => {
            // Timed out, still IDLE: kick the worker and keep waiting. Whatever takes it off
            // the CPU (the kick, or a block or yield that raced with it) wakes us exactly
            // once; setting ourselves RUNNING here would let that wake land in our next idle
            // period instead.
            match kernel::umcg_kick(0, wtid) {
                Ok(()) | Err(UmcgError::Errno(Errno::EAGAIN)) => {}
                Err(e) => panic!("kick: {e}"),
            }
            loop {
                match kernel::umcg_wait(0, 0) {
                    Ok(()) => break,
                    Err(UmcgError::Errno(Errno::EINTR)) => {}
                    Err(e) => panic!("server wait after kick: {e}"),
                }
            }
        }
        Err(e) => panic!("server wait: {e}"),
    }
    assert_eq!(s.task.load_state(), StateWord(UMCG_TASK_RUNNING));
    w.load_state()
}

/// The illumos lesson, at the kernel level: one server, one worker that spins without ever
/// blocking or yielding, one worker that blocks and counts. With a time slice the counter
/// keeps advancing; the spinner is preempted (IDLE|PREEMPTED, queued by the kick) again and
/// again.
#[test]
fn kick_preempts_a_spinning_worker() {
    init();
    let group = Group::new();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU32::new(0));
    let spinner_exited = Arc::new(AtomicBool::new(false));
    let counter_exited = Arc::new(AtomicBool::new(false));
    const TARGET: u32 = 30;

    let spinner_tid = Arc::new(AtomicU32::new(0));
    let (g, st, ex, stid) = (
        group.clone(),
        stop.clone(),
        spinner_exited.clone(),
        spinner_tid.clone(),
    );
    let spinner = thread::spawn(move || {
        stid.store(sys::gettid(), Ordering::Release);
        let w = Worker::register(&g);
        let mut x = 0u64;
        while !st.load(Ordering::Relaxed) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            std::hint::black_box(x);
        }
        ex.store(true, Ordering::Release);
        w.exit();
    });
    let (g, c, st, ex) = (
        group.clone(),
        count.clone(),
        stop.clone(),
        counter_exited.clone(),
    );
    let counter = thread::spawn(move || {
        let w = Worker::register(&g);
        while c.load(Ordering::Relaxed) < TARGET {
            kernel::blocking(|| thread::sleep(Duration::from_micros(300))).unwrap();
            c.fetch_add(1, Ordering::Relaxed);
        }
        st.store(true, Ordering::Relaxed);
        ex.store(true, Ordering::Release);
        w.exit();
    });

    let s = Server::register(&group);
    announce(&s);
    let deadline = Instant::now() + WATCHDOG;
    let mut preempted = 0;
    let mut exited = 0;
    while exited < 2 {
        s.wait_for_workers(deadline);
        while let Some(w) = group.pop_runnable() {
            let st = run_with_slice(&s, w, Duration::from_millis(2));
            match st.state() {
                TaskState::Blocked => {}
                // The counter blocked, and its sleep ended before this server read its state
                // (a slow machine, e.g. under ASan): the wake hook already queued it. The
                // spinner never blocks, so it never comes back plain IDLE.
                TaskState::Idle
                    if !st.is_preempted()
                        && !st.is_locked()
                        && tid_of(w) != spinner_tid.load(Ordering::Acquire) => {}
                TaskState::Idle if st.is_preempted() => preempted += 1, // queued by the kick
                TaskState::Idle if st.is_locked() => exited += 1,
                other => panic!("worker came back {other:?} ({st:?})"),
            }
        }
    }
    spinner.join().unwrap();
    counter.join().unwrap();
    assert!(spinner_exited.load(Ordering::Acquire) && counter_exited.load(Ordering::Acquire));
    assert_eq!(count.load(Ordering::Relaxed), TARGET);
    assert!(preempted >= 1, "the spinner was never preempted");
}

/// `umcg_kick` errors: flags, unknown TID, a server, a worker that is not RUNNING.
#[test]
fn kick_errors() {
    init();
    let group = Group::new();
    let g = group.clone();
    let s = Server::register(&group);
    announce(&s);
    assert_eq!(
        kernel::umcg_kick(1, s.tid),
        Err(UmcgError::Errno(Errno::EINVAL))
    );
    assert_eq!(
        kernel::umcg_kick(0, 0x7fff_fff0),
        Err(UmcgError::Errno(Errno::ESRCH))
    );
    assert_eq!(
        kernel::umcg_kick(0, s.tid),
        Err(UmcgError::Errno(Errno::EINVAL))
    );
    let worker = thread::spawn(move || {
        let w = Worker::register(&g);
        kernel::blocking(|| thread::sleep(Duration::from_millis(1))).unwrap();
        w.exit();
    });
    s.wait_for_workers(Instant::now() + WATCHDOG);
    let w = group.pop_runnable().unwrap();
    let wtid = tid_of(w);
    // Queued, IDLE: not running user code.
    assert_eq!(
        kernel::umcg_kick(0, wtid),
        Err(UmcgError::Errno(Errno::EAGAIN))
    );
    // Blocked; or its 1 ms block already ended and it is queued again (IDLE, not LOCKED).
    let st = s.run(w).unwrap();
    assert!(
        st.state() == TaskState::Blocked || (st.state() == TaskState::Idle && !st.is_locked()),
        "{st:?}"
    );
    s.wait_for_workers(Instant::now() + WATCHDOG);
    let w = group.pop_runnable().unwrap();
    assert!(s.run(w).unwrap().is_locked());
    worker.join().unwrap();
}

/// fork in a registered server (spec §4.6, §7.3 item 29): the child is unregistered and may
/// register anew; the parent stays registered.
#[test]
fn fork_in_a_server() {
    init();
    thread::spawn(|| {
        let group = Group::new();
        let s = Server::register(&group);
        // SAFETY: the child uses the emulator (reset by its atfork handler) and leaves with
        // _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut code = 0;
            if kernel::umcg_wait(0, 0) != Err(UmcgError::Errno(Errno::EINVAL)) {
                code |= 1;
            }
            let t = Box::new(UmcgTask::new_server());
            if ctl(UMCG_CTL_REGISTER, &*t) != Ok(Ctl::Done) {
                code |= 2;
            }
            if ctl(UMCG_CTL_UNREGISTER, std::ptr::null()) != Ok(Ctl::Done) {
                code |= 4;
            }
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "child checks failed (bit mask)"
        );
        // The parent is still registered: a timed wait times out.
        s.task.store_state(StateWord(UMCG_TASK_IDLE));
        assert_eq!(
            kernel::umcg_wait(0, 1),
            Err(UmcgError::Errno(Errno::ETIMEDOUT))
        );
        s.task.store_state(StateWord(UMCG_TASK_RUNNING));
    })
    .join()
    .unwrap();
}

/// A kick that lands while a worker sleeps in the preemption path *outside* the signal
/// handler (a deferred kick taken at the end of a `no_preempt` section, where `SIGURG` is not
/// blocked) is only noted as pending by the handler. The worker must act on it once it is run
/// again, before returning to user code: the kicker saw RUNNING|PREEMPTED and gets `EAGAIN`
/// from then on, so a worker spinning with the kick forgotten would hold its server forever.
#[test]
fn kick_during_deferred_preemption_sleep_is_not_lost() {
    init();
    let group = Group::new();
    let ready = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (g, r, gg, st) = (group.clone(), ready.clone(), go.clone(), stop.clone());
    let spinner = thread::spawn(move || {
        let w = Worker::register(&g);
        kernel::no_preempt(|| {
            r.store(true, Ordering::Release);
            while !gg.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        });
        let mut x = 0u64;
        while !st.load(Ordering::Relaxed) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            std::hint::black_box(x);
        }
        w.exit();
    });
    let s = Server::register(&group);
    announce(&s);
    let deadline = Instant::now() + WATCHDOG;
    s.wait_for_workers(deadline);
    let w = group.pop_runnable().expect("the spinner");
    let wtid = tid_of(w);

    // Run it; once it is inside no_preempt, kick it (deferred), then let it leave the
    // section: the deferred kick preempts it there and wakes us.
    s.task.store_state(StateWord(UMCG_TASK_IDLE));
    w.server_tid.store(s.tid, Ordering::Release);
    w.transition(TaskState::Idle, TaskState::Running).unwrap();
    s.task.next_tid.store(wtid, Ordering::Release);
    let r = kernel::umcg_wait(0, sys::futex::realtime_now_ns() + 20_000_000);
    s.task.next_tid.store(0, Ordering::Release);
    assert_eq!(r, Err(UmcgError::Errno(Errno::ETIMEDOUT)));
    wait_for("the spinner inside no_preempt", || {
        ready.load(Ordering::Acquire)
    });
    assert_eq!(kernel::umcg_kick(0, wtid), Ok(()));
    go.store(true, Ordering::Release);
    server_wait(&s.task);
    let st = w.load_state();
    assert!(st.state() == TaskState::Idle && st.is_preempted(), "{st:?}");
    assert_eq!(group.drain_idle_workers(), 1);
    let w = group.pop_runnable().unwrap();

    // It sleeps in the preemption path, outside the handler. Make it RUNNING without
    // waking it and kick at once: the signal interrupts its sleep while it is still inside
    // the emulator, so the handler only notes the kick.
    wait_until_sleeping(wtid);
    s.task.store_state(StateWord(UMCG_TASK_IDLE));
    w.server_tid.store(s.tid, Ordering::Release);
    let cur = w.load_state();
    w.cas_word(
        cur,
        cur.with_state(TaskState::Running)
            .without_flags(UMCG_TF_PREEMPTED),
    )
    .unwrap();
    assert_eq!(kernel::umcg_kick(0, wtid), Ok(()));
    // The pending kick must preempt it as soon as it is back: it wakes us (IDLE=>RUNNING).
    let r = kernel::umcg_wait(0, sys::futex::realtime_now_ns() + 5_000_000_000);
    assert_eq!(r, Ok(()), "the pending kick was lost: {:?}", w.load_state());
    let st = w.load_state();
    assert!(st.state() == TaskState::Idle && st.is_preempted(), "{st:?}");

    // Let it finish.
    stop.store(true, Ordering::Relaxed);
    assert_eq!(group.drain_idle_workers(), 1);
    let w = group.pop_runnable().unwrap();
    let st = s.run(w).unwrap();
    assert!(st.is_locked(), "{st:?}");
    spinner.join().unwrap();
}
