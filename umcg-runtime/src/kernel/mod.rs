//! The emulated UMCG kernel, Generation A (v0.3): `umcg_ctl`, `umcg_wait`, and the block and
//! wake hooks, run in the calling thread (spec §2.3–§2.7).
//!
//! What the real kernel did inside the scheduler, the emulator does in the thread that
//! triggers it. The contract user space sees is v0.3's, with the extensions listed below.
//!
//! # Sleeping and waking
//!
//! Every "idle loop" of the spec is a futex wait on the task's own `state` word with the
//! predicate "state is RUNNING"; every "wake T" is a store of T's new state by whoever
//! initiates the transition, then a futex wake of T's word. A waiter re-reads its state
//! after the kernel compared it, so a wake can never be lost (spec §2.4, "wait/wake ordering
//! rule"). In eventfd idle-wakeup mode, servers sleep in `epoll_wait` on an eventfd of their
//! own instead and wakes write to it; the counter persists, so the same argument holds.
//!
//! # Protocols, as the kernel ran them
//!
//! Block hook ([`block_begin`], §2.5.1), for a registered worker not inside a hook:
//! 1. LOCKED, or a state other than RUNNING: nothing.
//! 2. CAS RUNNING→BLOCKED keeping the other bits (a lost race is a violation).
//! 3. `server_tid == 0`: done. Else CAS the server exactly IDLE→exactly RUNNING and wake it
//!    (exactly RUNNING: nothing; anything else: a violation, H10).
//!
//! Wake hook ([`block_end`], worker registration, and a worker woken in `umcg_wait` while
//! not RUNNING; §2.5.2):
//! 1. LOCKED, or RUNNING with a server: nothing (the normal return from `umcg_wait`).
//! 2. CAS the state to IDLE keeping the other bits.
//! 3. Push the worker on the idle-worker list at `idle_workers_ptr` (bounded CAS), unless it
//!    is still queued from an earlier push: a worker is never on the list twice (the Tor
//!    KIST lesson; after H5 a queued worker can come back into the kernel while queued).
//! 4. `fence(SeqCst)`, then pop one server from the idle-server list at `idle_servers_ptr`
//!    (nodes validated against the registry) and wake it as in the block hook.
//! 5. Idle loop until RUNNING; a signal ends it early (H5), spurious wakes do not re-queue.
//!
//! # Extensions beyond v0.3
//!
//! - `abs_timeout` (v0.4+): absolute `CLOCK_REALTIME` ns, `ETIMEDOUT`. A server times out
//!   still IDLE. A worker that times out while IDLE goes IDLE→BLOCKED and through the wake
//!   hook (queued, an idle server woken), and sees `ETIMEDOUT` only once a server runs it
//!   again (spec §4.3 steps 5–7). v0.3 answered any timeout with `EOPNOTSUPP`.
//! - Idle-server wakeup by eventfd ([`IdleWakeup::EventFd`]): the server is still chosen from
//!   the user's list and made RUNNING before it is woken, so user space sees the same
//!   states; only the wakeup path differs.
//! - Preemption ([`umcg_kick`], `UMCG_TF_PREEMPTED`): see the `preempt` module below.
//! - Same-CPU placement ([`Placement::SameCpu`], the emulation of `WF_CURRENT_CPU`): a worker
//!   woken by a context switch is pinned to the waker's CPU before the wake, when it differs.
//!
//! # fork
//!
//! As in the kernel (spec §4.6), the child of a `fork` is not registered: the forking thread
//! is the child's only thread and its registration is dropped (`umcg_wait` returns
//! `EINVAL`), the child's task table is empty, and the parent is unaffected. The child may
//! register anew. Shared lists copied into the child still name the parent's tasks; the
//! child's kernel rejects those nodes (they are not in its registry).
//!
//! # Exit while registered
//!
//! v0.3's kernel forgot a thread that exited registered and woke nobody (spec §4.6: user
//! space must unregister first, and a server waiting for an exited worker slept for ever).
//! The emulator does better, in the thread's last thread-local destructor ([`task_exited`]):
//! 1. It unregisters the task (write lock: after this no kernel path can find it). A worker
//!    still queued on an idle-worker list leaves a tombstone for its node (`registry`), so
//!    that the wake hook never takes that address for a list head and writes through it.
//! 2. A worker's state becomes NONE (flags cleared, user bits kept), the state later ABIs
//!    give an unregistered task: a server that finds it on a list or in a run queue can tell
//!    it is gone, and switching to it fails (its CAS IDLE→RUNNING, or `ESRCH` once the thread
//!    is gone).
//! 3. If the worker was RUNNING, its server is waiting in `umcg_wait` for it to leave the
//!    CPU: exactly IDLE→exactly RUNNING and wake it, as `UNREGISTER|WORKER` does in the later
//!    ABIs (spec §5.3). IDLE|LOCKED (the worker was handing the CPU back itself): wake it
//!    without a state change (a harmless spurious wake if it is awake). BLOCKED (the block
//!    hook woke it) and IDLE (queued, or held by user space): nobody.
//!
//! # A server that leaves
//!
//! v0.3 has no per-server queues in the kernel: a worker that hands its server the CPU
//! (yield, swap, leave through `umcg_wait` while not queued on the idle-worker list) waits
//! in that server's *user-space* run queue. If the server unregisters or exits first, the
//! worker would sleep for ever. The emulator ends such a wait:
//! 1. A worker entering `umcg_wait`'s idle loop while not queued records its `server_tid`
//!    (`waiting_on`), then checks under the registry lock that it names a registered
//!    server; if not: `ESRCH` at once (its state unchanged, after the target was woken).
//!    The lookup is skipped while no server left since the worker last found this one
//!    registered (a process-wide departure count, SeqCst on both sides: `note_waiting_on`):
//!    a worker's wait is the hot path of every yield, park and direct switch, and the
//!    registry lock is a cache line that every lookup writes.
//! 2. A server that leaves ([`umcg_ctl`] `UNREGISTER`, or [`task_exited`]) is first
//!    removed from the registry, then flags every worker whose `waiting_on` names it and
//!    wakes it until it has left `umcg_wait` (a wake that lands just before the worker's
//!    futex wait would be lost; the waker repeats it, bounded by one second). Either the
//!    worker's check in step 1 saw the server gone, or the server's scan sees the worker.
//! 3. The flagged worker's `umcg_wait` returns `ESRCH` unless it was made RUNNING first.
//!    It is then IDLE and on no list: user space that shared its run queue with other
//!    servers can just wait again after fixing `server_tid`; otherwise the worker puts
//!    itself back on its idle-worker list the v0.3 way, by making itself RUNNING with
//!    `server_tid == 0` and calling `umcg_wait` (the wake hook queues it and wakes an idle
//!    server, §2.6).
//!
//! Workers queued on the idle-worker list are not affected (any server may take them), nor
//! are workers RUNNING on the server (it abandoned them: when they block, the block hook
//! reports `ServerNotFound`, as v0.3 would have).
//!
//! # Idle-wakeup fds that user space closes
//!
//! In eventfd idle-wakeup mode each server owns an eventfd registered in an epoll instance
//! of its own, created at registration, deleted from the epoll set and closed when the
//! server unregisters or exits (so a process that registers and unregisters servers keeps
//! its fd count). They belong to the emulator like a library's internal fds, but nothing
//! stops user space from closing them or `dup2`ing another file over their numbers. The
//! emulator never sleeps for ever or closes a file it does not own because of it:
//! 1. Identity: epoll keys its interest list by file *and* fd number, so
//!    `epoll_ctl(EPOLL_CTL_MOD)` of the eventfd's number fails (`ENOENT`, `EBADF`,
//!    `EINVAL`) as soon as either number was closed or names another file.
//! 2. A sleeping server checks that every [`registry::IDLE_FD_CHECK`] (1 s) of sleep; its
//!    `epoll_wait` failing (`EBADF`, `EINVAL`) or a waker's eventfd write failing (`EBADF`)
//!    also marks the fds broken. A wake written to a closed eventfd is therefore late by at
//!    most that interval, never lost.
//! 3. The server's next `umcg_wait` reports it, once: [`ViolationKind::IdleFdBroken`]
//!    (abort by default; under [`OnViolation::ReturnError`] that wait returns the error,
//!    with the server's state as it is). From then on the server sleeps on its state word's
//!    futex and wakers wake that futex, as in list mode: the server keeps working.
//! 4. On unregistration or exit the fds are closed only if the epoll delete succeeds (the
//!    proof that both numbers are still the emulator's); otherwise neither number is closed
//!    (they may name user space's files now).
//!
//! Not detected: between a replacement (a `dup2` of another *writable* file over the
//! eventfd's number) and the server's detection (its next sleep, or the 1 s check), a waker
//! writes its 8-byte wake into whatever file now has that number, as any library would
//! whose fd was replaced under it. After the detection no write goes there.
//!
//! Hence the contract of [`umcg_ctl`]: a task stays valid until its thread unregisters or,
//! if it never does, until the thread's thread-local destructors have run. A task on the
//! thread's own stack must be unregistered before the thread function returns.
//!
//! Contract violations the kernel answered with SIGSEGV/SIGKILL are reported with a message
//! naming the violation and the task, then the process aborts, or, under
//! [`OnViolation::ReturnError`], they come back as [`UmcgError::Violation`].

