//! The C ABI of the emulated kernel: what a v0.3 C program calls instead of the two system
//! calls, plus the hooks a user-space emulator needs and the extensions of this project.
//!
//! The declarations are in `include/umcg.h`, generated from this file and from
//! `umcg_abi::UmcgTask` by cbindgen (configuration: `cbindgen.toml`; `tests/header.rs`
//! regenerates it and fails when the committed header is stale, `UPDATE_HEADER=1` rewrites
//! it). `tests/c_abi.rs` compiles and runs the C programs under `tests/c/` against the static
//! library.
//!
//! # Conventions
//!
//! 1. Calls that return `long` behave like `syscall(2)`: `0` on success, or `-1` with `errno`
//!    set. `umcg_ctl` also returns `1` (not an error) when the requested `api_version` is not
//!    supported, as v0.3 did.
//! 2. Contract violations, which the real kernel answered with `SIGSEGV`/`SIGKILL` (spec
//!    §2.5, §2.8), abort the process after a message on stderr. The emulated kernel already
//!    does so under its default policy ([`crate::kernel::OnViolation::Abort`]); should a
//!    violation reach this layer anyway (a Rust caller chose `ReturnError` in the same
//!    process), it aborts here.
//! 3. No panic crosses `extern "C"`: every body runs inside [`std::panic::catch_unwind`] (the
//!    idea of rustls-ffi's `panic.rs`). A panic is a bug in the emulator, found in the
//!    middle of a protocol step (a task half registered, a list half updated); the shared
//!    memory can no longer be trusted, so the process aborts after the panic message, like a
//!    violation. Returning `EFAULT` instead would let the program go on with corrupt state,
//!    and the `void` hooks could not report it at all.
//! 4. The hooks [`umcg_block_begin`] and [`umcg_block_end`] preserve `errno`, so that the
//!    `errno` of the blocking call they bracket survives them, as it would survive the real
//!    kernel's invisible hooks.
//!
//! # Constants
//!
//! The constants are repeated here with literal values because cbindgen only exports the
//! constants of the crate it generates for (and `umcg-abi` also defines v0.9.1 constants
//! with the same names); a compile-time assertion ties each one to `umcg_abi`.

use core::ffi::c_long;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};

use umcg_abi::UmcgTask;

use crate::kernel::{self, Ctl, IdleWakeup, UmcgError};
use crate::sys::Errno;

/// `state` low byte: not a UMCG task (or unregistered).
pub const UMCG_TASK_NONE: u32 = 0u32;
/// `state` low byte: the task runs (a server, or a worker with a server).
pub const UMCG_TASK_RUNNING: u32 = 1u32;
/// `state` low byte: the task waits to be run.
pub const UMCG_TASK_IDLE: u32 = 2u32;
/// `state` low byte: a worker sleeps in the kernel (workers only).
pub const UMCG_TASK_BLOCKED: u32 = 3u32;
/// The task state is the low byte of `state` (`0xff`).
pub const UMCG_TF_STATE_MASK: u32 = 0xffu32;
/// Worker locked by user space: block and wake detection are off; `umcg_wait` clears it
/// just before sleeping.
pub const UMCG_TF_LOCKED: u32 = 1u32 << 8;
/// Extension (not in v0.3; the value of v0.4-v0.6): the worker was preempted by
/// `umcg_kick`. The server clears it when it runs the worker again.
pub const UMCG_TF_PREEMPTED: u32 = 1u32 << 9;
/// Bits 8-15 of `state`: flags (`0xff00`).
pub const UMCG_TF_FLAGS_MASK: u32 = 0xffu32 << 8;
/// Bits 16-23 of `state`: reserved, must be zero (`0xff0000`).
pub const UMCG_TF_RESERVED_MASK: u32 = 0xffu32 << 16;
/// Bits 24-31 of `state` (`0xff000000`): free for user space (workers only: the kernel
/// compares a server's whole word).
pub const UMCG_TF_USER_MASK: u32 = 0xffu32 << 24;
/// `umcg_ctl` flag: register the calling thread.
pub const UMCG_CTL_REGISTER: u32 = 1u32;
/// `umcg_ctl` flag: unregister the calling thread (alone, with `self == NULL`).
pub const UMCG_CTL_UNREGISTER: u32 = 2u32;
/// `umcg_ctl` flag: with `UMCG_CTL_REGISTER`, register as a worker (else as a server).
pub const UMCG_CTL_WORKER: u32 = 1u32 << 16;
/// `umcg_wait` flag: wake `next_tid` and return without waiting.
pub const UMCG_WAIT_WAKE_ONLY: u32 = 1u32;
/// `umcg_wait` flag: place the wakee on the caller's CPU (only with `UMCG_WAIT_WAKE_ONLY`).
pub const UMCG_WAIT_WF_CURRENT_CPU: u32 = 2u32;
/// The only `api_version` v0.3 accepts (registration with another returns this value).
pub const UMCG_API_VERSION: u32 = 1u32;
/// Offset of `idle_servers_ptr` in `struct umcg_task`: an idle-server node minus this is
/// the server's task.
pub const UMCG_IDLE_SERVERS_NODE_OFFSET: usize = 16;
/// Offset of `idle_workers_ptr` in `struct umcg_task`: an idle-worker node minus this is
/// the worker's task.
pub const UMCG_IDLE_WORKERS_NODE_OFFSET: usize = 24;
/// Size and alignment of `struct umcg_task`.
pub const UMCG_TASK_ALIGN: usize = 64;
/// Extension: `umcg_set_idle_wakeup` mode of v0.3, a targeted wake of the server popped
/// from the idle-server list (the default).
pub const UMCG_IDLE_WAKEUP_LIST: u32 = 1u32;
/// Extension: `umcg_set_idle_wakeup` mode after Delisle's proposal, every idle server
/// sleeps on an eventfd of its own. The server is still chosen from the list.
pub const UMCG_IDLE_WAKEUP_EVENTFD: u32 = 2u32;

