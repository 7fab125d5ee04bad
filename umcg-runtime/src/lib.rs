//! The UMCG kernel interface (Generation A, v0.3) emulated in user space on futex and
//! eventfd, its C ABI, and an M:N threading library built on it.
//!
//! - [`kernel`]: the emulated system calls (`umcg_ctl`, `umcg_wait`) and the block and wake
//!   hooks, with v0.4+ timeouts, eventfd idle wakeup and same-CPU placement as extensions.
//! - [`sys`]: the only module that makes system calls.
//! - [`ffi`]: the C ABI declared in `include/umcg.h` (`syscall(2)`-style errno returns).

pub mod ffi;
pub mod kernel;
pub mod sys;