mod error;
mod preempt;
pub(crate) mod registry;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering, fence};

use umcg_abi::idle_servers::{self, Corruption, Pop};
use umcg_abi::idle_workers::{self, WorkerPush};
use umcg_abi::*;

use crate::sys::{self, Deadline, Errno, FutexWait};

use error::violation;
pub use error::{
    OnViolation, UmcgError, Violation, ViolationKind, set_violation_policy, violation_policy,
};
use preempt::EmulatorSection;
pub use preempt::{KICK_SIGNAL, no_preempt, umcg_kick};
use registry::{IdleFd, IdleWait, KTask, Table};
pub use registry::{fork_generation, registered_tasks};

/// How idle servers are woken when a worker unblocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum IdleWakeup {
    /// v0.3: the server popped from the tag-bit list is CASed IDLE→RUNNING and woken with a
    /// targeted futex wake.
    List = 1,
    /// Delisle's proposal: every server sleeps in `epoll_wait` on its own eventfd; the waker
    /// writes to it.
    EventFd = 2,
}

/// Where a worker runs when it is switched to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On the waker's CPU (the emulation of `WF_CURRENT_CPU`): pin the wakee there before the
    /// wake, with a syscall only when its pinned CPU differs.
    SameCpu,
    /// Wherever the Linux scheduler puts it.
    Free,
}

/// What `umcg_ctl` returned when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctl {
    /// Registered or unregistered (the system call returned 0).
    Done,
    /// The requested `api_version` is not supported; the system call returned this value,
    /// the highest supported version (+1).
    UnsupportedApiVersion(u32),
}

const MODE_UNSET: u8 = 0;
static IDLE_WAKEUP: AtomicU8 = AtomicU8::new(MODE_UNSET);
static PLACEMENT: AtomicU8 = AtomicU8::new(MODE_UNSET);

