//! The M:N runtime: servers, a pool of worker threads, spawn and join.
//!
//! Workers are real threads (blocking calls, thread-locals and debuggers work as usual);
//! servers decide which of them run, through the emulated UMCG kernel. See `server.rs` for
//! the server loop and `worker.rs` for how workers leave the CPU and are never queued twice.
//!
//! # Lifecycle
//!
//! 1. [`Builder::build`] creates the shared state, starts the servers (pinned one per CPU by
//!    default) and waits until every server is registered.
//! 2. [`Runtime::spawn`] hands the closure to a pooled worker (unparking it) or starts a new
//!    worker thread; the closure's result or panic goes to its [`JoinHandle`].
//! 3. A worker that finishes a job returns to the pool (bounded) and parks; past the bound
//!    its thread exits.
//! 4. fork: the child of a fork in a worker or a server (or any thread) holds a copy of the
//!    runtime whose servers and workers do not exist there, and is not registered with the
//!    emulated kernel. Spawning in the child fails with a clear error at `join`; the child
//!    should only exec or run plain code.
//! 5. [`Runtime::shutdown`] waits for every spawned job, tells pooled workers to exit,
//!    joins them, wakes idle servers and joins them. Dropping a runtime without `shutdown`
//!    does the same without waiting (nothing in `Drop` can hang): running jobs finish in the
//!    background and the servers exit after the last worker.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use umcg_abi::UmcgTask;
use umcg_abi::idle_servers::{IdleServerList, Pop};
use umcg_abi::idle_workers::IdleWorkerHead;
use umcg_abi::{StateWord, UMCG_TASK_IDLE, UMCG_TASK_RUNNING};

use crate::kernel::{self, IdleWakeup, UmcgError};
use crate::policy::{PerServerFifo, Policy, Reason};
use crate::server::{self, ServerSlot};
use crate::sys;
use crate::worker::{self, Job, WorkerCtl, make_runnable};

/// Errors of the runtime API.
#[derive(Debug)]
pub enum Error {
    /// More servers than the v0.3 idle-server list tolerates: `2 × nr_cpu_ids` scans bound
    /// the kernel's pop, so at most `max` servers may be idle-and-popped at once.
    TooManyServers {
        /// Requested.
        requested: usize,
        /// Allowed on this machine.
        max: usize,
    },
    /// Zero servers requested.
    NoServers,
    /// A thread could not be created (thread limit, `vm.max_map_count`, memory).
    Spawn(std::io::Error),
    /// The emulated kernel refused (e.g. `EBUSY` for an idle-wakeup mode change while another
    /// runtime has registered tasks).
    Kernel(UmcgError),
    /// `shutdown` was called from one of the runtime's own workers (it would wait for
    /// itself).
    ShutdownFromWorker,
    /// The runtime was built in a parent process; this is a forked child, where its
    /// servers and workers do not exist.
    ForkedChild,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooManyServers { requested, max } => write!(
                f,
                "{requested} servers requested, at most {max} on this machine (the v0.3 idle-server list bounds scans at 2 x nr_cpu_ids)"
            ),
            Error::NoServers => f.write_str("a runtime needs at least one server"),
            Error::Spawn(e) => write!(
                f,
                "could not create a thread: {e} (check `ulimit -u`, /proc/sys/kernel/threads-max and /proc/sys/vm/max_map_count)"
            ),
            Error::Kernel(e) => write!(f, "emulated kernel: {e}"),
            Error::ShutdownFromWorker => {
                f.write_str("shutdown called from one of the runtime's own workers")
            }
            Error::ForkedChild => f.write_str(
                "this runtime belongs to the parent process: its servers and workers do not exist in a forked child",
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<UmcgError> for Error {
    fn from(e: UmcgError) -> Self {
        Error::Kernel(e)
    }
}

/// Configures and builds a [`Runtime`].
#[derive(Debug)]
pub struct Builder {
    servers: Option<usize>,
    pin: bool,
    idle_wakeup: Option<IdleWakeup>,
    policy: Option<Box<dyn PolicyDebug>>,
    time_slice: Option<Duration>,
    stack_size: usize,
    pool_max: usize,
}

/// `Policy` + `Debug`, so that the builder can derive `Debug`.
trait PolicyDebug: Policy + fmt::Debug {
    fn into_policy(self: Box<Self>) -> Box<dyn Policy>;
}
impl<P: Policy + fmt::Debug> PolicyDebug for P {
    fn into_policy(self: Box<Self>) -> Box<dyn Policy> {
        self
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            servers: None,
            pin: true,
            idle_wakeup: None,
            policy: None,
            time_slice: Some(Duration::from_millis(10)),
            stack_size: 256 * 1024,
            pool_max: 1024,
        }
    }
}

impl Builder {
    /// Number of servers (default: one per allowed CPU, at most the list bound allows).
    pub fn servers(mut self, n: usize) -> Self {
        self.servers = Some(n);
        self
    }
    /// Pin server `i` to the `i`-th allowed CPU (default: true).
    pub fn pin_servers(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }
    /// How idle servers are woken (default: the process default, `UMCG_IDLE_WAKEUP` or the
    /// list). Applied at `build` (the kernel allows it only while no task is registered).
    pub fn idle_wakeup(mut self, mode: IdleWakeup) -> Self {
        self.idle_wakeup = Some(mode);
        self
    }
    /// The scheduling policy (default: [`PerServerFifo`]).
    pub fn policy<P: Policy + fmt::Debug>(mut self, p: P) -> Self {
        self.policy = Some(Box::new(p));
        self
    }
    /// Preempt a worker that runs longer than `slice` without blocking or yielding
    /// (default: 10 ms; `None`: cooperative only).
    pub fn time_slice(mut self, slice: Option<Duration>) -> Self {
        self.time_slice = slice;
        self
    }
    /// Stack size of worker threads (default: 256 KiB).
    pub fn worker_stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = bytes;
        self
    }
    /// How many idle worker threads are kept for reuse (default: 1024).
    pub fn max_pooled_workers(mut self, n: usize) -> Self {
        self.pool_max = n;
        self
    }

