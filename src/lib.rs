//! `umcg`: User-Managed Concurrency Groups emulated in user space, and an M:N threading
//! library on it.
//!
//! The M:N library is re-exported at the top level (`umcg::Runtime`, `umcg::spawn`,
//! `umcg::sync::Mutex`, `umcg::blocking`, ...); the crates are also available whole:
//! - [`abi`]: the `struct umcg_task` ABI and its lock-free idle lists (`umcg-abi`).
//! - [`runtime`]: the emulated kernel, its C ABI and the M:N library (`umcg-runtime`).

pub use umcg_abi as abi;
pub use umcg_runtime as runtime;

pub use umcg_runtime::{
    Builder, Current, Error, JoinError, JoinHandle, Runtime, Unparker, blocking, cancel, current,
    io, park, policy, sleep, spawn, sync, yield_now,
};
