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

pub fn init() {
    kernel::set_violation_policy(OnViolation::ReturnError);
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
    let s = SERVER_TASKS
        .lock()
        .unwrap()
        .iter()
        .find(|(t, _)| *t == stid)
        .map(|&(_, a)| a);
    if let Some(a) = s {
        // SAFETY: registered servers' tasks are alive while their worker runs.
        let task = unsafe { &*std::ptr::with_exposed_provenance::<UmcgTask>(a) };
        let _ = task.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
    }
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