/// Select the idle-server wakeup mode, process-wide, while no task is registered (otherwise
/// `EBUSY`). Without a call, the first registration reads the environment variable
/// `UMCG_IDLE_WAKEUP` (`list` or `eventfd`; default `list`). A server keeps the wake channel
/// of the mode in force when it registered, so changing modes between runs of a process
/// (as the benchmarks do) is safe.
pub fn set_idle_wakeup(mode: IdleWakeup) -> Result<(), UmcgError> {
    if registered_tasks() != 0 {
        return Err(Errno::EBUSY.into());
    }
    IDLE_WAKEUP.store(mode as u8, Ordering::Release);
    Ok(())
}

/// The idle-server wakeup mode in force (resolving the default on first use).
pub fn idle_wakeup() -> IdleWakeup {
    let mut m = IDLE_WAKEUP.load(Ordering::Acquire);
    if m == MODE_UNSET {
        let want = match std::env::var("UMCG_IDLE_WAKEUP").as_deref() {
            Ok("eventfd") => IdleWakeup::EventFd,
            _ => IdleWakeup::List,
        };
        m = match IDLE_WAKEUP.compare_exchange(
            MODE_UNSET,
            want as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => want as u8,
            Err(cur) => cur,
        };
    }
    if m == IdleWakeup::EventFd as u8 {
        IdleWakeup::EventFd
    } else {
        IdleWakeup::List
    }
}

/// Select worker placement, process-wide (default: [`Placement::SameCpu`], or `Free` when
/// the environment variable `UMCG_PLACEMENT=free`). May be changed at any time.
pub fn set_placement(p: Placement) {
    PLACEMENT.store(
        if p == Placement::SameCpu { 1 } else { 2 },
        Ordering::Relaxed,
    );
}

/// The placement in force.
pub fn placement() -> Placement {
    let mut m = PLACEMENT.load(Ordering::Relaxed);
    if m == MODE_UNSET {
        m = if std::env::var("UMCG_PLACEMENT").as_deref() == Ok("free") {
            2
        } else {
            1
        };
        PLACEMENT.store(m, Ordering::Relaxed);
    }
    if m == 1 {
        Placement::SameCpu
    } else {
        Placement::Free
    }
}

/// The list bound of v0.3: `2 × nr_cpu_ids` (possible CPUs).
pub fn list_bound() -> usize {
    static B: OnceLock<usize> = OnceLock::new();
    *B.get_or_init(|| 2 * sys::nr_cpu_ids())
}

thread_local! {
    /// The worker mark is cleared while a hook runs (prevents recursion, §2.5.2 step 1).
    static IN_HOOK: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

struct HookGuard;

impl HookGuard {
    fn enter() -> Option<HookGuard> {
        if IN_HOOK.with(|h| h.replace(true)) {
            None
        } else {
            Some(HookGuard)
        }
    }
}

impl Drop for HookGuard {
    fn drop(&mut self) {
        IN_HOOK.with(|h| h.set(false));
    }
}

fn v(kind: ViolationKind, me: &KTask, other: u32, state: Option<StateWord>) -> UmcgError {
    violation(Violation {
        kind,
        tid: me.tid,
        other_tid: other,
        state,
    })
}

// ------------------------------------------------------------------------------------------
// umcg_ctl

/// `sys_umcg_ctl(flags, self)` of v0.3 (spec §2.3): register the calling thread as a server
/// or a worker, or unregister it.
///
/// Checks run in the kernel's order: flags (`EINVAL`), already registered (`EINVAL`), `self`
/// NULL, misaligned or unreadable (`EFAULT`, probed without touching it), `api_version != 1`
/// ([`Ctl::UnsupportedApiVersion`]), `server_tid`/`next_tid` non-zero (`EINVAL`), state
/// (`EINVAL`); then, an extension, `self` already registered by another thread (`EINVAL`).
/// A worker registration runs the wake hook and returns only once a server has made the
/// worker RUNNING.
///
/// # Safety
/// - If `task` passes the checks, it points to a `struct umcg_task` that stays valid and
///   does not move until the calling thread unregisters or, if it exits registered, until
///   its thread-local destructors have run (one of them unregisters it and writes its state:
///   module doc, "Exit while registered"). A task on the thread's stack must therefore be
///   unregistered before the thread function returns.
pub unsafe fn umcg_ctl(flags: u32, task: *mut UmcgTask) -> Result<Ctl, UmcgError> {
    let _section = EmulatorSection::enter();
    if flags == UMCG_CTL_UNREGISTER {
        if !task.is_null() || !registry::is_registered() {
            return Err(Errno::EINVAL.into());
        }
        if let Some(k) = registry::unregister_current()
            && !k.worker
        {
            server_left(&k);
        }
        return Ok(Ctl::Done);
    }
    if flags & UMCG_CTL_REGISTER == 0 || flags & !(UMCG_CTL_REGISTER | UMCG_CTL_WORKER) != 0 {
        return Err(Errno::EINVAL.into());
    }
    if registry::is_registered() {
        return Err(Errno::EINVAL.into());
    }
    let addr = task.expose_provenance();
    if task.is_null()
        || !addr.is_multiple_of(UMCG_TASK_ALIGN)
        || sys::probe_readable(addr, core::mem::size_of::<UmcgTask>()).is_err()
    {
        return Err(Errno::EFAULT.into());
    }
    // SAFETY: non-null, aligned and readable; the caller keeps it valid while registered.
    let t = unsafe { &*task };
    if t.api_version.load(Ordering::Acquire) != UMCG_API_VERSION {
        return Ok(Ctl::UnsupportedApiVersion(UMCG_API_VERSION));
    }
    if t.server_tid.load(Ordering::Acquire) != 0 || t.next_tid.load(Ordering::Acquire) != 0 {
        return Err(Errno::EINVAL.into());
    }
    let worker = flags & UMCG_CTL_WORKER != 0;
    let want = if worker {
        UMCG_TASK_IDLE
    } else {
        UMCG_TASK_RUNNING
    };
    if t.state.load(Ordering::Acquire) != want {
        return Err(Errno::EINVAL.into());
    }
    let idle_fd = if !worker && idle_wakeup() == IdleWakeup::EventFd {
        Some(IdleFd::new()?)
    } else {
        None
    };
    if worker {
        preempt::install_handler();
    }
    let me = registry::register_current(KTask::new(sys::gettid(), task, worker, idle_fd))?;
    if worker && wake_hook(&me)? {
        // §2.3 step 6: the wake hook, synchronously; return only once RUNNING. A signal
        // ended the hook's wait (H5) but does not end a registration (the issue asks for
        // the stronger guarantee): wait on, without running the hook again. A server may
        // already have taken the worker off the list; a second hook would queue it twice.
        sleep_until_running(&me, false);
    }
    Ok(Ctl::Done)
}

/// A registered thread is exiting without having unregistered (module doc, "Exit while
/// registered"); called once, from its thread-local owner's destructor.
pub(super) fn task_exited(k: &std::sync::Arc<KTask>) {
    let _section = EmulatorSection::enter();
    registry::remove(k);
    if !k.worker {
        server_left(k);
        return;
    }
    let t = k.task();
    // Any state=>NONE, flags cleared, user bits kept. Racing writers (a server making it
    // RUNNING, a kicker setting PREEMPTED) are seen by the retry.
    let mut w = t.load_state();
    loop {
        let none = w
            .with_state(TaskState::None)
            .without_flags(UMCG_TF_LOCKED | UMCG_TF_PREEMPTED);
        match t.cas_word(w, none) {
            Ok(_) => break,
            Err(seen) => w = seen,
        }
    }
    let stid = t.server_tid.load(Ordering::Acquire);
    let table = registry::read();
    let Some(s) = table.by_tid.get(&stid).filter(|s| !s.worker) else {
        return;
    };
    match w.state() {
        TaskState::Running => {
            // IDLE=>RUNNING (exactly); already RUNNING or anything else: leave it.
            let _ = s
                .task()
                .cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING));
            wake_task(s, false);
        }
        TaskState::Idle if w.is_locked() => wake_task(s, false),
        _ => {}
    }
}

