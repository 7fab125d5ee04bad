//! The emulated kernel's task table: what `task_struct` held for UMCG.
//!
//! A process-wide registry maps TIDs to registered tasks ([`KTask`]), and the addresses of
//! servers' idle-server nodes and workers' idle-worker nodes to their tasks. Every node
//! address read from user memory is validated against it before it is dereferenced.
//!
//! # Lifetime rule (closes H2's first condition)
//!
//! Kernel paths that dereference *another* task's `struct umcg_task` (the idle-server pop,
//! waking a server) hold the registry's read lock while they do. Unregistration removes a
//! task under the write lock, so it waits for those paths to finish, and no later path can
//! find the task. After `umcg_ctl(UNREGISTER)` returns, the emulator never touches the
//! task's memory again, so user space may free it.
//!
//! # Memory ordering
//!
//! The registry is a `RwLock`: its lock/unlock pairs order registration before every lookup
//! that finds the task. The thread's own registration is also cached in a thread-local
//! pointer, written and read only by that thread (and its signal handlers).
//!
//! # fork
//!
//! A child process is not registered (spec §4.6). A `pthread_atfork` child handler clears the
//! forking thread's registration and detaches the child from the parent's table (whose lock
//! another parent thread may have held at the fork) by swapping in an empty one on first use.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Once, RwLock, RwLockReadGuard, RwLockWriteGuard};

use umcg_abi::UmcgTask;

use crate::sys::{Epoll, EpollEvent, Errno, EventFd, FutexWait};

/// A registered task: the kernel-side record of one thread.
#[derive(Debug)]
pub(crate) struct KTask {
    /// The thread's TID.
    pub(crate) tid: u32,
    /// Address of its `struct umcg_task` (user memory, valid while registered).
    task_addr: usize,
    /// Registered with `UMCG_CTL_WORKER`.
    pub(crate) worker: bool,
    /// Servers in eventfd idle-wakeup mode: the fd they sleep on.
    pub(crate) idle_fd: Option<IdleFd>,
    /// Worker: the CPU the emulator last pinned it to (`-1`: never).
    pub(crate) cpu: AtomicI32,
    /// Worker: the head address of the idle-worker list it was last pushed on, while it may
    /// still be queued there (0: not queued). Set by a push; cleared when the worker leaves
    /// the kernel RUNNING (a server took it off the list to run it). Only a worker that went
    /// back to user space still queued (H5) keeps it: while its `idle_workers_ptr` does not
    /// hold a head again, it is still on the list.
    pub(crate) queued_on: AtomicU64,
    /// Worker: `WAKE_ONLY` wake-ups aimed at it and not yet seen by its idle loop. Only
    /// these (not stale futex wakes) make a sleeping IDLE worker run the wake hook.
    pub(crate) wake_events: AtomicU32,
    /// Worker inside `umcg_wait`, not queued: the server (its `server_tid`) whose user-space
    /// run queue it waits in; 0 otherwise (`kernel`, "A server that leaves").
    pub(crate) waiting_on: AtomicU32,
    /// Written by a server named in `waiting_on` when it leaves (its TID): a wait whose
    /// `waiting_on` matches ends with `ESRCH`. The worker clears it before it publishes
    /// the `waiting_on` of its next wait (a TID may register again as a server).
    pub(crate) server_left: AtomicU32,
    /// Worker (own thread only): the server last found registered by `umcg_wait`'s check,
    /// and the process's server-departure count at that check (`kernel::note_waiting_on`).
    pub(crate) checked_server: AtomicU32,
    pub(crate) checked_departures: AtomicU64,
    /// Head addresses already found readable (probe cache: one syscall per new head).
    pub(crate) checked_workers_head: AtomicU64,
    pub(crate) checked_servers_head: AtomicU64,
}

impl KTask {
    pub(crate) fn new(
        tid: u32,
        task: *const UmcgTask,
        worker: bool,
        idle_fd: Option<IdleFd>,
    ) -> Self {
        KTask {
            tid,
            task_addr: task.expose_provenance(),
            worker,
            idle_fd,
            cpu: AtomicI32::new(-1),
            queued_on: AtomicU64::new(0),
            wake_events: AtomicU32::new(0),
            waiting_on: AtomicU32::new(0),
            server_left: AtomicU32::new(0),
            checked_server: AtomicU32::new(0),
            checked_departures: AtomicU64::new(0),
            checked_workers_head: AtomicU64::new(0),
            checked_servers_head: AtomicU64::new(0),
        }
    }

