//! The one place that names atomics: std's, or loom's under `cfg(umcg_loom)`. Public so that
//! `umcg-runtime` uses the very same types (its futex wrapper takes these `AtomicU32`s).
//!
//! Every other module imports `crate::sync::*`, so a loom build model-checks exactly the code
//! that ships. Loom atomics are handles, not values (a loom `AtomicU32` is not four bytes), so
//! layout assertions elsewhere are `#[cfg(not(umcg_loom))]`.
//!
//! `spin_loop` is the hint for busy-wait loops. Under loom it yields to the model scheduler,
//! as loom requires of every spin loop (otherwise the model never lets the other thread run).

#[cfg(umcg_loom)]
pub use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(not(umcg_loom))]
pub use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// Busy-wait hint; a model-scheduler yield under loom.
#[inline]
pub fn spin_loop() {
    #[cfg(umcg_loom)]
    loom::thread::yield_now();
    #[cfg(not(umcg_loom))]
    core::hint::spin_loop();
}
