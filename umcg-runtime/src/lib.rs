//! The UMCG kernel interface (Generation A, v0.3) emulated in user space on futex and
//! eventfd, its C ABI, and an M:N threading library built on it.
//!
//! Status: the system-call layer (`sys`) is being built; the emulated kernel, C ABI and M:N
//! library follow (issues 3 and 4).

pub mod sys;
