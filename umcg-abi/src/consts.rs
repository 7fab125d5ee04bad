//! Constants of the UMCG ABI, Generation A (v0.3), with the kernel's names and values
//! (spec §2.2), plus the extensions this project adds from later generations.
//!
//! The v0.9.1 constants (whose values differ: its state mask is six bits and LOCKED is bit 6)
//! live in [`crate::v0_9`].

/// `state` low byte: the task is not a UMCG task (or has unregistered).
pub const UMCG_TASK_NONE: u32 = 0;
/// `state` low byte: the task runs (a worker with a server, or a server).
pub const UMCG_TASK_RUNNING: u32 = 1;
/// `state` low byte: the task waits to be run (in `umcg_wait`, or queued as an idle worker).
pub const UMCG_TASK_IDLE: u32 = 2;
/// `state` low byte: a worker sleeps in the kernel (workers only).
pub const UMCG_TASK_BLOCKED: u32 = 3;

/// The task state is the low byte of `state`.
pub const UMCG_TF_STATE_MASK: u32 = 0xff;
/// Worker locked by user space: block and wake detection are off; `umcg_wait` clears it
/// just before sleeping.
pub const UMCG_TF_LOCKED: u32 = 0x100;
/// Extension (not in v0.3; the value v0.4–v0.6 gave it): the worker was preempted by
/// `umcg_kick`.
pub const UMCG_TF_PREEMPTED: u32 = 0x200;
/// Bits 8–15: state flags.
pub const UMCG_TF_FLAGS_MASK: u32 = 0xff00;
/// Bits 16–23: reserved, must be zero.
pub const UMCG_TF_RESERVED_MASK: u32 = 0x00ff_0000;
/// Bits 24–31: free for user space.
pub const UMCG_TF_USER_MASK: u32 = 0xff00_0000;

/// `umcg_ctl` flag: register the calling thread.
pub const UMCG_CTL_REGISTER: u32 = 0x00001;
/// `umcg_ctl` flag: unregister the calling thread (alone, with `self == NULL`).
pub const UMCG_CTL_UNREGISTER: u32 = 0x00002;
/// `umcg_ctl` flag: together with `REGISTER`, register as a worker (else as a server).
pub const UMCG_CTL_WORKER: u32 = 0x10000;

/// `umcg_wait` flag: wake `next_tid` and return, without waiting.
pub const UMCG_WAIT_WAKE_ONLY: u32 = 1;
/// `umcg_wait` flag: place the wakee on the caller's CPU (only with `WAKE_ONLY`).
/// v0.2 spelled it `UMCG_WF_CURRENT_CPU`.
pub const UMCG_WAIT_WF_CURRENT_CPU: u32 = 2;

/// The only `api_version` v0.3 accepts; registration with another returns this value (+1).
pub const UMCG_API_VERSION: u32 = 1;

/// Offset of `idle_servers_ptr` in `struct umcg_task`: an idle-server node address minus this
/// is the server's task.
pub const UMCG_IDLE_SERVERS_NODE_OFFSET: usize = 16;
/// Offset of `idle_workers_ptr` in `struct umcg_task`.
pub const UMCG_IDLE_WORKERS_NODE_OFFSET: usize = 24;

/// Alignment and size of `struct umcg_task` (all generations).
pub const UMCG_TASK_ALIGN: usize = 64;