    /// The task's shared struct.
    pub(crate) fn task(&self) -> &UmcgTask {
        // SAFETY: registration requires `self` to stay valid, and not move, until the thread
        // unregisters; a KTask is only reachable through the registry or the thread's own
        // pointer while it is registered, and kernel paths that use another thread's KTask
        // hold the registry read lock (module doc), which unregistration waits for.
        unsafe { &*core::ptr::with_exposed_provenance::<UmcgTask>(self.task_addr) }
    }
}

/// An idle server's eventfd, registered in its own epoll instance (Delisle's proposal).
///
/// Both fds belong to the emulator, but user space can close them, or `dup2` another file
/// over their numbers (module doc of `kernel`, "Idle-wakeup fds that user space closes"). The
/// emulator never trusts the numbers blindly: the registration of the eventfd in the epoll
/// set is the proof of identity (epoll keys registrations by file *and* number, so
/// `epoll_ctl` on a number that now names another file fails), checked by a sleeper every
/// [`IDLE_FD_CHECK`] and before the fds are closed. Once broken, the server's waits and
/// wakes use the futex on its state word instead.
#[derive(Debug)]
pub(crate) struct IdleFd {
    efd: core::mem::ManuallyDrop<EventFd>,
    ep: core::mem::ManuallyDrop<Epoll>,
    /// Set (once) when a wait, a wake or a check found the fds closed or replaced.
    /// Release/Acquire: the waker that sets it, then futex-wakes, pairs with the sleeper's
    /// check before it chooses between epoll and the futex (the state word, which the waker
    /// changed before waking, closes the race either way).
    broken: AtomicBool,
    /// The errno that found it (for the report).
    broken_by: AtomicI32,
    /// The server's `umcg_wait` has reported it (once).
    reported: AtomicBool,
}

/// How long an idle server sleeps in `epoll_wait` before it checks that its fds are still
/// its own (a wake written to a closed eventfd is lost: this bounds the delay).
pub(crate) const IDLE_FD_CHECK: core::time::Duration = core::time::Duration::from_secs(1);

/// What [`IdleFd::wait`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdleWait {
    /// As from a futex wait.
    Futex(FutexWait),
    /// The fds were closed or replaced by user space (first detection only; the errno).
    Broken(Errno),
}

impl IdleFd {
    pub(crate) fn new() -> Result<Self, Errno> {
        let efd = EventFd::new_nonblocking()?;
        let ep = Epoll::new()?;
        ep.add(&efd, 0, false)?;
        Ok(IdleFd {
            efd: core::mem::ManuallyDrop::new(efd),
            ep: core::mem::ManuallyDrop::new(ep),
            broken: AtomicBool::new(false),
            broken_by: AtomicI32::new(0),
            reported: AtomicBool::new(false),
        })
    }

    /// The raw fd numbers (eventfd, epoll), for tests and reports.
    pub(crate) fn raw_fds(&self) -> (i32, i32) {
        use std::os::fd::AsRawFd;
        (self.efd.as_raw_fd(), self.ep.as_raw_fd())
    }

    /// Whether a wait, wake or check found the fds closed or replaced.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// The first time (only) after the fds were found broken: the errno that found it.
    pub(crate) fn take_report(&self) -> Option<Errno> {
        (self.is_broken() && !self.reported.swap(true, Ordering::Relaxed))
            .then(|| Errno::from_raw(self.broken_by.load(Ordering::Relaxed)))
    }

    fn mark_broken(&self, e: Errno) {
        self.broken_by.store(e as i32, Ordering::Relaxed);
        self.broken.store(true, Ordering::Release);
    }

    /// Whether both numbers still name the emulator's files: `epoll_ctl(EPOLL_CTL_MOD)` of
    /// the eventfd's number in the epoll set (fails with `EBADF`, `EINVAL` or `ENOENT` when
    /// either number was closed or now names another file).
    fn check(&self) -> Result<(), Errno> {
        self.ep.modify(&*self.efd, 0)
    }