/// Step 2 of "A server that leaves" (module doc): `k`, a server, is out of the registry.
fn server_left(k: &KTask) {
    // After the removal, before the scan: a worker whose check (step 1) read the old count
    // stored its `waiting_on` before this increment, so the scan below sees it (SeqCst
    // store/load on both sides); one that reads the new count looks the server up.
    SERVER_DEPARTURES.fetch_add(1, Ordering::SeqCst);
    let waiters: Vec<std::sync::Arc<KTask>> = registry::read()
        .by_tid
        .values()
        .filter(|w| w.worker && w.waiting_on.load(Ordering::SeqCst) == k.tid)
        .cloned()
        .collect();
    let t0 = sys::futex::monotonic_now_ns();
    for w in &waiters {
        w.server_left.store(k.tid, Ordering::SeqCst);
        loop {
            {
                // Its task is only touched while it is registered (lifetime rule).
                let table = registry::read();
                if !table
                    .by_tid
                    .get(&w.tid)
                    .is_some_and(|e| std::sync::Arc::ptr_eq(e, w))
                {
                    break;
                }
                sys::futex_wake(&w.task().state, i32::MAX);
            }
            if w.waiting_on.load(Ordering::SeqCst) != k.tid
                || sys::futex::monotonic_now_ns() - t0 > 1_000_000_000
            {
                break;
            }
            std::thread::sleep(core::time::Duration::from_micros(50));
        }
    }
}

/// How many servers left (unregistered or exited) in this process; see [`server_left`].
static SERVER_DEPARTURES: AtomicU64 = AtomicU64::new(0);

/// Step 1 of "A server that leaves" (module doc), for a worker about to wait.
///
/// Memory ordering: the worker's SeqCst store of `waiting_on` then SeqCst load of
/// [`SERVER_DEPARTURES`], against the leaving server's registry removal (write lock), SeqCst
/// increment, then SeqCst loads of `waiting_on` in its scan. In the single total order of
/// SeqCst operations, either the worker's load comes before the increment (then so does its
/// store, and the scan sees `waiting_on`), or it reads the increment (Acquire of the RMW's
/// Release: the removal happened before, and the lookup below, under the read lock, misses
/// the server). A count equal to the one of the last successful lookup of the same server
/// therefore proves the server has not left since.
fn note_waiting_on(me: &KTask) -> Result<(), Errno> {
    let t = me.task();
    let stid = t.server_tid.load(Ordering::Acquire);
    let queued_on = me.queued_on.load(Ordering::Relaxed);
    if stid == 0 || (queued_on != 0 && t.idle_workers_ptr.load(Ordering::Acquire) != queued_on) {
        return Ok(()); // No server yet, or queued: any server may take it.
    }
    // A flag left by an earlier departure (set after that wait had already ended, or seen
    // by it) must not end this wait: the same TID may have registered again as a server.
    // Cleared before `waiting_on` is published, so a scan that reads the new `waiting_on`
    // writes its flag after this clear (both SeqCst on `server_left`'s modification order).
    if me.server_left.load(Ordering::Relaxed) != 0 {
        me.server_left.store(0, Ordering::SeqCst);
    }
    me.waiting_on.store(stid, Ordering::SeqCst);
    let departures = SERVER_DEPARTURES.load(Ordering::SeqCst);
    // `checked_*` are written and read by this thread only (Relaxed).
    if me.checked_server.load(Ordering::Relaxed) == stid
        && me.checked_departures.load(Ordering::Relaxed) == departures
    {
        return Ok(());
    }
    if registry::read()
        .by_tid
        .get(&stid)
        .is_some_and(|s| !s.worker)
    {
        me.checked_server.store(stid, Ordering::Relaxed);
        me.checked_departures.store(departures, Ordering::Relaxed);
        Ok(())
    } else {
        me.waiting_on.store(0, Ordering::SeqCst);
        Err(Errno::ESRCH)
    }
}

