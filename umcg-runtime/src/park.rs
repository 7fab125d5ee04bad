//! Parking that works in both worlds: a runtime worker parks through its server (an IDLE
//! transition the server sees; the thread sleeps in `umcg_wait`, and its server runs another
//! worker), any other thread parks in the kernel with `std::thread::park`.
//!
//! The building block of `JoinHandle::join` and of the `sync` primitives. Like
//! `std::thread::park`, [`park`] may return spuriously: callers loop on their condition.

use std::sync::Arc;

use crate::runtime::Shared;
use crate::worker::{self, WorkerCtl};

/// Wakes one parked worker or thread.
#[derive(Clone)]
pub struct Unparker(Inner);

#[derive(Clone)]
enum Inner {
    Worker(Arc<Shared>, Arc<WorkerCtl>),
    Thread(std::thread::Thread),
}

impl std::fmt::Debug for Unparker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Worker(_, w) => write!(f, "Unparker(worker {})", w.id),
            Inner::Thread(t) => write!(f, "Unparker(thread {:?})", t.id()),
        }
    }
}

impl Unparker {
    /// The unparker of the calling worker or thread.
    pub fn current() -> Unparker {
        match worker::current_worker() {
            Some((sh, w)) => Unparker(Inner::Worker(sh, w)),
            None => Unparker(Inner::Thread(std::thread::current())),
        }
    }

    /// Make its owner's current or next [`park`] return. A worker is made runnable (queued
    /// at most once) and an idle server woken.
    pub fn unpark(&self) {
        match &self.0 {
            Inner::Worker(sh, w) => crate::kernel::no_preempt(|| worker::unpark(sh, w)),
            Inner::Thread(t) => t.unpark(),
        }
    }
}

/// Park the calling worker (through its server) or thread until unparked; may return
/// spuriously.
pub fn park() {
    match worker::current_worker() {
        Some((sh, w)) => worker::park_current(&sh, &w),
        None => std::thread::park(),
    }
}
