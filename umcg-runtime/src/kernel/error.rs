//! Errors of the emulated kernel: errno values (what the system calls return) and contract
//! violations (what the real kernel answered with SIGSEGV/SIGKILL, spec §2.5, §2.8).

use core::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

use umcg_abi::StateWord;
use umcg_abi::idle_servers::Corruption;
use umcg_abi::idle_workers::PushError;

use crate::sys::Errno;

/// What went wrong in an emulated UMCG call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UmcgError {
    /// The call failed with this errno, as the system call would have (`-1` and `errno` at
    /// the C boundary).
    Errno(Errno),
    /// The caller broke the UMCG contract in a way the real kernel punished by killing the
    /// task. Returned only under [`OnViolation::ReturnError`]; by default the process aborts.
    Violation(Violation),
}

impl From<Errno> for UmcgError {
    fn from(e: Errno) -> Self {
        UmcgError::Errno(e)
    }
}

impl fmt::Display for UmcgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UmcgError::Errno(e) => write!(f, "{} ({})", e.desc(), e),
            UmcgError::Violation(v) => v.fmt(f),
        }
    }
}

impl std::error::Error for UmcgError {}

/// A contract violation, with the task it concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What was violated.
    pub kind: ViolationKind,
    /// The thread running the hook that found it (the worker the kernel would kill).
    pub tid: u32,
    /// The thread whose task was found in a bad state, if another one (e.g. the server).
    pub other_tid: u32,
    /// The state word that was found, where one matters.
    pub state: Option<StateWord>,
}

/// The contract violations the emulator detects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// Block hook: the CAS RUNNING→BLOCKED of a worker failed (user space changed the word
    /// concurrently), §2.5.1 step 2.
    BlockTransitionRaced,
    /// Wake hook: the CAS of a worker to IDLE failed, §2.5.2 step 2.
    WakeTransitionRaced,
    /// A server to be woken was in neither exactly IDLE nor exactly RUNNING (H10).
    ServerStateInvalid,
    /// `server_tid` names no registered server.
    ServerNotFound,
    /// `idle_workers_ptr` is 0 where the kernel needs it (§2.5.2 step 3).
    IdleWorkersPtrNull,
    /// The idle-worker push found a malformed head (H6).
    IdleWorkersCorrupt(PushError),
    /// The idle-worker push lost `2 × nr_cpu_ids` CAS races (H3/H4).
    IdleWorkersContended,
    /// The idle-server pop found a corrupt list (tagged head, foreign node, cycle).
    IdleServersCorrupt(Corruption),
    /// The idle-server pop visited `2 × nr_cpu_ids` deleted nodes (H4: GC did not keep up).
    IdleServersBoundExceeded,
    /// A list head address points at unreadable memory.
    UnmappedListHead(u64),
    /// Eventfd idle-wakeup mode: user space closed the server's eventfd or epoll fd, or
    /// `dup2`ed another file over one of them (the errno that found it). Reported once, by
    /// the server's `umcg_wait`; the server then sleeps on its futex.
    IdleFdBroken(Errno),
    /// A list head address (`idle_servers_ptr` or `idle_workers_ptr`) is the node of a
    /// registered task: a stale link left in the field instead of a head address (H6).
    ListHeadIsNode(u64),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UMCG contract violation by task {}: ", self.tid)?;
        match self.kind {
            ViolationKind::BlockTransitionRaced => {
                f.write_str("block hook: RUNNING->BLOCKED lost a race with user space")?
            }
            ViolationKind::WakeTransitionRaced => {
                f.write_str("wake hook: the transition to IDLE lost a race with user space")?
            }
            ViolationKind::ServerStateInvalid => write!(
                f,
                "server {} is neither exactly IDLE nor exactly RUNNING",
                self.other_tid
            )?,
            ViolationKind::ServerNotFound => {
                write!(f, "server_tid {} is not a registered server", self.other_tid)?
            }
            ViolationKind::IdleWorkersPtrNull => f.write_str("idle_workers_ptr is 0")?,
            ViolationKind::IdleWorkersCorrupt(e) => {
                write!(f, "idle-worker list head is corrupt: {e:?}")?
            }
            ViolationKind::IdleWorkersContended => {
                f.write_str("idle-worker push lost 2 x nr_cpu_ids CAS races")?
            }
            ViolationKind::IdleServersCorrupt(c) => {
                write!(f, "idle-server list is corrupt: {c:?}")?
            }
            ViolationKind::IdleServersBoundExceeded => f.write_str(
                "idle-server pop visited 2 x nr_cpu_ids deleted nodes (user-space GC did not keep up)",
            )?,
            ViolationKind::UnmappedListHead(a) => {
                write!(f, "list head address {a:#x} is not readable")?
            }
            ViolationKind::IdleFdBroken(e) => write!(
                f,
                "the server's idle-wakeup eventfd or epoll fd was closed or replaced by user space ({e}); it now sleeps on its futex"
            )?,
            ViolationKind::ListHeadIsNode(a) => write!(
                f,
                "list head address {a:#x} is a registered task's list node, not a head (a stale link, H6)"
            )?,
        }
        if let Some(s) = self.state {
            write!(f, " (state {s:?})")?;
        }
        Ok(())
    }
}

/// What the emulator does on a contract violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnViolation {
    /// Print the violation to stderr and abort the process (the kernel's SIGSEGV/SIGKILL).
    Abort,
    /// Return [`UmcgError::Violation`] from the Rust API (for tests). The C API still aborts
    /// for violations found in `umcg_block_begin/end`, which return nothing.
    ReturnError,
}

static POLICY: AtomicU8 = AtomicU8::new(0);

/// Choose what a contract violation does, process-wide.
pub fn set_violation_policy(p: OnViolation) {
    POLICY.store(p as u8, Ordering::Relaxed);
}

/// The current violation policy.
pub fn violation_policy() -> OnViolation {
    match POLICY.load(Ordering::Relaxed) {
        0 => OnViolation::Abort,
        _ => OnViolation::ReturnError,
    }
}

/// Report `v` per the policy: abort, or hand it back as an error.
pub(crate) fn violation(v: Violation) -> UmcgError {
    if violation_policy() == OnViolation::Abort {
        // Straight to fd 2: `eprintln!` goes through the test harness's output capture,
        // which an abort would discard with the message.
        let msg = format!("umcg: {v}; aborting (the kernel would have killed the task)\n");
        // SAFETY: writing an initialised buffer of `msg.len()` bytes to fd 2.
        let _ = unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        std::process::abort();
    }
    UmcgError::Violation(v)
}