    /// Start the servers. With `UMCG_CHECK=1` in the environment, the invariant checks of
    /// [`check`](crate::check) are switched on first.
    ///
    /// The first build in a process also wraps the panic hook in force so that it runs with
    /// preemption deferred ([`kernel::no_preempt`]): a hook prints (std's takes the stderr
    /// lock and allocates a backtrace), and a worker preempted inside it would park while
    /// holding those locks, stalling every worker that then waits for them in the kernel,
    /// where its server cannot see it (`kernel::preempt`, "What the emulator cannot see"). A
    /// hook installed later should wrap itself the same way.
    pub fn build(self) -> Result<Runtime, Error> {
        if std::env::var_os("UMCG_CHECK").is_some_and(|v| v == "1") {
            crate::check::enable();
        }
        defer_preemption_in_panic_hook();
        let cpus = sys::allowed_cpus().unwrap_or_else(|_| vec![0]);
        // The kernel pop visits at most list_bound() nodes, the end included: at most
        // bound - 1 servers may be marked at once.
        let max = kernel::list_bound().saturating_sub(1).max(1);
        let n = self.servers.unwrap_or(cpus.len().min(max));
        if n == 0 {
            return Err(Error::NoServers);
        }
        if n > max {
            return Err(Error::TooManyServers { requested: n, max });
        }
        if let Some(mode) = self.idle_wakeup
            && kernel::idle_wakeup() != mode
        {
            kernel::set_idle_wakeup(mode)?;
        }
        let mut policy = match self.policy {
            Some(p) => p.into_policy(),
            None => Box::new(PerServerFifo::new()),
        };
        policy.init(n);
        let sh = Arc::new(Shared {
            idle_workers: IdleWorkerHead::new(),
            idle_servers: IdleServerList::new(),
            policy,
            server_tasks: (0..n).map(|_| Box::new(UmcgTask::new_server())).collect(),
            server_tids: (0..n).map(|_| AtomicU32::new(0)).collect(),
            slots: (0..n).map(|_| ServerSlot::default()).collect(),
            fork_generation: kernel::fork_generation(),
            ready: (Mutex::new(0), Condvar::new()),
            time_slice: self.time_slice,
            stack_size: self.stack_size,
            pool: Mutex::new(Vec::new()),
            pool_max: self.pool_max,
            live_workers: AtomicUsize::new(0),
            jobs: (Mutex::new(0), Condvar::new()),
            shutdown: AtomicBool::new(false),
            next_id: AtomicUsize::new(0),
            worker_threads: Mutex::new(Vec::new()),
            all_workers: Mutex::new(Vec::new()),
        });
        for t in &sh.server_tasks {
            sh.idle_servers.prepare(t);
        }
        let mut servers = Vec::with_capacity(n);
        let mut spawn_error = None;
        for i in 0..n {
            let cpu = self.pin.then(|| cpus[i % cpus.len()]);
            let sh2 = sh.clone();
            let r = thread::Builder::new()
                .name(format!("umcg-server-{i}"))
                .spawn(move || {
                    if let Err(e) = server::server_main(sh2.clone(), i, cpu) {
                        eprintln!("umcg: server {i} failed: {e}");
                        sh2.server_ready(i, u32::MAX);
                    }
                });
            match r {
                Ok(h) => servers.push(h),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        // Wait until every started server is registered (or failed).
        let started = servers.len();
        let (m, cv) = &sh.ready;
        let mut ready = lock(m);
        while *ready < started {
            ready = cv.wait(ready).unwrap_or_else(|e| e.into_inner());
        }
        drop(ready);
        if let Some(e) = spawn_error {
            // Stop and join the servers that did start (registered, idle): a failed build
            // leaves no thread and no registered task behind.
            let mut rt = Runtime {
                sh,
                servers,
                done: false,
            };
            rt.sh.begin_shutdown();
            rt.sh.wake_all_idle_servers();
            for s in rt.servers.drain(..) {
                let _ = s.join();
            }
            rt.done = true;
            return Err(Error::Spawn(e));
        }
        if sh
            .server_tids
            .iter()
            .any(|t| t.load(Ordering::Acquire) == u32::MAX)
        {
            let rt = Runtime {
                sh,
                servers,
                done: false,
            };
            drop(rt);
            return Err(Error::Kernel(UmcgError::Errno(sys::Errno::EINVAL)));
        }
        Ok(Runtime {
            sh,
            servers,
            done: false,
        })
    }
}

/// An M:N runtime: servers running worker threads through the emulated UMCG kernel.
#[derive(Debug)]
pub struct Runtime {
    sh: Arc<Shared>,
    servers: Vec<thread::JoinHandle<()>>,
    done: bool,
}

impl Runtime {
    /// A builder with the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A runtime with the defaults.
    pub fn new() -> Result<Runtime, Error> {
        Builder::default().build()
    }

    /// Run `f` on a worker. Never fails here: if no worker thread can be created, the
    /// handle's [`JoinHandle::join`] returns the error (see [`Runtime::try_spawn`]).
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.sh.spawn(f)
    }

    /// Run `f` on a worker, or fail with [`Error::Spawn`] if no worker thread can be created
    /// (thread limit, `vm.max_map_count`, memory for its stack) or [`Error::ForkedChild`] in
    /// a forked child. The runtime is unaffected by a failure: later spawns may succeed.
    /// Like `std::thread::Builder::spawn`; [`Runtime::spawn`] is the convenience that defers
    /// the error to `join`.
    pub fn try_spawn<F, T>(&self, f: F) -> Result<JoinHandle<T>, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.sh.try_spawn(f)
    }