const _: () = {
    use umcg_abi::consts as abi;
    assert!(UMCG_TASK_NONE == abi::UMCG_TASK_NONE);
    assert!(UMCG_TASK_RUNNING == abi::UMCG_TASK_RUNNING);
    assert!(UMCG_TASK_IDLE == abi::UMCG_TASK_IDLE);
    assert!(UMCG_TASK_BLOCKED == abi::UMCG_TASK_BLOCKED);
    assert!(UMCG_TF_STATE_MASK == abi::UMCG_TF_STATE_MASK);
    assert!(UMCG_TF_LOCKED == abi::UMCG_TF_LOCKED);
    assert!(UMCG_TF_PREEMPTED == abi::UMCG_TF_PREEMPTED);
    assert!(UMCG_TF_FLAGS_MASK == abi::UMCG_TF_FLAGS_MASK);
    assert!(UMCG_TF_RESERVED_MASK == abi::UMCG_TF_RESERVED_MASK);
    assert!(UMCG_TF_USER_MASK == abi::UMCG_TF_USER_MASK);
    assert!(UMCG_CTL_REGISTER == abi::UMCG_CTL_REGISTER);
    assert!(UMCG_CTL_UNREGISTER == abi::UMCG_CTL_UNREGISTER);
    assert!(UMCG_CTL_WORKER == abi::UMCG_CTL_WORKER);
    assert!(UMCG_WAIT_WAKE_ONLY == abi::UMCG_WAIT_WAKE_ONLY);
    assert!(UMCG_WAIT_WF_CURRENT_CPU == abi::UMCG_WAIT_WF_CURRENT_CPU);
    assert!(UMCG_API_VERSION == abi::UMCG_API_VERSION);
    assert!(UMCG_IDLE_SERVERS_NODE_OFFSET == abi::UMCG_IDLE_SERVERS_NODE_OFFSET);
    assert!(UMCG_IDLE_WORKERS_NODE_OFFSET == abi::UMCG_IDLE_WORKERS_NODE_OFFSET);
    assert!(UMCG_TASK_ALIGN == abi::UMCG_TASK_ALIGN);
    assert!(UMCG_IDLE_WAKEUP_LIST == IdleWakeup::List as u32);
    assert!(UMCG_IDLE_WAKEUP_EVENTFD == IdleWakeup::EventFd as u32);
};

/// Run `f`, aborting the process if it panics (convention 3 of the module doc).
fn boundary<R>(name: &str, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            // The panic hook has printed the message already. Ignore a failing stderr: we
            // abort either way.
            let _ = writeln!(
                std::io::stderr(),
                "umcg: panic in {name} (a bug in the emulator); aborting"
            );
            std::process::abort()
        }
    }
}

