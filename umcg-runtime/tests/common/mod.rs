//! A minimal v0.3 user-space scheduler for tests: the canonical sequences of spec §2.6,
//! written directly against the emulated system calls.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use umcg_abi::idle_servers::{IdleServerList, Remove};
use umcg_abi::idle_workers::IdleWorkerHead;
use umcg_abi::*;
use umcg_runtime::kernel::{self, Ctl, OnViolation, UmcgError};
use umcg_runtime::sys;

/// A generous bound that turns a lost wakeup into a test failure instead of a hang.
pub const WATCHDOG: Duration = Duration::from_secs(20);

/// Per-test setup: violations come back as errors, and a process-wide watchdog aborts the
/// test binary if it runs far longer than it ever should (a worker or server thread that
/// panicked can leave its peers waiting in `umcg_wait` forever; this turns that into a
/// failure instead of a hang).
pub fn init() {
    kernel::set_violation_policy(OnViolation::ReturnError);
    watchdog("test", Duration::from_secs(240));
}

/// Start, once per test binary, a thread that aborts the binary after `limit`: a stuck
/// runtime or scheduler (a lost wakeup, or a thread that panicked and left its peers
/// waiting in `umcg_wait`) fails the run instead of hanging it.
pub fn watchdog(binary: &'static str, limit: Duration) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            eprintln!(
                "{binary} watchdog: this test binary ran for {} s; a thread is stuck (see the panics above); aborting",
                limit.as_secs()
            );
            std::process::abort();
        });
    });
}

/// The user-space half of a scheduling group: the two list heads every task points at.
#[derive(Debug)]
pub struct Group {
    pub idle_workers: IdleWorkerHead,
    pub idle_servers: IdleServerList,
    /// Workers taken from the kernel list but not yet run (user-space run queue).
    pub runq: Mutex<Vec<usize>>,
    /// Set to make idle servers return from `wait_for_workers` once woken.
    pub stop: AtomicBool,
}