    /// Number of servers.
    pub fn servers(&self) -> usize {
        self.sh.server_tasks.len()
    }

    /// Worker threads currently alive (running, blocked, parked or pooled).
    pub fn live_workers(&self) -> usize {
        self.sh.live_workers.load(Ordering::Acquire)
    }

    /// Workers that have been runnable (queued, not yet picked) for longer than `bound`, one
    /// line each. Needs [`check::enable`](crate::check::enable) before `build` (otherwise
    /// nothing is timestamped and the list is empty). For watchdogs: a lost wakeup shows up
    /// here.
    pub fn stalled(&self, bound: Duration) -> Vec<String> {
        let now = crate::check::now_ns();
        let bound = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        self.sh
            .workers()
            .into_iter()
            .filter_map(|w| {
                let since = w.runnable_since.load(Ordering::Relaxed);
                (since != 0 && now.saturating_sub(since) > bound).then(|| self.sh.describe(&w))
            })
            .collect()
    }

    /// Every worker's and server's scheduling state, one line each (for a watchdog's
    /// report). A snapshot of fields read one at a time, not an atomic picture.
    pub fn debug_dump(&self) -> String {
        self.sh.debug_dump()
    }

    /// Wait for every spawned job, then stop the workers and the servers and join them.
    pub fn shutdown(mut self) -> Result<(), Error> {
        if kernel::fork_generation() != self.sh.fork_generation {
            self.done = true; // Nothing to stop in a child; do not touch the copies.
            return Err(Error::ForkedChild);
        }
        if let Some((sh, _)) = worker::current_worker()
            && Arc::ptr_eq(&sh, &self.sh)
        {
            return Err(Error::ShutdownFromWorker);
        }
        let (m, cv) = &self.sh.jobs;
        let mut active = lock(m);
        while *active > 0 {
            active = cv.wait(active).unwrap_or_else(|e| e.into_inner());
        }
        drop(active);
        self.sh.begin_shutdown();
        let threads = std::mem::take(&mut *lock(&self.sh.worker_threads));
        for t in threads {
            let _ = t.join();
        }
        self.sh.wake_all_idle_servers();
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.done && kernel::fork_generation() == self.sh.fork_generation {
            // Never wait here: jobs may run for ever. Workers exit when their job ends,
            // servers after the last worker.
            self.sh.begin_shutdown();
            self.sh.wake_all_idle_servers();
        }
    }
}