/// Abort for a contract violation that reached the C boundary (convention 2).
fn abort_on(name: &str, e: UmcgError) -> ! {
    let _ = writeln!(
        std::io::stderr(),
        "umcg: {name}: {e}; aborting (the kernel would have killed the task)"
    );
    std::process::abort()
}

/// `-1` with `errno` set, or an abort for a violation.
fn fail(name: &str, e: UmcgError) -> c_long {
    match e {
        UmcgError::Errno(errno) => {
            errno.set();
            -1
        }
        UmcgError::Violation(_) => abort_on(name, e),
    }
}

/// Map the result of a call that returns nothing else to the `syscall(2)` convention.
fn ret(name: &str, r: Result<(), UmcgError>) -> c_long {
    match r {
        Ok(()) => 0,
        Err(e) => fail(name, e),
    }
}

/// Run a hook, keeping `errno` (convention 4); any error aborts, since the hooks return
/// nothing.
fn hook(name: &str, f: fn() -> Result<(), UmcgError>) {
    boundary(name, || {
        let saved = Errno::last_raw();
        if let Err(e) = f() {
            abort_on(name, e);
        }
        Errno::set_raw(saved);
    })
}

/// Register the calling thread as a UMCG server (`flags == UMCG_CTL_REGISTER`) or worker
/// (`UMCG_CTL_REGISTER | UMCG_CTL_WORKER`), or unregister it (`UMCG_CTL_UNREGISTER` with
/// `task == NULL`). The v0.3 `sys_umcg_ctl`.
///
/// Returns 0; 1 if `task->api_version` is not supported (not an error: 1 is the only
/// supported version); or -1 with errno: `EINVAL` for bad flags, a thread already
/// registered (or, on unregister, not registered), non-zero `server_tid`/`next_tid`, a
/// state other than exactly `UMCG_TASK_RUNNING` (server) / `UMCG_TASK_IDLE` (worker), or
/// (an extension: v0.3 did not check) a `task` that another thread has registered; `EFAULT`
/// for a NULL, misaligned or unreadable `task`.
///
/// A server writes its own TID into `server_tid` after registering. A worker needs non-zero
/// `idle_workers_ptr` (and usually `idle_servers_ptr`) head addresses; its registration is
/// queued on the idle-worker list, wakes an idle server, and returns only once a server has
/// made it `UMCG_TASK_RUNNING`.
///
/// # Safety
///
/// - If `task` passes the checks above, it points to a `struct umcg_task` that stays valid
///   and does not move until the calling thread unregisters or exits.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umcg_ctl(flags: u32, task: *mut UmcgTask) -> c_long {
    boundary("umcg_ctl", || {
        // SAFETY: the caller's contract is `kernel::umcg_ctl`'s, word for word.
        match unsafe { kernel::umcg_ctl(flags, task) } {
            Ok(Ctl::Done) => 0,
            Ok(Ctl::UnsupportedApiVersion(v)) => c_long::from(v),
            Err(e) => fail("umcg_ctl", e),
        }
    })
}

/// Context-switch, wait or wake. The v0.3 `sys_umcg_wait`, with the v0.4+ timeout.
///
/// `self` below is the caller's registered `struct umcg_task`.
///
/// With `UMCG_WAIT_WAKE_ONLY` (optionally `| UMCG_WAIT_WF_CURRENT_CPU`): wake the task
/// `self->next_tid` and return 0. The caller must already have written `UMCG_TASK_RUNNING`
/// into the wakee's state. `EINVAL` if `next_tid == 0`, `abs_timeout != 0` or other flags
/// are set; `ESRCH` if `next_tid` is not a registered UMCG task.
///
/// Otherwise (flags are not checked): wake `self->next_tid`, or, for a worker with
/// `next_tid == 0`, its `server_tid` (`ESRCH` if no such thread exists); clear the caller's
/// `UMCG_TF_LOCKED`; sleep until the caller's state is `UMCG_TASK_RUNNING`, then return 0.
/// The caller writes its own state (`UMCG_TASK_IDLE`, a worker ideally with
/// `UMCG_TF_LOCKED`) before the call.
///
/// `abs_timeout` is an extension (as in v0.4+; v0.3 answered `EOPNOTSUPP`): 0 = none,
/// else an absolute `CLOCK_REALTIME` time in nanoseconds; past it, `ETIMEDOUT` (a server
/// is then still `UMCG_TASK_IDLE`). `EINTR` if a signal handler ran. `EINVAL` if the caller is not
/// registered. Extension: a worker not queued on the idle-worker list gets `ESRCH` if its
/// `server_tid` names no registered server, or if that server unregisters or exits while the
/// worker waits (the worker is then `UMCG_TASK_IDLE` and on no list). In eventfd
/// idle-wakeup mode the emulator owns an eventfd and an epoll fd per server: if user space
/// closes either or `dup2`s over it, the server's next `umcg_wait` reports the contract
/// violation (the process aborts with a message; no wake is lost meanwhile).
#[unsafe(no_mangle)]
pub extern "C" fn umcg_wait(flags: u32, abs_timeout: u64) -> c_long {
    boundary("umcg_wait", || {
        ret("umcg_wait", kernel::umcg_wait(flags, abs_timeout))
    })
}