impl Group {
    pub fn new() -> Arc<Group> {
        Arc::new(Group {
            idle_workers: IdleWorkerHead::new(),
            idle_servers: IdleServerList::new(),
            runq: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    pub fn new_worker_task(&self) -> Box<UmcgTask> {
        Box::new(UmcgTask::new_worker(
            self.idle_servers.head_addr(),
            self.idle_workers.addr(),
        ))
    }

    /// Move everything on the kernel's idle-worker list to the run queue (resetting each
    /// worker's dual-use field). Returns how many were taken.
    pub fn drain_idle_workers(&self) -> usize {
        let mut n = 0;
        // SAFETY: only registered workers' tasks are ever pushed on this list, and they stay
        // alive while queued (the test keeps them until the end).
        let taken = unsafe { self.idle_workers.take_all(1 << 20) };
        let mut q = self.runq.lock().unwrap();
        for w in taken {
            let w = w.expect("corrupt idle-worker list");
            q.push(w.as_ptr().expose_provenance());
            n += 1;
        }
        n
    }

    pub fn pop_runnable(&self) -> Option<&UmcgTask> {
        let addr = self.runq.lock().unwrap().pop()?;
        // SAFETY: addresses in the run queue are live worker tasks (see drain_idle_workers).
        Some(unsafe { &*std::ptr::with_exposed_provenance::<UmcgTask>(addr) })
    }
}

/// The calling thread as a registered server.
pub struct Server {
    pub task: Box<UmcgTask>,
    pub tid: u32,
    pub group: Arc<Group>,
}

impl Server {
    pub fn register(group: &Arc<Group>) -> Server {
        let task = Box::new(UmcgTask::new_server());
        let p = &*task as *const UmcgTask as *mut UmcgTask;
        // SAFETY: the box outlives the registration (unregister in Drop).
        let r = unsafe { kernel::umcg_ctl(UMCG_CTL_REGISTER, p) };
        assert_eq!(r, Ok(Ctl::Done));
        let tid = sys::gettid();
        task.server_tid.store(tid, Ordering::Release);
        group.idle_servers.prepare(&task);
        Server {
            task,
            tid,
            group: group.clone(),
        }
    }

    /// Run worker `w` until it comes back (blocks, yields, or exits): T1 of §2.6.
    pub fn run(&self, w: &UmcgTask) -> Result<StateWord, UmcgError> {
        // S:IDLE first, then W.server_tid and W:RUNNING, then S.next_tid = W.
        // A worker that is LOCKED is still on its way into umcg_wait (it yielded and woke us
        // before clearing LOCKED): wait until it has detached, as libumcg does.
        let t0 = Instant::now();
        while w.load_state().is_locked() {
            assert!(t0.elapsed() < WATCHDOG, "worker stays LOCKED");
            std::thread::yield_now();
        }
        self.task.store_state(StateWord(UMCG_TASK_IDLE));
        w.server_tid.store(self.tid, Ordering::Release);
        w.transition(TaskState::Idle, TaskState::Running)
            .expect("worker to run must be IDLE");
        let wtid = tid_of(w);
        self.task.next_tid.store(wtid, Ordering::Release);
        let r = kernel::umcg_wait(0, 0);
        self.task.next_tid.store(0, Ordering::Release);
        r?;
        assert_eq!(self.task.load_state().state(), TaskState::Running);
        Ok(w.load_state())
    }

    /// Go idle until some worker is available (the server-idles protocol of §2.6); returns
    /// the number of workers drained. `deadline` bounds the whole wait.
    pub fn wait_for_workers(&self, deadline: Instant) -> usize {
        loop {
            let n = self.group.drain_idle_workers();
            if n > 0 || !self.group.runq.lock().unwrap().is_empty() {
                return n;
            }
            if self.group.stop.load(Ordering::Acquire) {
                return 0;
            }
            assert!(
                Instant::now() < deadline,
                "no worker showed up (lost wakeup?)"
            );
            // S:IDLE, push self, fence, re-check, wait.
            self.task.store_state(StateWord(UMCG_TASK_IDLE));
            // SAFETY: the server's task outlives the list's use (the test keeps it).
            unsafe { self.group.idle_servers.push(&self.task) }.expect("push self");
            fence(Ordering::SeqCst);
            if !self.group.idle_workers.is_empty() {
                // Leave the list by ourselves, unless a worker already claimed us.
                if self.group.idle_servers.remove(&self.task) == Remove::AlreadyDeleted {
                    // Claimed: the waker makes us RUNNING; wait for it.
                    self.wait_running(deadline);
                }
                self.task.store_state(StateWord(UMCG_TASK_RUNNING));
            } else {
                self.wait_running(deadline);
            }
            self.group
                .idle_servers
                .reclaim(&self.task)
                .expect("reclaim");
        }
    }

    fn wait_running(&self, deadline: Instant) {
        loop {
            let abs = sys::futex::realtime_now_ns() + 50_000_000;
            match kernel::umcg_wait(0, abs) {
                Ok(()) => return,
                Err(UmcgError::Errno(sys::Errno::ETIMEDOUT)) => {
                    // Still IDLE; the node may have been popped meanwhile (then we are
                    // RUNNING already and the loop ends).
                    if self.task.load_state().state() == TaskState::Running {
                        return;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "server never woken (lost wakeup?)"
                    );
                }
                Err(UmcgError::Errno(sys::Errno::EINTR)) => {}
                Err(e) => panic!("server wait: {e}"),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Forget the announcement first: the TID may be reused by a later thread, and the
        // task is freed with `self`.
        let me = (&*self.task as *const UmcgTask).expose_provenance();
        SERVER_TASKS.lock().unwrap().retain(|&(_, a)| a != me);
        // SAFETY: unregister takes no pointer.
        let _ = unsafe { kernel::umcg_ctl(UMCG_CTL_UNREGISTER, std::ptr::null_mut()) };
    }
}

/// Whether thread `tid` of this process is asleep in the kernel (state `S` in
/// `/proc/self/task/<tid>/stat`): lets a test wait until a wait has really started.
pub fn is_sleeping(tid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // The state is the first field after the parenthesised command name.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        == Some("S")
}

pub fn wait_until_sleeping(tid: u32) {
    let t0 = Instant::now();
    while !is_sleeping(tid) {
        assert!(t0.elapsed() < WATCHDOG, "thread {tid} never went to sleep");
        std::thread::yield_now();
    }
}

pub fn tid_of(w: &UmcgTask) -> u32 {
    TIDS.lock()
        .unwrap()
        .iter()
        .find(|(a, _)| *a == (w as *const UmcgTask).expose_provenance())
        .map(|&(_, t)| t)
        .expect("unknown worker")
}

static TIDS: Mutex<Vec<(usize, u32)>> = Mutex::new(Vec::new());

/// A worker thread's handle to its own task.
pub struct Worker {
    pub task: NonNull<UmcgTask>,
}

impl Worker {
    pub fn task(&self) -> &UmcgTask {
        // SAFETY: the task is leaked for the whole test process.
        unsafe { self.task.as_ref() }
    }

    /// Register the calling thread as a worker of `group` (returns once a server runs it).
    pub fn register(group: &Group) -> Worker {
        let task: &'static UmcgTask = Box::leak(group.new_worker_task());
        TIDS.lock()
            .unwrap()
            .push(((task as *const UmcgTask).expose_provenance(), sys::gettid()));
        let p = task as *const UmcgTask as *mut UmcgTask;
        // SAFETY: leaked: valid for the rest of the process.
        let r = unsafe { kernel::umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, p) };
        assert_eq!(r, Ok(Ctl::Done));
        assert_eq!(task.load_state().state(), TaskState::Running);
        Worker {
            task: NonNull::from(task),
        }
    }

    /// Yield to the server (§2.6 "W yields to its server").
    pub fn yield_to_server(&self) {
        let t = self.task();
        let stid = t.server_tid.load(Ordering::Acquire);
        t.store_state(StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
        set_server_running(stid);
        t.next_tid.store(0, Ordering::Release);
        kernel::umcg_wait(0, 0).expect("yield");
    }

    /// Leave: LOCKED idle, wake the server, unregister.
    pub fn exit(self) {
        let t = self.task();
        let stid = t.server_tid.load(Ordering::Acquire);
        t.store_state(StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
        set_server_running(stid);
        t.next_tid.store(stid, Ordering::Release);
        kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0).expect("wake server");
        // SAFETY: unregister takes no pointer.
        let r = unsafe { kernel::umcg_ctl(UMCG_CTL_UNREGISTER, std::ptr::null_mut()) };
        assert_eq!(r, Ok(Ctl::Done));
    }
}

/// Write the server's state RUNNING (it is IDLE while its worker runs).
fn set_server_running(stid: u32) {
    let task = announced_server(stid).expect("the worker's server was never announced");
    let _ = task.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
}

/// Servers announce their task so that workers can set them RUNNING (tests only).
pub static SERVER_TASKS: Mutex<Vec<(u32, usize)>> = Mutex::new(Vec::new());

pub fn announce(s: &Server) {
    SERVER_TASKS
        .lock()
        .unwrap()
        .push((s.tid, (&*s.task as *const UmcgTask).expose_provenance()));
}

/// Counts the workers that finished.
#[derive(Debug, Default)]
pub struct Done {
    pub n: AtomicU32,
    pub stop: AtomicBool,
}

// ------------------------------------------------------------------------------------------
// Helpers for tests/kernel_spec.rs (appended; nothing above changes behaviour).

/// The task of the most recently announced server with TID `stid` (searched newest first, so
/// that a TID reused by a later thread finds the live task). The reference is only valid
/// while that server is registered; tests keep it that long.
pub fn announced_server(stid: u32) -> Option<&'static UmcgTask> {
    let a = SERVER_TASKS
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(t, _)| *t == stid)
        .map(|&(_, a)| a)?;
    // SAFETY: announced servers' tasks are boxed and alive while they are registered.
    Some(unsafe { &*std::ptr::with_exposed_provenance::<UmcgTask>(a) })
}

/// Poll `cond` until it holds; fail after [`WATCHDOG`] naming `what` (so that a lost wakeup
/// fails instead of hanging). Polling only: the condition is what the test relies on.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    let mut spins = 0u32;
    while !cond() {
        assert!(t0.elapsed() < WATCHDOG, "timed out waiting for: {what}");
        spins += 1;
        if spins < 200 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Live (unmarked) nodes on the group's idle-server list (a walk of the raw links).
pub fn live_idle_servers(g: &Group) -> usize {
    let mut n = 0;
    let mut cur = g.idle_servers.head_word();
    while cur != 0 {
        let task = std::ptr::with_exposed_provenance::<UmcgTask>(
            cur as usize - UMCG_IDLE_SERVERS_NODE_OFFSET,
        );
        // SAFETY: nodes are registered servers' tasks, alive during the test.
        let link = unsafe { &*task }.idle_servers_ptr.load(Ordering::Acquire);
        if link & 1 == 0 {
            n += 1;
        }
        cur = link & !1;
    }
    n
}

/// `umcg_wait(0, ..)` for a server (or basic task) whose `next_tid` the caller has set: wake
/// it (if set) and sleep until RUNNING. `EINTR` retries without the switch; a wait that lasts
/// [`WATCHDOG`] (a lost wakeup) fails. Resets `next_tid` to 0.
pub fn server_wait(task: &UmcgTask) {
    let abs = sys::futex::realtime_now_ns() + WATCHDOG.as_nanos() as u64;
    loop {
        match kernel::umcg_wait(0, abs) {
            Ok(()) => break,
            Err(UmcgError::Errno(sys::Errno::EINTR)) => task.next_tid.store(0, Ordering::Release),
            Err(UmcgError::Errno(sys::Errno::ETIMEDOUT)) => panic!("never woken (lost wakeup?)"),
            Err(e) => panic!("umcg_wait: {e}"),
        }
    }
    task.next_tid.store(0, Ordering::Release);
}

impl Server {
    /// The server-idles protocol of §2.6 once, without collecting its node: S:IDLE, push
    /// self, `fence(SeqCst)`, re-check the idle-worker list; if it is empty (or a popper
    /// already marked the node) sleep until RUNNING. Returns whether someone else marked the
    /// node (the kernel popped this server). The server is RUNNING on return; the caller
    /// reclaims the node ([`Server::reclaim_node`]).
    pub fn idle_once(&self, deadline: Instant) -> bool {
        self.task.store_state(StateWord(UMCG_TASK_IDLE));
        // SAFETY: the server's task outlives the list's use (the test keeps it).
        unsafe { self.group.idle_servers.push(&self.task) }.expect("push self");
        fence(Ordering::SeqCst);
        if !self.group.idle_workers.is_empty() {
            if self.group.idle_servers.remove(&self.task) == Remove::AlreadyDeleted {
                self.wait_running(deadline);
                return true;
            }
            self.task.store_state(StateWord(UMCG_TASK_RUNNING));
            return false;
        }
        self.wait_running(deadline);
        self.task.idle_servers_ptr.load(Ordering::Acquire) & 1 != 0
    }

    /// Collect this server's deleted node and reset it (after [`Server::idle_once`]).
    pub fn reclaim_node(&self) {
        self.group
            .idle_servers
            .reclaim(&self.task)
            .expect("reclaim");
    }
}

impl Worker {
    /// [`Worker::register`], calling `before(task, tid)` just before the registration call
    /// (e.g. to publish the task to other threads).
    pub fn register_with(group: &Group, before: impl FnOnce(&'static UmcgTask, u32)) -> Worker {
        let task: &'static UmcgTask = Box::leak(group.new_worker_task());
        let tid = sys::gettid();
        TIDS.lock()
            .unwrap()
            .push(((task as *const UmcgTask).expose_provenance(), tid));
        before(task, tid);
        let p = task as *const UmcgTask as *mut UmcgTask;
        // SAFETY: leaked: valid for the rest of the process.
        let r = unsafe { kernel::umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, p) };
        assert_eq!(r, Ok(Ctl::Done));
        assert_eq!(task.load_state().state(), TaskState::Running);
        Worker {
            task: NonNull::from(task),
        }
    }

    /// §2.6 "W1 swaps to W2" (T3), for a `next` worker that is IDLE and owned by the caller
    /// (taken off every queue). W1 writes its own IDLE|LOCKED *first* (the spec lists W2:RUNNING
    /// first; LOCKED-first is the variant it recommends, and keeps "one RUNNING worker per
    /// server" true of the state words at every instant), then `W2.server_tid` and W2:RUNNING,
    /// then `next_tid = W2`, and calls `umcg_wait`, which wakes W2, clears LOCKED and sleeps.
    /// Like [`Server::run`], it waits until W2 is no longer LOCKED (still on its way into
    /// `umcg_wait`), since the kernel's LOCKED-clearing CAS fails if W2's state changes under it.
    pub fn swap_to(&self, next: &UmcgTask) {
        let t = self.task();
        let stid = t.server_tid.load(Ordering::Acquire);
        let t0 = Instant::now();
        while next.load_state().is_locked() {
            assert!(t0.elapsed() < WATCHDOG, "swap target stays LOCKED");
            std::thread::yield_now();
        }
        t.store_state(StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
        next.server_tid.store(stid, Ordering::Release);
        next.transition(TaskState::Idle, TaskState::Running)
            .expect("swap target must be IDLE");
        t.next_tid.store(tid_of(next), Ordering::Release);
        kernel::umcg_wait(0, 0).expect("swap");
        t.next_tid.store(0, Ordering::Release);
    }

    /// [`Worker::yield_to_server`] with an absolute `CLOCK_REALTIME` timeout; returns what
    /// `umcg_wait` returned.
    pub fn yield_with_timeout(&self, abs_timeout: u64) -> Result<(), UmcgError> {
        let t = self.task();
        let stid = t.server_tid.load(Ordering::Acquire);
        t.store_state(StateWord(UMCG_TASK_IDLE | UMCG_TF_LOCKED));
        if let Some(s) = announced_server(stid) {
            let _ = s.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
        }
        t.next_tid.store(0, Ordering::Release);
        kernel::umcg_wait(0, abs_timeout)
    }
}

impl Worker {
    /// [`Worker::register_with`] returning the registration's result instead of asserting
    /// it. After a contract violation the emulated kernel leaves the thread registered (the
    /// real kernel killed it): the caller unregisters.
    pub fn try_register_with(
        group: &Group,
        before: impl FnOnce(&'static UmcgTask, u32),
    ) -> (Result<Ctl, UmcgError>, Worker) {
        let task: &'static UmcgTask = Box::leak(group.new_worker_task());
        let tid = sys::gettid();
        TIDS.lock()
            .unwrap()
            .push(((task as *const UmcgTask).expose_provenance(), tid));
        before(task, tid);
        let p = task as *const UmcgTask as *mut UmcgTask;
        // SAFETY: leaked: valid for the rest of the process.
        let r = unsafe { kernel::umcg_ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, p) };
        (
            r,
            Worker {
                task: NonNull::from(task),
            },
        )
    }
}