    /// Wake the server sleeping on it (or make its next sleep return at once). `Err` if the
    /// fds are broken: the caller wakes the state word's futex instead.
    pub(crate) fn signal(&self) -> Result<(), Errno> {
        if self.is_broken() {
            return Err(Errno::EBADF);
        }
        // A write to a number that user space closed fails (EBADF); one that names another
        // writable file now is not detected here (documented; the sleeper's check finds it).
        self.efd.signal().inspect_err(|&e| self.mark_broken(e))
    }

    /// Sleep until signalled, interrupted, or `timeout` (None: forever) passes. Consumes the
    /// signal; callers re-check their state word afterwards. Every [`IDLE_FD_CHECK`] of
    /// sleep, the fds are checked; a failed check or wait reports [`IdleWait::Broken`].
    pub(crate) fn wait(&self, timeout: Option<core::time::Duration>) -> IdleWait {
        // A signal that arrived before this wait left the counter non-zero; the eventfd is
        // registered level-triggered, so epoll_wait returns at once and the drain below
        // takes it (no read before the wait: it would cost a syscall on every sleep).
        let deadline = timeout.map(|t| {
            crate::sys::futex::monotonic_now_ns()
                .saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
        });
        loop {
            let left = deadline.map(|d| {
                core::time::Duration::from_nanos(
                    d.saturating_sub(crate::sys::futex::monotonic_now_ns()),
                )
            });
            let tick = left.map_or(IDLE_FD_CHECK, |l| l.min(IDLE_FD_CHECK));
            let mut ev = [EpollEvent::empty()];
            match self.ep.wait(&mut ev, Some(tick)) {
                Ok(0) if left.is_some_and(|l| l <= tick) => {
                    return IdleWait::Futex(FutexWait::TimedOut);
                }
                Ok(0) => {
                    if let Err(e) = self.check() {
                        self.mark_broken(e);
                        return IdleWait::Broken(e);
                    }
                }
                Ok(_) => {
                    let _ = self.efd.drain();
                    return IdleWait::Futex(FutexWait::Woken);
                }
                Err(Errno::EINTR) => return IdleWait::Futex(FutexWait::Interrupted),
                // EBADF (closed), EINVAL (the number names a file that is not an epoll).
                Err(e) => {
                    self.mark_broken(e);
                    return IdleWait::Broken(e);
                }
            }
        }
    }
}

impl Drop for IdleFd {
    fn drop(&mut self) {
        // Delete before close: a closed fd stays in an epoll interest set while any other
        // reference to the file is open (epoll(7), "Q6"). A successful delete also proves
        // that both numbers are still ours; if it fails, user space closed or replaced one of
        // them and the numbers may name its files now: close neither (leak ours, if they are
        // still open, rather than close a file that user space owns).
        let ours = !self.is_broken() && self.ep.delete(&*self.efd).is_ok();
        if ours {
            // SAFETY: dropped once, here; the fields are not used after this.
            unsafe {
                core::mem::ManuallyDrop::drop(&mut self.efd);
                core::mem::ManuallyDrop::drop(&mut self.ep);
            }
        }
    }
}

/// The table behind the registry lock.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) by_tid: HashMap<u32, Arc<KTask>>,
    /// Idle-server node address (`&task.idle_servers_ptr`) → server.
    pub(crate) server_nodes: HashMap<u64, Arc<KTask>>,
    /// Idle-worker node address (`&task.idle_workers_ptr`) → worker TID (0: the tombstone
    /// of a worker that left while queued, see [`remove`]).
    pub(crate) worker_nodes: HashMap<u64, u32>,
}

type Registry = RwLock<Table>;

/// The current table; null after a fork in the child until first use.
static REGISTRY: AtomicPtr<Registry> = AtomicPtr::new(core::ptr::null_mut());
static ATFORK: Once = Once::new();

fn registry() -> &'static Registry {
    let p = REGISTRY.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: non-null values are leaked boxes, never freed.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::new(RwLock::new(Table::default())));
    match REGISTRY.compare_exchange(
        core::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just leaked.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // SAFETY: `fresh` was never shared; `winner` is a leaked box.
            unsafe {
                drop(Box::from_raw(fresh));
                &*winner
            }
        }
    }
}

