//! Preemption: `umcg_kick` (an extension beyond v0.3, after spec §4.5 and §5.3).
//!
//! The illumos lesson: a worker that never blocks or yields must not starve the others. The
//! real kernel preempted at the worker's next return to user mode; the emulator interrupts
//! the worker with a signal ([`KICK_SIGNAL`]) whose handler does, in the worker's thread,
//! what the kernel's return-to-user hook did.
//!
//! # Protocol
//!
//! 1. Kicker ([`umcg_kick`]): CAS the worker's state from RUNNING (no LOCKED, no PREEMPTED;
//!    user bits kept) to RUNNING|PREEMPTED, then `tgkill` it. A worker in any other state is
//!    not running user code: `EAGAIN`.
//! 2. Handler, in the worker: if the thread is inside the emulator (it holds the registry
//!    lock or is about to sleep in it) or inside a [`no_preempt`] section, only note that a
//!    kick is pending; the emulator and the section check on their way out (the deferral
//!    LOCKED gives user space, applied to the emulator's own critical sections).
//! 3. Otherwise, and when the deferred check runs: if the state is still RUNNING|PREEMPTED,
//!    CAS it to IDLE|PREEMPTED, push the worker on its idle-worker list (never twice),
//!    `fence(SeqCst)`, wake **its own server** (exactly IDLE→RUNNING), and sleep until RUNNING
//!    (signals do not end this wait). Spec §4.5: "the preempted case both queues the worker
//!    on the idle list and wakes its own server".
//! 4. The server finds its worker IDLE|PREEMPTED (already queued: it must not queue it
//!    itself) and clears PREEMPTED when it runs it again. A server that kicks on a tick
//!    (`umcg_wait` with a timeout returned `ETIMEDOUT`, leaving it IDLE) must stay IDLE and
//!    wait again after the kick: the worker leaving the CPU (step 3, or a block or yield that
//!    raced with the kick, which then fails with `EAGAIN`) makes it RUNNING exactly once. A
//!    server that made itself RUNNING first would have that wake land in its *next* idle
//!    period (the v0.9.1 hazard libumcg spins around). A worker that blocks before the
//!    signal lands goes RUNNING|PREEMPTED→BLOCKED|PREEMPTED in the block hook and the signal
//!    then finds nothing to do.
//!
//! # Async-signal safety
//!
//! The handler touches only const-initialised thread-locals (no lazy initialisation, no
//! destructor), atomics on the task, and raw futex/eventfd system calls, and it preserves
//! `errno`. Its one lock, the registry's read lock, cannot be held by the interrupted thread
//! itself (that is what step 2 defers), so the handler at worst waits for another thread to
//! release it. It never allocates.
//!
//! What the emulator cannot see: a worker preempted while it holds a lock that other workers
//! then wait for *in the kernel without the block hook* (glibc's malloc arena lock, stdio)
//! leaves those waits invisible to its server. Code that takes such locks in a loop should
//! run inside [`no_preempt`]; the M:N library's own primitives park through the emulator.

use core::cell::Cell;
use std::sync::Once;
use std::sync::atomic::{Ordering, compiler_fence, fence};

use umcg_abi::*;

use super::registry::{self, KTask};
use super::{UmcgError, enqueue_worker, sleep_until_running, wake_server};
use crate::sys::{self, Errno, signal::Signal};

/// The signal that carries a kick. `SIGURG` (as Go's runtime uses for its asynchronous
/// preemption): programs rarely use it and its default action is to ignore it, so a stray
/// one is harmless. Installed with `SA_RESTART` at the first worker registration.
pub const KICK_SIGNAL: Signal = Signal::SIGURG;

thread_local! {
    /// Depth of emulator calls on this thread (non-zero: defer kicks).
    static IN_EMULATOR: Cell<u32> = const { Cell::new(0) };
    /// Depth of `no_preempt` sections (non-zero: defer kicks).
    static NO_PREEMPT: Cell<u32> = const { Cell::new(0) };
    /// A kick arrived while deferred.
    static KICK_PENDING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as inside the emulator for its lifetime.
pub(crate) struct EmulatorSection(());

impl EmulatorSection {
    pub(crate) fn enter() -> Self {
        IN_EMULATOR.with(|d| d.set(d.get() + 1));
        // The handler runs on this thread: keep the compiler from moving the critical code
        // above the depth update.
        compiler_fence(Ordering::SeqCst);
        EmulatorSection(())
    }
}

impl Drop for EmulatorSection {
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        let depth = IN_EMULATOR.with(|d| {
            let n = d.get() - 1;
            d.set(n);
            n
        });
        compiler_fence(Ordering::SeqCst);
        if depth == 0 {
            run_pending_kick();
        }
    }
}

fn run_pending_kick() {
    if NO_PREEMPT.with(|n| n.get()) == 0 && KICK_PENDING.with(|p| p.replace(false)) {
        preempt_now();
    }
}