// ------------------------------------------------------------------------------------------
// umcg_wait

/// `sys_umcg_wait(flags, abs_timeout)` of v0.3 (spec §2.4), with v0.4+ timeouts.
///
/// With `UMCG_WAIT_WAKE_ONLY`: wake `next_tid` and return (`EINVAL` for `next_tid == 0`, a
/// timeout, or flags other than `WF_CURRENT_CPU`; `ESRCH` if it is not a registered task).
/// Otherwise: wake `next_tid` (or, for a worker with `next_tid == 0`, its `server_tid`;
/// `ESRCH` if no such thread exists), clear the caller's LOCKED (worker), and sleep until the
/// caller's state is RUNNING. `EINTR` if a signal handler ran; `ETIMEDOUT` past
/// `abs_timeout` (absolute `CLOCK_REALTIME` ns, 0 = none). Extension: a worker that is not
/// queued on the idle-worker list gets `ESRCH` if its `server_tid` names no registered
/// server, or if that server unregisters or exits while it waits (module doc, "A server
/// that leaves").
pub fn umcg_wait(flags: u32, abs_timeout: u64) -> Result<(), UmcgError> {
    let _section = EmulatorSection::enter();
    let Some(me) = registry::current() else {
        return Err(Errno::EINVAL.into());
    };
    let t = me.task();
    let next = t.next_tid.load(Ordering::Acquire);
    if flags & UMCG_WAIT_WAKE_ONLY != 0 {
        if next == 0
            || abs_timeout != 0
            || flags & !(UMCG_WAIT_WAKE_ONLY | UMCG_WAIT_WF_CURRENT_CPU) != 0
        {
            return Err(Errno::EINVAL.into());
        }
        let Some(k) = registry::lookup(next) else {
            return Err(Errno::ESRCH.into());
        };
        // A wake-up event for the target's idle loop (Release: pairs with its Acquire swap).
        k.wake_events.fetch_add(1, Ordering::Release);
        wake_task(&k, flags & UMCG_WAIT_WF_CURRENT_CPU != 0);
        return Ok(());
    }
    let target = if next == 0 && me.worker {
        t.server_tid.load(Ordering::Acquire)
    } else {
        next
    };
    if target != 0 {
        match registry::lookup(target) {
            Some(k) => wake_task(&k, true),
            // Not a UMCG task: the kernel wakes it anyway (a no-op for us); gone: ESRCH.
            None if sys::thread_alive(target) => {}
            None => return Err(Errno::ESRCH.into()),
        }
    }
    if me.worker {
        note_waiting_on(&me)?;
        let w = t.load_state();
        if w.is_locked() && t.clear_flags_if(w.state(), UMCG_TF_LOCKED).is_err() {
            me.waiting_on.store(0, Ordering::SeqCst);
            return Err(Errno::EFAULT.into());
        }
    }
    let deadline = (abs_timeout != 0).then_some(Deadline::Realtime(abs_timeout));
    let r = idle_loop(&me, deadline);
    if me.worker {
        me.waiting_on.store(0, Ordering::SeqCst);
    }
    match r {
        Ok(()) => Ok(()),
        Err(UmcgError::Errno(Errno::ETIMEDOUT)) if me.worker => worker_timed_out(&me),
        Err(e) => Err(e),
    }
}

/// The idle loop of `umcg_wait` (§2.4 step 6): sleep until RUNNING.
///
/// A worker woken by a wake-up event (`WAKE_ONLY` aimed at it) while not RUNNING goes
/// through the wake hook, which queues it (§2.6: "IDLE → IDLE + queued"); so does a worker
/// made RUNNING without a server. The kernel also ran the hook on truly spurious wake-ups;
/// the emulator does not treat a stale futex wake (a waker's `futex_wake` arriving after the
/// wakee already ran and slept again) as one, because a futex gives no way to tell them apart
/// and such a wake would queue a worker that its scheduler still holds.
fn idle_loop(me: &KTask, deadline: Option<Deadline>) -> Result<(), UmcgError> {
    let t = me.task();
    loop {
        let w = t.load_state();
        if w.state() == TaskState::Running {
            if me.worker && t.server_tid.load(Ordering::Acquire) == 0 && !w.is_locked() {
                // RUNNING without a server: the wake hook queues it (§2.5.2 step 2).
                match wake_hook(me) {
                    Ok(true) => return Err(Errno::EINTR.into()),
                    Ok(false) => continue,
                    Err(_) => return Err(Errno::EFAULT.into()),
                }
            }
            left_running(me);
            return Ok(());
        }
        if me.worker && {
            let on = me.waiting_on.load(Ordering::SeqCst);
            on != 0 && me.server_left.load(Ordering::SeqCst) == on
        } {
            return Err(Errno::ESRCH.into()); // The server it waits on left (module doc).
        }
        match sleep(me, w, deadline)? {
            FutexWait::ValueChanged => {}
            FutexWait::Woken => {
                if me.worker
                    && me.wake_events.swap(0, Ordering::Acquire) > 0
                    && t.load_state().state() != TaskState::Running
                {
                    match wake_hook(me) {
                        Ok(true) => return Err(Errno::EINTR.into()),
                        Ok(false) => {}
                        // Violations abort by default; in test mode surface as EFAULT here
                        // (the real kernel would have killed the task).
                        Err(_) => return Err(Errno::EFAULT.into()),
                    }
                }
            }
            FutexWait::Interrupted => return Err(Errno::EINTR.into()),
            FutexWait::TimedOut => return Err(Errno::ETIMEDOUT.into()),
        }
    }
}