/// Incremented in every forked child (see [`fork_generation`]).
static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many forks separate this process from the one that first used the emulator: 0 in
/// the original process. A runtime records it when built and refuses to work in a child.
pub fn fork_generation() -> u64 {
    install_atfork();
    FORK_GENERATION.load(Ordering::Acquire)
}

extern "C" fn atfork_child() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
    // Async-signal-safe: atomic stores only. The parent's table (and whatever lock state it
    // was in) is abandoned; the child starts with no registered task.
    REGISTRY.store(core::ptr::null_mut(), Ordering::Release);
    if !CURRENT.with(|c| c.replace(core::ptr::null())).is_null() {
        // The forking thread was registered: forget (leak) its owner's copy, so that the
        // child's exit does not run the parent's exit cleanup (whose wakes could reach the
        // parent through an inherited eventfd). OWNER was initialised by the registration,
        // so this access allocates nothing.
        let _ = OWNER.try_with(|o| core::mem::forget(o.0.take()));
    }
}

fn install_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: registering a handler with no prepare/parent hooks; the child hook is
        // async-signal-safe (atomic stores only).
        let r = unsafe { libc::pthread_atfork(None, None, Some(atfork_child)) };
        debug_assert_eq!(r, 0, "pthread_atfork");
    });
}

/// Read access to the table (lookups; paths that touch other tasks' memory keep it held).
pub(crate) fn read() -> RwLockReadGuard<'static, Table> {
    registry().read().unwrap_or_else(|e| e.into_inner())
}

fn write() -> RwLockWriteGuard<'static, Table> {
    registry().write().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// This thread's registration: a raw pointer for signal handlers (no lazy init, no
    /// borrow), kept alive by `OWNER`.
    static CURRENT: Cell<*const KTask> = const { Cell::new(core::ptr::null()) };
    /// Owns this thread's `Arc<KTask>` and unregisters on thread exit.
    static OWNER: Owner = const { Owner(Cell::new(None)) };
}

struct Owner(Cell<Option<Arc<KTask>>>);

impl Drop for Owner {
    fn drop(&mut self) {
        // Thread exit while registered: drop the registration so that no kernel path finds
        // a dead thread's (soon freed) task, and wake a server that waits for this worker
        // (`super::task_exited`, module doc of `kernel`). CURRENT first: a signal handler
        // or a later thread-local destructor must not find the registration any more.
        if let Some(k) = self.0.take() {
            CURRENT.with(|c| c.set(core::ptr::null()));
            super::task_exited(&k);
        }
    }
}

