//! Scheduling policies: which runnable worker a server runs next.
//!
//! A [`Policy`] only orders [`Runnable`] handles; it never touches the emulated kernel. The
//! runtime guarantees that a worker is pushed at most once until it is popped again (the
//! Tor KIST lesson: double enqueue is impossible by construction, see `worker.rs`), so a
//! policy needs no duplicate check of its own.
//!
//! Built in: [`GlobalFifo`] (one queue, strict arrival order) and [`PerServerFifo`] (a queue
//! per server, work stealing from the back of the others when the local one is empty).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::worker::WorkerCtl;

/// A runnable worker, as a policy sees it: an opaque handle with a stable id.
#[derive(Debug)]
pub struct Runnable(pub(crate) Arc<WorkerCtl>);

impl Runnable {
    /// The worker's id (unique in its runtime, stable across the jobs it runs).
    pub fn id(&self) -> usize {
        self.0.id
    }
}

/// Why a worker is pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Newly spawned, or woken from a park (a lock, a channel, a join).
    Woken,
    /// Back from a blocking call (it unblocked), or preempted at the end of its time slice.
    Unblocked,
    /// It yielded.
    Yielded,
}

/// A placement hint for [`Policy::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hint {
    /// The server the push comes from (it ran the worker last, or drained it), if any.
    pub server: Option<usize>,
    /// Why it is pushed.
    pub reason: Reason,
}

/// A scheduling policy. Implementations synchronise internally: `push` and `pop` are called
/// concurrently from every server and from any thread that wakes a worker.
pub trait Policy: Send + Sync + 'static {
    /// Called once by the builder with the number of servers, before any other call.
    fn init(&mut self, servers: usize) {
        let _ = servers;
    }
    /// A worker became runnable.
    fn push(&self, w: Runnable, hint: Hint);
    /// Server `server` asks for the next worker to run.
    fn pop(&self, server: usize) -> Option<Runnable>;
    /// Whether `pop(server)` could return a worker now (used before a server sleeps).
    fn has_work(&self, server: usize) -> bool;
}

/// One global FIFO queue.
#[derive(Debug, Default)]
pub struct GlobalFifo {
    q: Mutex<VecDeque<Runnable>>,
}

impl GlobalFifo {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for GlobalFifo {
    fn push(&self, w: Runnable, _hint: Hint) {
        lock(&self.q).push_back(w);
    }
    fn pop(&self, _server: usize) -> Option<Runnable> {
        lock(&self.q).pop_front()
    }
    fn has_work(&self, _server: usize) -> bool {
        !lock(&self.q).is_empty()
    }
}

/// A FIFO queue per server; an empty server steals from the back of another's queue.
#[derive(Debug, Default)]
pub struct PerServerFifo {
    qs: Vec<Mutex<VecDeque<Runnable>>>,
    rr: std::sync::atomic::AtomicUsize,
}

impl PerServerFifo {
    /// Queues are created by [`Policy::init`].
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for PerServerFifo {
    fn init(&mut self, servers: usize) {
        self.qs = (0..servers.max(1))
            .map(|_| Mutex::new(VecDeque::new()))
            .collect();
    }
    fn push(&self, w: Runnable, hint: Hint) {
        let n = self.qs.len();
        let i = match hint.server {
            Some(s) => s % n,
            None => self.rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n,
        };
        lock(&self.qs[i]).push_back(w);
    }
    fn pop(&self, server: usize) -> Option<Runnable> {
        let n = self.qs.len();
        let me = server % n;
        if let Some(w) = lock(&self.qs[me]).pop_front() {
            return Some(w);
        }
        (1..n).find_map(|k| lock(&self.qs[(me + k) % n]).pop_back())
    }
    fn has_work(&self, _server: usize) -> bool {
        self.qs.iter().any(|q| !lock(q).is_empty())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
