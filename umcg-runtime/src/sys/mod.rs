//! The system-call layer: the only module of the runtime that enters the kernel.
//!
//! Everything above this module (the emulated UMCG kernel, the C ABI, the M:N library) calls
//! these typed wrappers instead of `libc`/`nix` directly, so that a `cfg(umcg_loom)` build can
//! swap the futex for a model (`model.rs`) and every other call stays in one reviewable place.
//! Linux x86-64 only.
//!
//! | module | system calls (each wrapper's doc names its man page) |
//! |---|---|
//! | [`futex`] | `futex(FUTEX_WAIT_BITSET)`, `futex(FUTEX_WAKE)`, `clock_gettime` |
//! | [`eventfd`] | `eventfd`, `read`, `write` |
//! | [`epoll`] | `epoll_create1`, `epoll_ctl`, `epoll_pwait2` (`epoll_wait` fallback) |
//! | [`thread`] | `gettid`, `tgkill`, `sched_{set,get}affinity`, `sched_getcpu`, `sysconf` |
//! | [`signal`] | `sigaction`, `pthread_sigmask`, `pthread_kill` |
//! | [`probe`] | `process_vm_readv` on our own pid |
//!
//! Conventions:
//! 1. Errors are [`Errno`]; no wrapper panics on a failed system call. Errnos a call may
//!    legitimately return are handled; any other one is a bug in the caller or here and is
//!    caught by a `debug_assert!` (the discipline of parking_lot's `thread_parker/linux.rs`).
//! 2. `EINTR` is returned to the caller, never retried here, except where a wrapper documents
//!    otherwise: the emulated `umcg_wait` must be able to report `EINTR` to its caller.
//! 3. File descriptors are created `CLOEXEC` and owned (`OwnedFd` inside nix's types).
//!
//! [`futex_wait`] and [`futex_wake`] are re-exported from [`futex`] normally and from
//! `model` (loom `Mutex` + `Condvar` keyed by address, `model.rs`) under `--cfg umcg_loom`.

pub mod epoll;
pub mod eventfd;
pub mod futex;
#[cfg(umcg_loom)]
pub mod model;
pub mod poll;
pub mod probe;
pub mod signal;
pub mod thread;

pub use nix::errno::Errno;

pub use epoll::{Epoll, EpollEvent};
pub use eventfd::EventFd;
pub use futex::{Deadline, FutexWait};
#[cfg(not(umcg_loom))]
pub use futex::{futex_wait, futex_wake};
#[cfg(umcg_loom)]
pub use model::{futex_wait, futex_wake};
pub use probe::probe_readable;
pub use thread::{
    allowed_cpus, current_cpu, gettid, nr_cpu_ids, pin_thread_to_cpu, pin_to_cpu, tgkill,
    thread_alive,
};