/// State shared by the servers, the workers and the handle.
pub(crate) struct Shared {
    pub(crate) idle_workers: IdleWorkerHead,
    pub(crate) idle_servers: IdleServerList,
    pub(crate) policy: Box<dyn Policy>,
    /// Boxed: a task must not move (its node address is on the idle-server list).
    #[allow(clippy::vec_box)]
    server_tasks: Vec<Box<UmcgTask>>,
    server_tids: Vec<AtomicU32>,
    /// Per-server current worker and handoff slot (see `server.rs`).
    slots: Vec<ServerSlot>,
    /// `kernel::fork_generation()` when built.
    fork_generation: u64,
    ready: (Mutex<usize>, Condvar),
    pub(crate) time_slice: Option<Duration>,
    stack_size: usize,
    pool: Mutex<Vec<Arc<WorkerCtl>>>,
    pool_max: usize,
    live_workers: AtomicUsize,
    /// Spawned jobs not finished yet.
    jobs: (Mutex<usize>, Condvar),
    shutdown: AtomicBool,
    next_id: AtomicUsize,
    worker_threads: Mutex<Vec<thread::JoinHandle<()>>>,
    /// Every worker created (weak: for `debug_dump` and `stalled`).
    all_workers: Mutex<Vec<std::sync::Weak<WorkerCtl>>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("servers", &self.server_tasks.len())
            .field("live_workers", &self.live_workers.load(Ordering::Relaxed))
            .field("shutdown", &self.shutdown.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn server_task(&self, idx: usize) -> Option<&UmcgTask> {
        self.server_tasks.get(idx).map(|b| &**b)
    }

    /// TID of server `idx` (set before the runtime is built).
    pub(crate) fn server_tid(&self, idx: usize) -> u32 {
        self.server_tids[idx].load(Ordering::Acquire)
    }

    pub(crate) fn slot(&self, idx: usize) -> &ServerSlot {
        &self.slots[idx]
    }

    fn workers(&self) -> Vec<Arc<WorkerCtl>> {
        lock(&self.all_workers)
            .iter()
            .filter_map(|w| w.upgrade())
            .collect()
    }

    fn describe(&self, w: &WorkerCtl) -> String {
        let since = w.runnable_since.load(Ordering::Relaxed);
        let runnable = if since == 0 {
            String::from("-")
        } else {
            let ms = crate::check::now_ns().saturating_sub(since) as f64 / 1e6;
            format!("{ms:.1} ms")
        };
        let out = w.outcome.load(Ordering::Acquire);
        format!(
            "worker {:>5} tid {:>7} {:?} server_tid {} queued {} members {} park {} run {} outcome {}/{} last_server {} runnable {} kernel-list link {:#x}",
            w.id,
            w.tid.load(Ordering::Acquire),
            w.task.load_state(),
            w.task.server_tid.load(Ordering::Acquire),
            w.queued.load(Ordering::Acquire),
            w.members(),
            w.park_state(),
            w.run_seq.load(Ordering::Acquire),
            out >> 8,
            out & 0xff,
            w.last_server.load(Ordering::Acquire),
            runnable,
            w.task.idle_workers_ptr.load(Ordering::Acquire),
        )
    }

    fn debug_dump(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "runtime: {} servers, {} live workers, shutdown {}, kernel idle-worker list {}, idle-server list {:?}",
            self.server_tasks.len(),
            self.live_workers.load(Ordering::Acquire),
            self.is_shutting_down(),
            if self.idle_workers.is_empty() {
                "empty"
            } else {
                "NOT empty"
            },
            self.idle_servers
                .is_empty()
                .map(|e| if e { "empty" } else { "not empty" }),
        );
        for (i, t) in self.server_tasks.iter().enumerate() {
            let slot = self.slot(i);
            let _ = writeln!(
                s,
                "server {i} tid {} {:?} policy has work {} | {}",
                self.server_tid(i),
                t.load_state(),
                self.policy.has_work(i),
                slot.describe(),
            );
        }
        for w in self.workers() {
            let _ = writeln!(s, "{}", self.describe(&w));
        }
        s
    }