/// Worker epilogue of a timeout (spec §4.3 step 6, adapted to v0.3's hooks).
fn worker_timed_out(me: &KTask) -> Result<(), UmcgError> {
    let t = me.task();
    // IDLE=>BLOCKED, unless someone made it RUNNING meanwhile (then the timeout is moot).
    match t.transition(TaskState::Idle, TaskState::Blocked) {
        Ok(_) => {}
        Err(w) if w.state() == TaskState::Running => return Ok(()),
        Err(w) => return Err(v(ViolationKind::WakeTransitionRaced, me, 0, Some(w))),
    }
    // BLOCKED=>IDLE, queued, an idle server woken; wait until a server runs it.
    loop {
        let interrupted = wake_hook(me)?;
        if t.load_state().state() == TaskState::Running {
            return Err(Errno::ETIMEDOUT.into());
        }
        if interrupted {
            return Err(Errno::EINTR.into());
        }
    }
}

/// Sleep on the task's wake channel while its state word still holds `seen`.
///
/// A server whose idle-wakeup fds user space closed or replaced sleeps on the futex instead
/// (wakers fall back too), after reporting it once ([`ViolationKind::IdleFdBroken`]; module
/// doc, "Idle-wakeup fds that user space closes").
fn sleep(me: &KTask, seen: StateWord, deadline: Option<Deadline>) -> Result<FutexWait, UmcgError> {
    let Some(fd) = &me.idle_fd else {
        return Ok(sys::futex_wait(&me.task().state, seen.bits(), deadline));
    };
    let report = |e| Err(v(ViolationKind::IdleFdBroken(e), me, 0, None));
    if let Some(e) = fd.take_report() {
        return report(e);
    }
    if fd.is_broken() {
        return Ok(sys::futex_wait(&me.task().state, seen.bits(), deadline));
    }
    let timeout = match deadline.map(Deadline::remaining) {
        None => None,
        Some(None) => return Ok(FutexWait::TimedOut),
        Some(left) => left,
    };
    if me.task().load_state() != seen {
        return Ok(FutexWait::ValueChanged);
    }
    match fd.wait(timeout) {
        IdleWait::Futex(w) => Ok(w),
        IdleWait::Broken(_) => match fd.take_report() {
            Some(e) => report(e),
            None => Ok(FutexWait::Woken), // Reported already: re-check the state word.
        },
    }
}

/// "wake T": the caller has already stored T's new state.
fn wake_task(k: &KTask, on_current_cpu: bool) {
    if let Some(fd) = &k.idle_fd
        && fd.signal().is_ok()
    {
        return;
    }
    // Futex mode, or a server whose fds are broken (it sleeps on the futex from its next
    // wait on; one already asleep in epoll_wait finds out within `IDLE_FD_CHECK`).
    if on_current_cpu && k.worker && placement() == Placement::SameCpu {
        let cpu = sys::current_cpu() as i32;
        if k.cpu.load(Ordering::Relaxed) != cpu
            && sys::pin_thread_to_cpu(k.tid, cpu as usize).is_ok()
        {
            k.cpu.store(cpu, Ordering::Relaxed);
        }
    }
    // Wake every waiter: only T's thread sleeps on its word in our protocol, but a user
    // monitor waiting on the same word must not take T's wake.
    sys::futex_wake(&k.task().state, i32::MAX);
}

/// Wake a server as the hooks do (§2.5.1 step 4): exactly IDLE=>exactly RUNNING, then wake.
/// The caller holds the registry read lock (`_table`) so the server cannot unregister.
fn wake_server(me: &KTask, server: &KTask, _table: &Table) -> Result<(), UmcgError> {
    let s = server.task();
    match s.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING)) {
        Ok(_) => {
            wake_task(server, true);
            Ok(())
        }
        // Already running: give up silently (H8 when popped from the list).
        Err(w) if w.bits() == UMCG_TASK_RUNNING => Ok(()),
        Err(w) => Err(v(
            ViolationKind::ServerStateInvalid,
            me,
            server.tid,
            Some(w),
        )),
    }
}

// ------------------------------------------------------------------------------------------
// Hooks

/// The kernel's block hook (§2.5.1): call before a call that may sleep. A no-op for threads
/// that are not registered workers, inside a hook, LOCKED, or not RUNNING.
pub fn block_begin() -> Result<(), UmcgError> {
    let _section = EmulatorSection::enter();
    let Some(me) = registry::current() else {
        return Ok(());
    };
    if !me.worker || IN_HOOK.with(|h| h.get()) {
        return Ok(());
    }
    let t = me.task();
    let w = t.load_state();
    if w.is_locked() || w.state() != TaskState::Running {
        return Ok(());
    }
    // RUNNING=>BLOCKED, keeping flags and user bits. A kick may set PREEMPTED between the
    // read and the CAS (the one change user space may make to a running worker's word):
    // re-read and retry once, as the later generations' block hook does (spec §3, step 5),
    // so RUNNING|PREEMPTED becomes BLOCKED|PREEMPTED. A second failure is a violation.
    if let Err(seen) = t.transition_once(w, TaskState::Running, TaskState::Blocked) {
        if seen.is_locked() {
            return Ok(()); // LOCKED meanwhile: the hook does nothing (step 1).
        }
        if let Err(seen) = t.transition_once(seen, TaskState::Running, TaskState::Blocked) {
            return Err(v(ViolationKind::BlockTransitionRaced, &me, 0, Some(seen)));
        }
    }
    let stid = t.server_tid.load(Ordering::Acquire);
    if stid == 0 {
        return Ok(());
    }
    let table = registry::read();
    match table.by_tid.get(&stid) {
        Some(s) if !s.worker => wake_server(&me, s, &table),
        _ => Err(v(ViolationKind::ServerNotFound, &me, stid, None)),
    }
}