/// Run `f` with preemption deferred: a kick that arrives meanwhile takes effect when `f`
/// returns. For code that holds locks other workers may wait for invisibly.
pub fn no_preempt<R>(f: impl FnOnce() -> R) -> R {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            compiler_fence(Ordering::SeqCst);
            let n = NO_PREEMPT.with(|n| {
                let v = n.get() - 1;
                n.set(v);
                v
            });
            compiler_fence(Ordering::SeqCst);
            if n == 0 && IN_EMULATOR.with(|d| d.get()) == 0 {
                run_pending_kick();
            }
        }
    }
    NO_PREEMPT.with(|n| n.set(n.get() + 1));
    compiler_fence(Ordering::SeqCst);
    let _g = Guard;
    f()
}

static INSTALL: Once = Once::new();

/// Install the kick handler (once per process).
pub(crate) fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: `on_kick` is async-signal-safe (module doc); SIGURG is documented as
        // taken by the emulator.
        let r = unsafe { sys::signal::install_restarting_handler(KICK_SIGNAL, on_kick) };
        debug_assert!(r.is_ok(), "installing the kick handler: {r:?}");
    });
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let saved = sys::signal::errno();
    if IN_EMULATOR.with(|d| d.get()) > 0 || NO_PREEMPT.with(|n| n.get()) > 0 {
        KICK_PENDING.with(|p| p.set(true));
    } else {
        preempt_now();
    }
    sys::signal::set_errno(saved);
}

/// Step 3 of the protocol, in the worker's own thread.
fn preempt_now() {
    let p = registry::current_ptr();
    if p.is_null() {
        return;
    }
    // SAFETY: a non-null current pointer is this thread's registration, kept alive by its
    // thread-local owner until this thread unregisters, which it cannot do while it runs
    // this code.
    let me = unsafe { &*p };
    if !me.worker {
        return;
    }
    loop {
        IN_EMULATOR.with(|d| d.set(d.get() + 1));
        compiler_fence(Ordering::SeqCst);
        // Violations abort under the default policy; under ReturnError there is no caller
        // to return them to from a signal handler, and the worker simply keeps running.
        let _ = preempt(me);
        compiler_fence(Ordering::SeqCst);
        IN_EMULATOR.with(|d| d.set(d.get() - 1));
        compiler_fence(Ordering::SeqCst);
        // A kick that arrived while `preempt` slept (the worker was run again and kicked
        // before this thread got back here: the handler only noted it) must not be lost:
        // the kicker saw RUNNING|PREEMPTED and will not kick again (it gets EAGAIN), so a
        // worker that went back to user code with it pending would never be preempted.
        if NO_PREEMPT.with(|n| n.get()) != 0 || !KICK_PENDING.with(|p| p.replace(false)) {
            return;
        }
    }
}

fn preempt(me: &KTask) -> Result<(), UmcgError> {
    let t = me.task();
    let w = t.load_state();
    if w.state() != TaskState::Running || !w.is_preempted() || w.is_locked() {
        return Ok(()); // Blocked, yielded or locked meanwhile: nothing to do.
    }
    // The server to wake is the one this run belongs to: read it before the worker becomes
    // IDLE and queued. Once queued, another server may drain it and run it again (writing
    // its own TID here); waking *that* server would wake it while it runs this worker, and
    // leave this run's server asleep for ever.
    let stid = t.server_tid.load(Ordering::Acquire);
    // RUNNING|PREEMPTED=>IDLE|PREEMPTED.
    if t.transition_once(w, TaskState::Running, TaskState::Idle)
        .is_err()
    {
        return Ok(()); // User space changed the word meanwhile; the kick is moot.
    }
    {
        let table = registry::read();
        enqueue_worker(me, &table)?;
        fence(Ordering::SeqCst);
        if let Some(s) = table.by_tid.get(&stid).filter(|s| !s.worker) {
            wake_server(me, s, &table)?;
        }
    }
    // Sleep until a server runs it again; signals do not end this wait.
    sleep_until_running(me, false);
    Ok(())
}

/// `umcg_kick(flags, tid)`: preempt the running worker `tid` (an extension: v0.3 had no
/// preemption; semantics after v0.9.1's T7 and Zijlstra's `sys_umcg_kick`).
///
/// `EINVAL`: `flags != 0`, or `tid` is a server. `ESRCH`: `tid` is not a registered task.
/// `EAGAIN`: the worker is not exactly RUNNING (it is blocked, idle, LOCKED, or already
/// PREEMPTED). On success the worker ends IDLE|PREEMPTED, queued on its idle-worker list,
/// and its server is woken.
pub fn umcg_kick(flags: u32, tid: u32) -> Result<(), UmcgError> {
    let _section = EmulatorSection::enter();
    if flags != 0 {
        return Err(Errno::EINVAL.into());
    }
    let table = registry::read();
    let Some(k) = table.by_tid.get(&tid) else {
        return Err(Errno::ESRCH.into());
    };
    if !k.worker {
        return Err(Errno::EINVAL.into());
    }
    let t = k.task();
    let mut w = t.load_state();
    loop {
        if w.state() != TaskState::Running || w.is_locked() || w.is_preempted() {
            return Err(Errno::EAGAIN.into());
        }
        // RUNNING=>RUNNING|PREEMPTED.
        match t.cas_word(w, w.with_flags(UMCG_TF_PREEMPTED)) {
            Ok(_) => break,
            Err(seen) => w = seen,
        }
    }
    let tid = k.tid;
    drop(table);
    sys::tgkill(tid, KICK_SIGNAL).map_err(UmcgError::from)
}