/// This thread's registration, if any.
pub(crate) fn current() -> Option<Arc<KTask>> {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` came from `Arc::into_raw`-free borrowing of the Arc that OWNER holds for as
    // long as CURRENT is non-null (both are cleared together by `unregister_current`).
    unsafe {
        Arc::increment_strong_count(p);
        Some(Arc::from_raw(p))
    }
}

/// This thread's registration as a raw pointer, without touching its reference count (for
/// the signal handler). Valid while the thread stays registered.
pub(crate) fn current_ptr() -> *const KTask {
    CURRENT.with(|c| c.get())
}

/// Whether the calling thread is registered (cheap: one TLS load).
pub(crate) fn is_registered() -> bool {
    !CURRENT.with(|c| c.get()).is_null()
}

/// Register the calling thread's `k`. Fails with `EINVAL` if the TID is taken (a stale
/// entry of a thread that exited without cleanup cannot exist: OWNER's destructor removes
/// it), or if another thread has registered the same `struct umcg_task` (v0.3 did not check;
/// two threads on one struct would share its state word, and its node could map to only one
/// of them, so unregistering either would drop the other's node). A worker node's tombstone
/// (TID 0, [`remove`]) is no registration: a task may be registered there again, and a
/// worker's registration replaces it.
pub(crate) fn register_current(k: KTask) -> Result<Arc<KTask>, Errno> {
    install_atfork();
    static GLOBAL_HASH: Once = Once::new();
    GLOBAL_HASH.call_once(crate::sys::futex::use_global_futex_hash);
    let k = Arc::new(k);
    {
        let mut t = write();
        let task = k.task();
        if t.by_tid.contains_key(&k.tid)
            || t.server_nodes.contains_key(&task.idle_servers_node())
            || t.worker_nodes
                .get(&task.idle_workers_node())
                .is_some_and(|&tid| tid != 0)
        {
            return Err(Errno::EINVAL);
        }
        t.by_tid.insert(k.tid, k.clone());
        if k.worker {
            t.worker_nodes.insert(task.idle_workers_node(), k.tid);
        } else {
            t.server_nodes.insert(task.idle_servers_node(), k.clone());
        }
    }
    CURRENT.with(|c| c.set(Arc::as_ptr(&k)));
    OWNER.with(|o| o.0.set(Some(k.clone())));
    Ok(k)
}

/// Unregister the calling thread. Waits for kernel paths that may hold its task (write lock).
pub(crate) fn unregister_current() -> Option<Arc<KTask>> {
    let k = OWNER.with(|o| o.0.take())?;
    CURRENT.with(|c| c.set(core::ptr::null()));
    remove(&k);
    Some(k)
}

/// Take `k` out of the table (write lock: waits for kernel paths that hold it).
///
/// A worker that leaves while it is still queued on an idle-worker list (its
/// `idle_workers_ptr` holds a link, not the head it was pushed on: after H5, user space has
/// not taken the list yet) keeps its node in `worker_nodes` as a tombstone (TID 0). A worker
/// queued after it holds this node's address as its link, and the wake hook's
/// double-enqueue guard must keep reading that value as a link: were it unknown, the guard
/// would take it for a head and push onto the departed worker's memory. The kernel never
/// dereferences worker nodes, so a tombstone is only an address; it is replaced when a new
/// worker registers a task there. One entry per worker that leaves queued.
pub(crate) fn remove(k: &Arc<KTask>) {
    let mut t = write();
    if t.by_tid.get(&k.tid).is_some_and(|e| Arc::ptr_eq(e, k)) {
        t.by_tid.remove(&k.tid);
    }
    let task = k.task();
    if k.worker {
        let node = task.idle_workers_node();
        let queued_on = k.queued_on.load(Ordering::Relaxed);
        if queued_on != 0 && task.idle_workers_ptr.load(Ordering::Acquire) != queued_on {
            t.worker_nodes.insert(node, 0);
        } else if t.worker_nodes.get(&node) == Some(&k.tid) {
            t.worker_nodes.remove(&node);
        }
    } else {
        t.server_nodes.remove(&task.idle_servers_node());
    }
}

/// Look up a registered task by TID.
pub(crate) fn lookup(tid: u32) -> Option<Arc<KTask>> {
    read().by_tid.get(&tid).cloned()
}

/// Number of registered tasks (diagnostics and tests).
pub fn registered_tasks() -> usize {
    read().by_tid.len()
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;

    /// A tombstone (a worker that left while queued) does not make its task's address
    /// unusable: a worker registers there again (replacing it), and so does a server, while
    /// a live registration of the same struct is refused.
    #[test]
    fn a_tombstone_does_not_block_a_new_registration() {
        std::thread::spawn(|| {
            let task: &'static UmcgTask = Box::leak(Box::new(UmcgTask::new_worker(0, 0)));
            let node = task.idle_workers_node();
            write().worker_nodes.insert(node, 0);
            let tid = crate::sys::gettid();
            let k = register_current(KTask::new(tid, task, true, None)).expect("over a tombstone");
            assert_eq!(read().worker_nodes.get(&node), Some(&tid));
            // The same struct, live, from another thread: refused.
            let other = std::thread::spawn(move || {
                register_current(KTask::new(crate::sys::gettid(), task, true, None)).err()
            });
            assert_eq!(other.join().unwrap(), Some(Errno::EINVAL));
            drop(k);
            unregister_current().unwrap();
            assert_eq!(read().worker_nodes.get(&node), None);
            // A server on a struct whose worker node is a tombstone.
            write().worker_nodes.insert(node, 0);
            register_current(KTask::new(tid, task, false, None)).expect("server over a tombstone");
            unregister_current().unwrap();
            write().worker_nodes.remove(&node);
        })
        .join()
        .unwrap();
    }
}