/// The kernel's wake hook (§2.5.2): call after a call bracketed by [`block_begin`] returns.
/// Returns once a server has made the worker RUNNING again (or a signal handler ran: the
/// worker is then IDLE and still queued, hazard H5).
pub fn block_end() -> Result<(), UmcgError> {
    let _section = EmulatorSection::enter();
    let Some(me) = registry::current() else {
        return Ok(());
    };
    if !me.worker {
        return Ok(());
    }
    wake_hook(&me).map(|_| ())
}

/// Run `f`, a call that may sleep in the kernel, between the block and wake hooks.
///
/// Unlike a bare [`block_end`], this never returns while the worker is still IDLE and
/// queued: if a signal handler ends the wake hook's wait (hazard H5), it goes on waiting
/// until a server runs the worker. Returning early would let the worker run user code
/// beside the worker its server runs next.
///
/// If `f` panics, the wake hook still runs while the panic unwinds (its error, if any, is
/// dropped): a worker must never go on running user code BLOCKED, beside the worker its
/// server runs meanwhile.
pub fn blocking<R>(f: impl FnOnce() -> R) -> Result<R, UmcgError> {
    struct WakeOnUnwind;
    impl Drop for WakeOnUnwind {
        fn drop(&mut self) {
            let _ = end_blocking();
        }
    }
    block_begin()?;
    let guard = WakeOnUnwind;
    let r = f();
    core::mem::forget(guard);
    end_blocking()?;
    Ok(r)
}

/// The tail of [`blocking`]: the wake hook, then (H5) wait until run.
fn end_blocking() -> Result<(), UmcgError> {
    let _section = EmulatorSection::enter();
    if let Some(me) = registry::current()
        && me.worker
        && wake_hook(&me)?
    {
        // H5: queued and IDLE; someone will make it RUNNING.
        sleep_until_running(&me, false);
    }
    Ok(())
}

/// The idle loop of the hooks: sleep on the task's state word until it is RUNNING (spurious
/// wakes loop). With `stop_on_signal`, a signal handler ends the wait (v0.3's H5); returns
/// whether it did.
fn sleep_until_running(me: &KTask, stop_on_signal: bool) -> bool {
    let t = me.task();
    loop {
        let w = t.load_state();
        if w.state() == TaskState::Running {
            left_running(me);
            return false;
        }
        if sys::futex_wait(&t.state, w.bits(), None) == FutexWait::Interrupted && stop_on_signal {
            return true;
        }
    }
}

/// A worker leaves the kernel RUNNING: a server (user space) made it so, which it does only
/// to a worker it took off the idle-worker list. From now on the worker is not queued, so the
/// double-enqueue guard of [`enqueue_worker`] no longer applies: its field must hold a head
/// again the next time it is pushed (a worker that goes back to user space still queued,
/// H5, keeps `queued_on`).
fn left_running(me: &KTask) {
    if me.worker {
        me.queued_on.store(0, Ordering::Relaxed);
    }
}

/// §2.5.2. Returns whether its idle loop was ended by a signal (H5).
fn wake_hook(me: &KTask) -> Result<bool, UmcgError> {
    let Some(_guard) = HookGuard::enter() else {
        return Ok(false);
    };
    let t = me.task();
    let w = t.load_state();
    if w.is_locked() {
        return Ok(false);
    }
    if w.state() == TaskState::Running && t.server_tid.load(Ordering::Acquire) != 0 {
        return Ok(false);
    }
    match w.state() {
        TaskState::Blocked | TaskState::Idle | TaskState::Running => {
            // BLOCKED=>IDLE, IDLE=>IDLE, RUNNING(no server)=>IDLE.
            // A kick may set PREEMPTED on a RUNNING (serverless) worker between the read
            // and the CAS: retry once, like the block hook.
            if let Err(seen) = t
                .transition_once(w, w.state(), TaskState::Idle)
                .or_else(|seen| t.transition_once(seen, w.state(), TaskState::Idle))
            {
                return Err(v(ViolationKind::WakeTransitionRaced, me, 0, Some(seen)));
            }
        }
        _ => return Err(v(ViolationKind::WakeTransitionRaced, me, 0, Some(w))),
    }
    let table = registry::read();
    enqueue_worker(me, &table)?;
    // §2.5.2 step 4: the push must be visible before the idle-server list is read. Pairs
    // with the fence a server issues between pushing itself and re-checking idle workers.
    fence(Ordering::SeqCst);
    wake_idle_server(me, &table)?;
    drop(table);
    // Idle loop until RUNNING; spurious wakes loop, a signal ends it (H5).
    Ok(sleep_until_running(me, true))
}

