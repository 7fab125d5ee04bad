//! `umcg`: User-Managed Concurrency Groups emulated in user space.
//!
//! This facade re-exports the workspace crates:
//! - [`abi`]: the `struct umcg_task` ABI and its lock-free idle lists (`umcg-abi`).
//! - [`runtime`]: the emulated kernel, its C ABI, and (to come) the M:N library
//!   (`umcg-runtime`).

pub use umcg_abi as abi;
pub use umcg_runtime as runtime;