    pub(crate) fn server_ready(&self, idx: usize, tid: u32) {
        self.server_tids[idx].store(tid, Ordering::Release);
        let (m, cv) = &self.ready;
        *lock(m) += 1;
        cv.notify_all();
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    pub(crate) fn should_exit(&self) -> bool {
        self.is_shutting_down() && self.live_workers.load(Ordering::Acquire) == 0
    }

    fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        // The store, then the idle-server pops of `wake_all_idle_servers`: pairs with the
        // fence an idling server issues between pushing itself and reading `shutdown`
        // (`server.rs`, idle): either the server sees the flag, or the pop sees its node.
        std::sync::atomic::fence(Ordering::SeqCst);
        let pooled = std::mem::take(&mut *lock(&self.pool));
        for w in &pooled {
            worker::unpark(self, w);
        }
    }

    /// Claim one idle server from the list (as the kernel's wake hook would) and wake it.
    pub(crate) fn wake_idle_server(&self) -> bool {
        for _ in 0..8 {
            match self.idle_servers.pop(kernel::list_bound()) {
                Pop::Got(node) => {
                    // SAFETY: nodes on this list are `server_tasks`, owned by `self`.
                    let s = unsafe { &*node.task() };
                    if s.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
                        .is_ok()
                    {
                        let _ = kernel::wake(s.server_tid.load(Ordering::Acquire));
                        return true;
                    }
                    // Popped but not idle (H8): it is awake anyway; try another.
                }
                Pop::Empty => return false,
                Pop::BoundExceeded => {
                    let _ = self.idle_servers.gc();
                }
                Pop::Corrupt(c) => panic!("umcg runtime bug: idle-server list corrupt: {c:?}"),
            }
        }
        false
    }

    pub(crate) fn wake_all_idle_servers(&self) {
        while self.wake_idle_server() {}
    }

    /// Take the kernel's idle-worker list in one exchange and make every worker runnable.
    pub(crate) fn drain_idle_workers(&self, server: Option<usize>) -> usize {
        if self.idle_workers.is_empty() {
            return 0;
        }
        let mut n = 0;
        // SAFETY: only this runtime's registered workers point at this head; a queued
        // worker's thread is registered and keeps its `WorkerCtl` alive.
        let taken = unsafe { self.idle_workers.take_all(usize::MAX) };
        for item in taken {
            let task = item.unwrap_or_else(|e| panic!("umcg runtime bug: idle-worker list: {e:?}"));
            let p =
                core::ptr::with_exposed_provenance::<WorkerCtl>(task.as_ptr().expose_provenance());
            // SAFETY: `task` is the first field of a `WorkerCtl` (offset 0, asserted in
            // worker.rs) whose allocation was exposed when the worker was created; its
            // thread holds an `Arc` while the worker is registered, which it is while queued.
            let w = unsafe {
                Arc::increment_strong_count(p);
                Arc::from_raw(p)
            };
            let id = w.id;
            if !make_runnable(self, w, server, Reason::Unblocked) && crate::check::enabled() {
                crate::check::violation(format!(
                    "worker {id} came off the kernel's idle-worker list while already queued"
                ));
            }
            n += 1;
        }
        n
    }