/// §2.5.2 step 3, with the double-enqueue guard and the head address validated.
fn enqueue_worker(me: &KTask, table: &Table) -> Result<(), UmcgError> {
    let t = me.task();
    let node = t.idle_workers_node();
    let h = t.idle_workers_ptr.load(Ordering::Acquire);
    let queued_on = me.queued_on.load(Ordering::Relaxed);
    if queued_on != 0
        && h != queued_on
        && h != node
        && (h == 0 || table.worker_nodes.contains_key(&h))
    {
        // The worker went back to user space while queued (H5), and the field still holds a
        // link (0 = last node, or another worker's node): it is on the list from that push,
        // which user space has not taken yet. Pushing it again would corrupt the list; it is
        // already where the hook wants it. (A worker that left the kernel RUNNING was taken
        // off the list: `queued_on` is 0 and its field must hold a head again.)
        return Ok(());
    }
    if h == 0 {
        return Err(v(ViolationKind::IdleWorkersPtrNull, me, 0, None));
    }
    // A malformed `h` (tagged, misaligned, the worker's own node) is refused by the push
    // below before any dereference, with its own kind.
    if h.is_multiple_of(8) && h != node && me.checked_workers_head.load(Ordering::Relaxed) != h {
        check_list_head(me, table, h)?;
        me.checked_workers_head.store(h, Ordering::Relaxed);
    }
    // SAFETY: a well-formed `h` is not a registered task's node and was readable; user space
    // keeps its head word alive while workers point at it (the contract the kernel relied
    // on). The push does not read the field again: only this checked `h` is dereferenced.
    match unsafe { idle_workers::push_worker_onto(t, h, list_bound() as u32) } {
        Ok(WorkerPush::Pushed { .. }) => {
            me.queued_on.store(h, Ordering::Relaxed);
            Ok(())
        }
        Ok(WorkerPush::Contended) => Err(v(ViolationKind::IdleWorkersContended, me, 0, None)),
        Err(e) => Err(v(ViolationKind::IdleWorkersCorrupt(e), me, 0, None)),
    }
}

/// A list head address (`idle_workers_ptr` or `idle_servers_ptr`, aligned) that this task has
/// not used before: it must not be a registered task's node (a stale link left in the field,
/// H6: the kernel would have pushed onto, or popped from, that task's link word), and it
/// must be readable. Checked once per new head (the caller caches it), so the hot path pays
/// a compare.
fn check_list_head(me: &KTask, table: &Table, h: u64) -> Result<(), UmcgError> {
    if table.server_nodes.contains_key(&h) || table.worker_nodes.contains_key(&h) {
        return Err(v(ViolationKind::ListHeadIsNode(h), me, 0, None));
    }
    if sys::probe_readable(h as usize, 8).is_err() {
        return Err(v(ViolationKind::UnmappedListHead(h), me, 0, None));
    }
    Ok(())
}

/// §2.5.2 steps 5–6: pop an idle server and wake it.
fn wake_idle_server(me: &KTask, table: &Table) -> Result<(), UmcgError> {
    let t = me.task();
    let hs = t.idle_servers_ptr.load(Ordering::Acquire);
    if hs == 0 {
        return Ok(()); // No idle-server list (H9: treated as "no server").
    }
    // A misaligned (or tagged) `hs` is refused by the pop before any dereference.
    if hs.is_multiple_of(8) && me.checked_servers_head.load(Ordering::Relaxed) != hs {
        check_list_head(me, table, hs)?;
        me.checked_servers_head.store(hs, Ordering::Relaxed);
    }
    let registered_server = |n: u64| table.server_nodes.contains_key(&n);
    // SAFETY: an aligned `hs` was readable (user space keeps it alive while workers point at
    // it); every node is validated against the registry, whose read lock we hold, so it is
    // a registered server's live task for the whole pop.
    let pop = unsafe { idle_servers::pop_raw(hs, list_bound(), registered_server) };
    match pop {
        Pop::Got(node) => match table.server_nodes.get(&node.addr()) {
            Some(s) => wake_server(me, s, table),
            None => Err(v(
                ViolationKind::IdleServersCorrupt(Corruption::InvalidNode(node.addr())),
                me,
                0,
                None,
            )),
        },
        Pop::Empty => Ok(()),
        Pop::BoundExceeded => {
            // A cycle of deleted nodes exhausts the bound too; only the report differs.
            // SAFETY: as for the pop (same head, same validator, lock still held).
            let cycle =
                unsafe { idle_servers::find_cycle(hs, 4 * list_bound(), registered_server) };
            let kind = match cycle {
                Some(n) => ViolationKind::IdleServersCorrupt(Corruption::Cycle(n)),
                None => ViolationKind::IdleServersBoundExceeded,
            };
            Err(v(kind, me, 0, None))
        }
        Pop::Corrupt(c) => Err(v(ViolationKind::IdleServersCorrupt(c), me, 0, None)),
    }
}

/// Wake registered task `tid` from any thread, registered or not: the "wake T" of the
/// kernel (futex wake of its state word, or its eventfd), after the caller stored T's new
/// state. An extension for runtimes built on the emulator: v0.3 offers this only as
/// `WAKE_ONLY`, which requires the caller to be registered. `ESRCH` if `tid` is not a
/// registered task.
pub fn wake(tid: u32) -> Result<(), UmcgError> {
    let _section = EmulatorSection::enter();
    let table = registry::read();
    let Some(k) = table.by_tid.get(&tid) else {
        return Err(Errno::ESRCH.into());
    };
    wake_task(k, false);
    Ok(())
}

/// Eventfd idle-wakeup mode: the (eventfd, epoll fd) numbers of registered server `tid`;
/// `None` if it is not a registered server with such fds. For tests and diagnostics: the
/// fds belong to the emulator (module doc, "Idle-wakeup fds that user space closes").
pub fn idle_fds(tid: u32) -> Option<(i32, i32)> {
    let table = registry::read();
    table
        .by_tid
        .get(&tid)?
        .idle_fd
        .as_ref()
        .map(|f| f.raw_fds())
}

/// The calling thread's TID as the emulator knows it (0 if not registered).
pub fn current_tid() -> u32 {
    registry::current().map_or(0, |k| k.tid)
}
