//! `umcg`: User-Managed Concurrency Groups emulated in user space.
//!
//! This facade re-exports the workspace crates:
//! - [`abi`]: the `struct umcg_task` ABI and its lock-free idle lists (`umcg-abi`).

pub use umcg_abi as abi;