    pub(crate) fn spawn<F, T>(self: &Arc<Self>, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.try_spawn(f).unwrap_or_else(|e| {
            let inner = Arc::new(JoinInner::new());
            inner.complete(Err(match e {
                Error::Spawn(e) => JoinError::spawn(e),
                e => JoinError(JoinErrorKind::Runtime(e)),
            }));
            JoinHandle { inner }
        })
    }

    pub(crate) fn try_spawn<F, T>(self: &Arc<Self>, f: F) -> Result<JoinHandle<T>, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if kernel::fork_generation() != self.fork_generation {
            return Err(Error::ForkedChild);
        }
        let inner = Arc::new(JoinInner::new());
        let done = inner.clone();
        let job: Job = Box::new(move || {
            let r = catch_unwind(AssertUnwindSafe(f)).map_err(JoinError::panicked);
            Box::new(move || done.complete(r))
        });
        *lock(&self.jobs.0) += 1;
        let pooled = kernel::no_preempt(|| lock(&self.pool).pop());
        match pooled {
            Some(w) => {
                *lock(&w.job) = Some(job);
                worker::unpark(self, &w);
            }
            None => {
                if let Err(e) = self.start_worker(job) {
                    // The job (and with it `f`) is dropped unrun; nothing waits on `inner`.
                    self.job_done();
                    return Err(Error::Spawn(e));
                }
            }
        }
        Ok(JoinHandle { inner })
    }

    fn start_worker(self: &Arc<Self>, job: Job) -> Result<(), std::io::Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let w = Arc::new(WorkerCtl::new(id, self, Some(job)));
        // Expose the whole allocation: the kernel's list hands back the task's address, and
        // `drain_idle_workers` turns it into a `WorkerCtl` pointer.
        let _ = Arc::as_ptr(&w).expose_provenance();
        {
            let mut all = lock(&self.all_workers);
            if all.len() >= 64 && all.len().is_power_of_two() {
                all.retain(|w| w.strong_count() > 0);
            }
            all.push(Arc::downgrade(&w));
        }
        self.live_workers.fetch_add(1, Ordering::AcqRel);
        let sh = self.clone();
        let r = thread::Builder::new()
            .name(format!("umcg-worker-{id}"))
            .stack_size(self.stack_size)
            .spawn(move || {
                // If the thread ever unwinds out of `worker_main` while still registered (a
                // runtime bug), the emulator's exit cleanup writes its task in a
                // thread-local destructor, after this frame is gone: leak the `WorkerCtl`
                // on that path so that the task outlives it.
                let _keep = KeepOnUnwind(Some(w.clone()));
                worker::worker_main(sh, w);
            });
        match r {
            Ok(h) => {
                let mut v = lock(&self.worker_threads);
                v.retain(|h| !h.is_finished());
                v.push(h);
                Ok(())
            }
            Err(e) => {
                self.live_workers.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    pub(crate) fn job_done(&self) {
        let (m, cv) = &self.jobs;
        let mut n = lock(m);
        *n -= 1;
        if *n == 0 {
            cv.notify_all();
        }
    }

    /// Put a worker whose job ended back in the pool; false: its thread should exit.
    pub(crate) fn return_to_pool(&self, w: &Arc<WorkerCtl>) -> bool {
        if self.is_shutting_down() {
            return false;
        }
        let mut pool = lock(&self.pool);
        if pool.len() >= self.pool_max {
            return false;
        }
        pool.push(w.clone());
        true
    }

    pub(crate) fn worker_gone(&self) {
        if self.live_workers.fetch_sub(1, Ordering::AcqRel) == 1 && self.is_shutting_down() {
            self.wake_all_idle_servers();
        }
    }
}

/// Run the process's panic hook inside `no_preempt` (see [`Builder::build`]); once.
fn defer_preemption_in_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| kernel::no_preempt(|| hook(info))));
    });
}

