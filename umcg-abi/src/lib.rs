//! The UMCG (User-Managed Concurrency Groups) ABI, as user space and the kernel share it,
//! without any system call.
//!
//! UMCG was proposed for Linux in 2021 (Peter Oskolkov) and never merged; the project's
//! specification is `shared/spec/UMCG.md`. This crate holds what both sides of the interface
//! agree on, in memory:
//!
//! - [`task`]: `struct umcg_task` of Generation A (v0.3), the layout the emulator implements,
//!   and a typed view of its `state` word with transition helpers.
//! - [`consts`]: every v0.3 constant with its kernel value, plus the `PREEMPTED` extension.
//! - [`idle_servers`]: the idle-server stack of v0.3 (§2.7.1): user-space push, the
//!   kernel-side pop that deletes by setting bit 0 of a node's link, bounded scans, and the
//!   user-space garbage collector. Hazards H1 (ABA) and H2 (GC racing a pop) are closed by
//!   design; the argument is in the module.
//! - [`idle_workers`]: the idle-worker stack of v0.3 (§2.7.2): kernel-side bounded CAS push,
//!   user-space take-all.
//! - [`v0_9`]: Generation C (v0.9.1): its `umcg_task` with the timestamped `state_ts` word,
//!   the single idle-server TID slot, and the wait-free PENDING push of the idle-worker list.
//!
//! Racy operations return enums that name every outcome; nothing here panics on bad input
//! found in shared memory (a cyclic list, a tagged head, a misaligned node).
//!
//! The emulated kernel that drives these structures lives in `umcg-runtime`.

pub mod consts;
pub mod idle_servers;
pub mod idle_workers;
pub mod sync;
pub mod task;
pub mod v0_9;

pub use consts::*;
pub use task::{StateWord, TaskState, UmcgTask};