/// The kernel's block hook, which user space must call itself in the emulator: call it
/// right before a call that may sleep in the kernel (I/O, a futex, `nanosleep`, ...).
///
/// For a running worker that is not `UMCG_TF_LOCKED`: state `UMCG_TASK_RUNNING` ->
/// `UMCG_TASK_BLOCKED`, and its server (`server_tid`) is made `UMCG_TASK_RUNNING` and woken.
/// A no-op for other threads and states. Keeps `errno`. A contract violation aborts.
#[unsafe(no_mangle)]
pub extern "C" fn umcg_block_begin() {
    hook("umcg_block_begin", kernel::block_begin);
}

/// The kernel's wake hook: call it right after the call bracketed by `umcg_block_begin`
/// returns.
///
/// For a worker: state -> `UMCG_TASK_IDLE`, pushed on its idle-worker list, one idle server
/// popped from its idle-server list and woken; returns once a server has made the worker
/// `UMCG_TASK_RUNNING` again. As in v0.3 (hazard H5), a signal handler that runs meanwhile
/// ends the wait: the worker is then back in user code still `UMCG_TASK_IDLE` and queued,
/// and should wait in `umcg_wait(0, 0)`. A no-op for other threads. Keeps `errno`. A contract
/// violation aborts.
#[unsafe(no_mangle)]
pub extern "C" fn umcg_block_end() {
    hook("umcg_block_end", kernel::block_end);
}

/// Extension (preemption, after v0.9.1 and Zijlstra's `sys_umcg_kick`; v0.3 had none):
/// preempt the running worker `tid`.
///
/// The worker's state goes `UMCG_TASK_RUNNING` -> `UMCG_TASK_RUNNING | UMCG_TF_PREEMPTED`,
/// and at its next safe point (a signal interrupts it) `UMCG_TASK_IDLE | UMCG_TF_PREEMPTED`:
/// it is pushed on its idle-worker list and its own server is woken. The server clears
/// `UMCG_TF_PREEMPTED` when it runs the worker again.
///
/// Returns 0, or -1 with errno: `EINVAL` if `flags != 0` or `tid` is a server; `ESRCH` if
/// `tid` is not a registered task; `EAGAIN` if the worker is not exactly running (blocked,
/// idle, locked, or already preempted).
#[unsafe(no_mangle)]
pub extern "C" fn umcg_kick(flags: u32, tid: u32) -> c_long {
    boundary("umcg_kick", || {
        ret("umcg_kick", kernel::umcg_kick(flags, tid))
    })
}

/// Extension: choose how idle servers are woken, process-wide, while no task is registered:
/// `UMCG_IDLE_WAKEUP_LIST` (v0.3's targeted wake; the default) or `UMCG_IDLE_WAKEUP_EVENTFD`
/// (each idle server sleeps on an eventfd). Without a call, the first registration reads the
/// environment variable `UMCG_IDLE_WAKEUP` (`list` or `eventfd`).
///
/// Returns 0, or -1 with errno: `EINVAL` for another `mode`; `EBUSY` while any task is
/// registered.
#[unsafe(no_mangle)]
pub extern "C" fn umcg_set_idle_wakeup(mode: u32) -> c_long {
    boundary("umcg_set_idle_wakeup", || {
        let mode = match mode {
            UMCG_IDLE_WAKEUP_LIST => IdleWakeup::List,
            UMCG_IDLE_WAKEUP_EVENTFD => IdleWakeup::EventFd,
            _ => return fail("umcg_set_idle_wakeup", Errno::EINVAL.into()),
        };
        ret("umcg_set_idle_wakeup", kernel::set_idle_wakeup(mode))
    })
}