/// Leaks its worker record if dropped during a panic (see `Shared::start_worker`).
struct KeepOnUnwind(Option<Arc<WorkerCtl>>);

impl Drop for KeepOnUnwind {
    fn drop(&mut self) {
        if thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

pub(crate) fn spawn_on<F, T>(sh: &Arc<Shared>, f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    sh.spawn(f)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why [`JoinHandle::join`] has no value.
pub struct JoinError(JoinErrorKind);

enum JoinErrorKind {
    Panicked(Box<dyn Any + Send + 'static>),
    Spawn(std::io::Error),
    Runtime(Error),
}

impl JoinError {
    fn panicked(p: Box<dyn Any + Send + 'static>) -> Self {
        JoinError(JoinErrorKind::Panicked(p))
    }
    fn spawn(e: std::io::Error) -> Self {
        JoinError(JoinErrorKind::Spawn(e))
    }
    /// Whether the job panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.0, JoinErrorKind::Panicked(_))
    }
    /// The panic payload, if the job panicked (as `std::thread::JoinHandle::join` gives it).
    pub fn into_panic(self) -> Option<Box<dyn Any + Send + 'static>> {
        match self.0 {
            JoinErrorKind::Panicked(p) => Some(p),
            JoinErrorKind::Spawn(_) | JoinErrorKind::Runtime(_) => None,
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            JoinErrorKind::Panicked(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(|s| s.as_str()))
                    .unwrap_or("(non-string payload)");
                write!(f, "the job panicked: {msg}")
            }
            JoinErrorKind::Spawn(e) => write!(
                f,
                "no worker thread could be started: {e} (check `ulimit -u`, /proc/sys/kernel/threads-max and /proc/sys/vm/max_map_count)"
            ),
            JoinErrorKind::Runtime(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for JoinError {}

struct JoinInner<T> {
    state: Mutex<JoinState<T>>,
    cv: Condvar,
}

enum JoinState<T> {
    Pending(Option<crate::park::Unparker>),
    Done(Result<T, JoinError>),
    Taken,
}

impl<T> JoinInner<T> {
    fn new() -> Self {
        JoinInner {
            state: Mutex::new(JoinState::Pending(None)),
            cv: Condvar::new(),
        }
    }

    fn complete(&self, r: Result<T, JoinError>) {
        let waiter = kernel::no_preempt(|| {
            let mut st = lock(&self.state);
            let prev = std::mem::replace(&mut *st, JoinState::Done(r));
            match prev {
                JoinState::Pending(w) => w,
                _ => None,
            }
        });
        self.cv.notify_all();
        if let Some(w) = waiter {
            w.unpark();
        }
    }
}

/// Owned permission to join a spawned job.
pub struct JoinHandle<T> {
    inner: Arc<JoinInner<T>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinHandle { .. }")
    }
}

impl<T> JoinHandle<T> {
    /// Wait for the job and return its value, or its panic. From a worker, the wait parks
    /// the worker through its server; from any other thread, it blocks the thread.
    pub fn join(self) -> Result<T, JoinError> {
        let in_worker = worker::current_worker().is_some();
        loop {
            let st = kernel::no_preempt(|| {
                let mut st = lock(&self.inner.state);
                match std::mem::replace(&mut *st, JoinState::Taken) {
                    JoinState::Done(r) => Some(r),
                    JoinState::Pending(_) if in_worker => {
                        *st = JoinState::Pending(Some(crate::park::Unparker::current()));
                        None
                    }
                    JoinState::Pending(w) => {
                        let mut g = st;
                        *g = JoinState::Pending(w);
                        loop {
                            g = self.inner.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                            if matches!(*g, JoinState::Done(_)) {
                                break;
                            }
                        }
                        match std::mem::replace(&mut *g, JoinState::Taken) {
                            JoinState::Done(r) => Some(r),
                            _ => unreachable!(),
                        }
                    }
                    JoinState::Taken => unreachable!("a JoinHandle is joined once"),
                }
            });
            match st {
                Some(r) => return r,
                None => crate::park::park(),
            }
        }
    }

    /// Whether the job has finished.
    pub fn is_finished(&self) -> bool {
        matches!(*lock(&self.inner.state), JoinState::Done(_))
    }
}
