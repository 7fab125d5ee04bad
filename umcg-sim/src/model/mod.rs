//! A discrete-event simulation of C CPUs, one server pinned to each, serving open-loop
//! Poisson unblock events through one idle-wakeup [`Mechanism`], with costs from a
//! [`Calibration`] (every cost a measured baseline figure; [`calib`] names each). The
//! handoff latencies are distributions measured in the workload's own conditions
//! ([`crate::baseline::handoffs`]), sampled per event; the CPU costs are microbenchmark
//! figures.
//!
//! # What is simulated
//!
//! 1. Arrivals: Poisson at `λ = load × C / compute`; an arrival's time is the worker's
//!    timestamp after its blocking sleep returned (as in the harness). The worker runs on its
//!    previous CPU, drawn uniformly, if that CPU is idle; if it is busy and another CPU is
//!    idle, it runs on a random idle CPU except for `stay_on_busy_pct` percent of the time
//!    (the scheduler's placement, measured). Its own cost (`workload_cpu` at this load: the
//!    timed sleep and wake every worker pays, measured without any server) and its wake call
//!    are charged to that CPU: a server computing there finishes later by as much.
//! 2. The waker pushes the event on a FIFO run queue and, per mechanism:
//!    - `list`, `eventfd-per-server`: pops the most recently idled server (LIFO) and wakes
//!      it through a futex (resp. its own eventfd behind epoll). The latency is a draw from
//!      the mechanism's measured handoff (`handoff_<mechanism>_same` or `_cross`: the clean
//!      handoffs of a harness run at 20 % load, [`Calibration::dist_keys`]) to a server on the
//!      same CPU or on another, idle (halted) one; the waker's call and the wakee's CPU are
//!      the one-sleeper futex (resp. epoll) figures;
//!    - `slot`: wakes the slot holder if the slot is full; the woken server rotates the next
//!      user-space idle server into the slot and, if work is still queued (the event that
//!      woke it counts), wakes one more from the stack (what the harness's `after_wake` does);
//!    - `epoll-excl`: always writes the fd; the kernel wakes the first idle server in
//!      registration order (latency from `handoff_epoll-excl_*`), plus the wait-queue walk
//!      (`excl_call_K` growth beyond K = 2);
//!      a write with nobody idle leaves the fd readable, and the next server to go idle pays
//!      a stale wakeup (`fd_stale`);
//!    - `herd`: always writes; every idle server wakes. The waker's write sends one wakeup
//!      IPI per idle server on another CPU (`epoll_cross_call` each) plus the per-waiter walk
//!      (slope of `herd_call_K`); the j-th remote server runs a draw of `handoff_herd_cross`
//!      `+ j × epoll_cross_call` after the timestamp, a server on the waker's own CPU a draw
//!      of `handoff_herd_same` (measured with one remote server) plus the write's further
//!      IPIs and walk. The first to start takes the event; the others find nothing (futile);
//!    - `adopt`: if the worker's own CPU's server is idle, the worker claims it and runs at
//!      once: latency a draw of `adopt_path` (measured as the handoffs), CPU that plus
//!      `claim_release`; else it claims the lowest-numbered idle server and migrates to its
//!      CPU (`migrate_lat`, `migrate_cpu` on top); with none idle the event waits in the
//!      queue. A claimer whose event is done
//!      hands its server to the server's own thread if work is queued (a same-CPU wakeup,
//!      `handoff_list_same`, and the futex figures for its CPU), which serves the queue
//!      until it is empty; otherwise the server is idle again.
//! 3. A woken server takes the head of the run queue (latency = start − timestamp); it finds
//!    nothing if another server took it (a futile wakeup). A server finishing a compute
//!    takes the next queued event at once, or goes idle (its CPU halts).
//!
//! CPU per event = workload + waker calls + woken servers' CPU (herd losers and stale
//! wakeups included) + claims and migrations, all from the calibration; the harness measures
//! the same quantity with `getrusage`.
//!
//! At large C a woken server often finds its event gone: with many servers computing, one
//! finishes and takes the queue's head before the wakeup lands (every `compute / busy
//! servers` on average), so the p50 falls with C and the wakeup's cost becomes CPU, not
//! latency. The harness's servers do the same (a server that finishes pops the queue).
//!
//! Not simulated: contention on the run-queue lock, the list's GC, vCPU steal, the time a
//! woken server's own wake path occupies its CPU, workers queueing for a CPU, more servers
//! than CPUs, and how the handoff's cost moves with the load (on the measured VM a handoff
//! at 5 % load is ≈ 1.4× slower than at 20–50 %: longer-halted vCPUs and colder caches;
//! the calibration measures it at 20 %). Extrapolation beyond the measured machine assumes
//! each cross-CPU wakeup costs what one costs here (an IPI to a halted vCPU), whatever C is,
//! and that the herd's wakeups go out one IPI after another.

pub mod calib;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use hdrhistogram::Histogram;

pub use calib::Calibration;

use crate::Mechanism;
use crate::harness::{SplitMix, new_histogram};

/// One model run.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// CPUs (= servers).
    pub cpus: usize,
    /// Offered load in (0, 1).
    pub load: f64,
    /// CPU time per event, ns.
    pub compute_ns: u64,
    /// Arrivals to simulate.
    pub events: u64,
    /// Random seed.
    pub seed: u64,
}

/// What the model predicts.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// Mechanism.
    pub mechanism: Mechanism,
    /// Parameters.
    pub params: Params,
    /// Unblock → running latency, ns.
    pub latency: Histogram<u64>,
    /// Overhead CPU per event beyond compute, ns.
    pub cpu_per_event_ns: f64,
    /// Server wakeups (a stale fd wakeup counts as one).
    pub wakeups: u64,
    /// Wakeups that found no work.
    pub futile: u64,
    /// Events started on the CPU their worker unblocked on.
    pub same_cpu: u64,
    /// Latency of those events, ns (the harness's `latency_same_cpu`).
    pub latency_same_cpu: Histogram<u64>,
}

impl Prediction {
    /// Latency quantile, µs.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Fraction of events started on the CPU their worker unblocked on.
    pub fn same_cpu_fraction(&self) -> f64 {
        self.same_cpu as f64 / self.latency.len().max(1) as f64
    }

    /// p50 of the events started on their worker's CPU, and of the others, µs (0 if none);
    /// as [`crate::harness::RunResult::p50_same_cross_us`].
    pub fn p50_same_cross_us(&self) -> (f64, f64) {
        crate::harness::p50_same_cross_us(&self.latency, &self.latency_same_cpu)
    }

    /// CPU demand over capacity: `load × (compute + CPU per event) / compute`. At 1 or more
    /// the run queue grows without bound and the latencies only measure the run's length.
    pub fn utilisation(&self) -> f64 {
        self.params.load * (1.0 + self.cpu_per_event_ns / self.params.compute_ns.max(1) as f64)
    }

    /// [`Prediction::utilisation`] is 1 or more.
    pub fn saturated(&self) -> bool {
        self.utilisation() >= 1.0
    }
}

/// A time-ordered event queue (min-heap by time, FIFO among equal times).
#[derive(Debug, Default)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    items: Vec<Option<E>>,
    free: Vec<usize>,
    seq: u64,
}

impl<E> EventQueue<E> {
    /// Empty.
    pub fn new() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            items: Vec::new(),
            free: Vec::new(),
            seq: 0,
        }
    }

    /// Schedule `e` at time `t`.
    pub fn push(&mut self, t: u64, e: E) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.items[i] = Some(e);
                i
            }
            None => {
                self.items.push(Some(e));
                self.items.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, slot)));
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        let Reverse((t, _, slot)) = self.heap.pop()?;
        let e = self.items.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some((t, e))
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// No pending events.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// One wakeup channel's CPU costs, ns: to a sleeper on the waker's CPU or on another idle
/// CPU.
#[derive(Clone, Copy, Debug)]
struct Chan {
    call: [f64; 2],
    wakee: [f64; 2],
}

impl Chan {
    fn from(c: &Calibration, prefix: &str) -> Chan {
        let g = |what: &str, place: &str| c.get(&format!("{prefix}_{place}_{what}"));
        Chan {
            call: [g("call", "same"), g("call", "cross")],
            wakee: [g("wakee", "same"), g("wakee", "cross")],
        }
    }
}

/// A latency distribution at [`crate::baseline::QUANTILES`], ns.
type Dist = [f64; crate::baseline::QUANTILES.len()];

/// The calibration resolved for one run.
#[derive(Clone, Copy, Debug)]
struct Costs {
    futex: Chan,
    epoll: Chan,
    /// The mechanism's handoff to a server on the waker's CPU (0) or on another (1).
    path: [Dist; 2],
    /// `epoll-excl`: the wait-queue walk with C registered servers, beyond K = 2.
    excl_walk: f64,
    /// `herd`: the write's cost per waiter.
    herd_per_waiter: f64,
    fd_write_nowaiter: f64,
    fd_stale: f64,
    claim: f64,
    /// `adopt`: timestamp → start through the claim of the worker's own CPU's server.
    adopt_path: Dist,
    migrate_lat: f64,
    migrate_cpu: f64,
    /// Probability of staying on a busy previous CPU although one is idle.
    stay: f64,
    workload: f64,
}

impl Costs {
    fn new(c: &Calibration, p: &Params, m: Mechanism) -> Costs {
        let per_waiter = ((c.get("herd_call_32") - c.get("herd_call_8")) / 24.0).max(0.0);
        // `adopt` wakes a server only to hand it the queue: a same-CPU futex wake, `list`'s.
        let pm = match m {
            Mechanism::Adopt => Mechanism::List,
            m => m,
        };
        let path = |place| c.quantiles(&crate::baseline::handoff_key(pm, place));
        Costs {
            futex: Chan::from(c, "futex"),
            epoll: Chan::from(c, "epoll"),
            path: [path("same"), path("cross")],
            excl_walk: (c.at_k("excl_call", p.cpus) - c.get("excl_call_2")).max(0.0),
            herd_per_waiter: per_waiter,
            fd_write_nowaiter: c.get("fd_write_nowaiter"),
            fd_stale: c.get("fd_stale"),
            claim: c.get("claim_release"),
            adopt_path: c.quantiles("adopt_path"),
            migrate_lat: c.get("migrate_lat"),
            migrate_cpu: c.get("migrate_cpu"),
            stay: (c.get("stay_on_busy_pct") / 100.0).clamp(0.0, 1.0),
            workload: c.workload_cpu(p.load),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Arrival,
    /// A woken server starts (takes the queue head, or finds nothing).
    Start(usize),
    /// A server's compute (generation-tagged: stale ones are ignored).
    Done(usize, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Srv {
    /// Asleep; its CPU is idle (halted).
    Idle,
    /// Woken (or about to take a claimed event), not running yet.
    Waking,
    /// Computing.
    Busy,
}

/// A queued event: its timestamp and the CPU its worker unblocked on.
#[derive(Clone, Copy, Debug)]
struct Queued {
    t: u64,
    cpu: usize,
}

struct Sim<'a> {
    m: Mechanism,
    k: Costs,
    p: &'a Params,
    q: EventQueue<Ev>,
    srv: Vec<Srv>,
    done_at: Vec<u64>,
    generation: Vec<u64>,
    /// Idle servers, most recent last (the list is LIFO; for `slot`, the user-space stack
    /// behind the slot).
    idle: Vec<usize>,
    slot: Option<usize>,
    /// `adopt`: server `v`'s compute is a claiming worker's own event (not its thread's).
    by_worker: Vec<bool>,
    fd_readable: bool,
    runq: VecDeque<Queued>,
    rng: SplitMix,
    lat: Histogram<u64>,
    lat_same: Histogram<u64>,
    overhead: f64,
    wakeups: u64,
    futile: u64,
    same_cpu: u64,
}

impl Sim<'_> {
    fn idle_count(&self) -> usize {
        self.idle.len() + usize::from(self.slot.is_some())
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    /// The CPU the unblocked worker runs on (module doc, step 1).
    fn place(&mut self) -> usize {
        let prev = self.pick(self.p.cpus);
        let k = self.idle_count();
        if self.srv[prev] == Srv::Idle || k == 0 || self.rng.unit() <= self.k.stay {
            return prev;
        }
        let i = self.pick(k);
        match self.idle.get(i) {
            Some(&v) => v,
            None => self.slot.unwrap_or(prev),
        }
    }

    /// Charge `ns` of CPU to CPU `u`; if its server is computing, that ends later.
    fn steal(&mut self, u: usize, ns: f64) {
        self.overhead += ns;
        if self.srv[u] == Srv::Busy {
            self.done_at[u] += ns as u64;
            self.generation[u] += 1;
            let g = self.generation[u];
            self.q.push(self.done_at[u], Ev::Done(u, g));
        }
    }

    fn remove_idle(&mut self, v: usize) {
        if self.slot == Some(v) {
            self.slot = None;
        } else if let Some(i) = self.idle.iter().rposition(|&x| x == v) {
            self.idle.remove(i);
        }
    }

    /// A draw of the mechanism's handoff latency to a server on the waker's CPU (`i` = 0) or
    /// on another (1), ns.
    fn path_lat(&mut self, i: usize) -> f64 {
        let u = self.rng.unit();
        Calibration::sample(&self.k.path[i], u)
    }

    /// Server `v` runs `after` ns from `t` and costs `wakee` ns of CPU.
    fn wake_at(&mut self, t: u64, v: usize, after: f64, wakee: f64) {
        self.remove_idle(v);
        self.srv[v] = Srv::Waking;
        self.wakeups += 1;
        self.overhead += wakee;
        self.q.push(t + after as u64, Ev::Start(v));
    }

    /// The worker on CPU `u` wakes the idle server `v` through `ch`, `extra` ns more.
    fn wake(&mut self, t: u64, u: usize, v: usize, ch: Chan, extra: f64) {
        let i = usize::from(u != v);
        self.steal(u, ch.call[i] + extra);
        let lat = self.path_lat(i);
        self.wake_at(t, v, lat + extra, ch.wakee[i]);
    }

    fn start_compute(&mut self, t: u64, v: usize, e: Queued) {
        let lat = t.saturating_sub(e.t).max(1);
        self.lat.saturating_record(lat);
        if e.cpu == v {
            self.same_cpu += 1;
            self.lat_same.saturating_record(lat);
        }
        self.srv[v] = Srv::Busy;
        self.done_at[v] = t + self.p.compute_ns;
        self.generation[v] += 1;
        let g = self.generation[v];
        self.q.push(self.done_at[v], Ev::Done(v, g));
    }

    fn go_idle(&mut self, t: u64, v: usize) {
        if matches!(self.m, Mechanism::EpollExclusive | Mechanism::Herd) && self.fd_readable {
            // A write nobody consumed: this epoll_wait returns at once.
            self.fd_readable = false;
            self.wakeups += 1;
            self.overhead += self.k.fd_stale;
            self.srv[v] = Srv::Waking;
            self.q.push(t + self.k.fd_stale as u64, Ev::Start(v));
            return;
        }
        self.srv[v] = Srv::Idle;
        if self.m == Mechanism::Slot && self.slot.is_none() {
            self.slot = Some(v);
        } else {
            self.idle.push(v);
        }
    }

    fn arrival(&mut self, t: u64) {
        let u = self.place();
        self.steal(u, self.k.workload);
        let e = Queued { t, cpu: u };
        let k = self.k;
        match self.m {
            Mechanism::Adopt => {
                let path = Calibration::sample(&k.adopt_path, self.rng.unit());
                if self.srv[u] == Srv::Idle {
                    self.remove_idle(u);
                    self.overhead += path + k.claim;
                    self.by_worker[u] = true;
                    self.start_compute(t + path as u64, u, e);
                } else if let Some(&v) = self.idle.iter().min() {
                    self.by_worker[v] = true;
                    // The claimer moves to the claimed server's CPU.
                    self.runq.push_back(e);
                    self.wake_at(t, v, path + k.migrate_lat, path + k.claim + k.migrate_cpu);
                    self.wakeups -= 1;
                } else {
                    self.steal(u, k.claim);
                    self.runq.push_back(e);
                }
            }
            Mechanism::List | Mechanism::EventFdPerServer => {
                self.runq.push_back(e);
                let ch = if self.m == Mechanism::List {
                    k.futex
                } else {
                    k.epoll
                };
                match self.idle.last().copied() {
                    Some(v) => self.wake(t, u, v, ch, 0.0),
                    None => self.steal(u, k.claim),
                }
            }
            Mechanism::Slot => {
                self.runq.push_back(e);
                match self.slot {
                    Some(v) => self.wake(t, u, v, k.futex, 0.0),
                    None => self.steal(u, k.claim),
                }
            }
            Mechanism::EpollExclusive => {
                self.runq.push_back(e);
                // The first idle server in registration order.
                match self.idle.iter().min().copied() {
                    Some(v) => self.wake(t, u, v, k.epoll, k.excl_walk),
                    None => {
                        self.steal(u, k.fd_write_nowaiter);
                        self.fd_readable = true;
                    }
                }
            }
            Mechanism::Herd => {
                self.runq.push_back(e);
                if self.idle.is_empty() {
                    self.steal(u, k.fd_write_nowaiter);
                    self.fd_readable = true;
                    return;
                }
                let mut all = std::mem::take(&mut self.idle);
                all.sort_unstable();
                let local = all.contains(&u);
                let remote: Vec<usize> = all.iter().copied().filter(|&v| v != u).collect();
                let walk = k.herd_per_waiter * all.len() as f64;
                let ch = k.epoll;
                let call =
                    remote.len() as f64 * ch.call[1] + if local { ch.call[0] } else { 0.0 } + walk;
                self.steal(u, call);
                // The handoffs are measured at 2 CPUs (one remote server, two waiters);
                // every further remote server adds its IPI to the write, every further
                // waiter its walk.
                for (j, &v) in remote.iter().enumerate() {
                    let lat = self.path_lat(1);
                    self.wake_at(t, v, lat + j as f64 * ch.call[1], ch.wakee[1]);
                }
                if local {
                    // Runs once the waker's write has returned and the waker sleeps.
                    let lat = self.path_lat(0)
                        + remote.len().saturating_sub(1) as f64 * ch.call[1]
                        + k.herd_per_waiter * all.len().saturating_sub(2) as f64;
                    self.wake_at(t, u, lat, ch.wakee[0]);
                }
            }
        }
    }

    fn start(&mut self, t: u64, v: usize) {
        if self.m == Mechanism::Slot {
            // after_wake: rotate a user-space idle server into the slot; if work is queued
            // (the event that woke this server counts), wake one more from the stack.
            if let Some(w) = self.idle.pop() {
                if self.slot.is_none() {
                    self.slot = Some(w);
                } else if !self.runq.is_empty() {
                    self.idle.push(w);
                    self.wake(t, v, w, self.k.futex, 0.0);
                } else {
                    self.idle.push(w);
                }
            }
            if !self.runq.is_empty()
                && let Some(&w) = self.idle.last()
            {
                self.wake(t, v, w, self.k.futex, 0.0);
            }
        }
        match self.runq.pop_front() {
            Some(e) => self.start_compute(t, v, e),
            None => {
                self.futile += 1;
                self.go_idle(t, v);
            }
        }
    }

    fn done(&mut self, t: u64, v: usize) {
        if self.m == Mechanism::Adopt && std::mem::take(&mut self.by_worker[v]) {
            if self.runq.is_empty() {
                self.go_idle(t, v);
            } else {
                // The worker hands the server to its thread, on this CPU.
                self.overhead += self.k.futex.call[0];
                let lat = self.path_lat(0);
                self.wake_at(t, v, lat, self.k.futex.wakee[0]);
            }
            return;
        }
        match self.runq.pop_front() {
            Some(e) => self.start_compute(t, v, e),
            None => self.go_idle(t, v),
        }
    }
}

/// Simulate `m` with `p` and costs `c`.
pub fn simulate(m: Mechanism, p: &Params, c: &Calibration) -> Prediction {
    let n = p.cpus.max(1);
    let p = Params {
        cpus: n,
        ..p.clone()
    };
    let mut s = Sim {
        m,
        k: Costs::new(c, &p, m),
        p: &p,
        q: EventQueue::new(),
        srv: vec![Srv::Idle; n],
        done_at: vec![0; n],
        generation: vec![0; n],
        idle: (0..n).rev().collect(),
        slot: None,
        by_worker: vec![false; n],
        fd_readable: false,
        runq: VecDeque::new(),
        rng: SplitMix::new(p.seed),
        lat: new_histogram(),
        lat_same: new_histogram(),
        overhead: 0.0,
        wakeups: 0,
        futile: 0,
        same_cpu: 0,
    };
    if m == Mechanism::Slot {
        s.slot = s.idle.pop();
    }
    let rate_per_ns = p.load.clamp(1e-6, 0.999_999) * n as f64 / p.compute_ns.max(1) as f64;
    let mut arrivals = 0u64;
    let mut next_arrival = s.rng.exp(1.0 / rate_per_ns);
    s.q.push(next_arrival as u64, Ev::Arrival);
    while let Some((t, e)) = s.q.pop() {
        match e {
            Ev::Arrival => {
                arrivals += 1;
                s.arrival(t);
                if arrivals < p.events {
                    next_arrival += s.rng.exp(1.0 / rate_per_ns);
                    s.q.push(next_arrival as u64, Ev::Arrival);
                }
            }
            Ev::Start(v) => s.start(t, v),
            Ev::Done(v, g) => {
                if g == s.generation[v] && s.srv[v] == Srv::Busy {
                    s.done(t, v);
                }
            }
        }
    }
    let events = s.lat.len().max(1);
    Prediction {
        mechanism: m,
        cpu_per_event_ns: s.overhead / events as f64,
        wakeups: s.wakeups,
        futile: s.futile,
        same_cpu: s.same_cpu,
        latency_same_cpu: s.lat_same,
        latency: s.lat,
        params: p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_queue_orders_by_time_then_fifo() {
        let mut q = EventQueue::new();
        q.push(30, "c");
        q.push(10, "a1");
        q.push(20, "b");
        q.push(10, "a2");
        assert_eq!(q.len(), 4);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [(10, "a1"), (10, "a2"), (20, "b"), (30, "c")]);
        assert!(q.is_empty());
        // Slots are reused.
        q.push(5, "x");
        assert_eq!(q.pop(), Some((5, "x")));
    }

    #[test]
    fn every_event_is_served_once() {
        let c = Calibration::reference();
        for m in Mechanism::ALL {
            for cpus in [1, 2, 16] {
                let p = Params {
                    cpus,
                    load: 0.7,
                    compute_ns: 50_000,
                    events: 5_000,
                    seed: 3,
                };
                let r = simulate(m, &p, &c);
                assert_eq!(r.latency.len(), 5_000, "{m:?} C={cpus}");
                assert!(r.cpu_per_event_ns > 0.0);
            }
        }
    }

    #[test]
    fn placement_splits_the_latency_by_mode() {
        let c = Calibration::reference();
        let p = Params {
            cpus: 2,
            load: 0.1,
            compute_ns: 100_000,
            events: 5_000,
            seed: 7,
        };
        for m in Mechanism::ALL {
            let r = simulate(m, &p, &c);
            assert_eq!(r.latency_same_cpu.len(), r.same_cpu, "{m:?}");
            assert!(r.same_cpu > 0 && r.same_cpu < r.latency.len(), "{m:?}");
        }
        // At low load a same-CPU start costs the calibrated same-CPU figure, a cross-CPU one
        // the cross-CPU figure: the two modes the real latency shows.
        let l = simulate(Mechanism::List, &p, &c);
        let (same, cross) = l.p50_same_cross_us();
        let (same_ns, cross_ns) = (same * 1000.0, cross * 1000.0);
        assert!(same_ns < c.get("handoff_list_cross") / 4.0, "{same}");
        assert!(cross_ns >= 0.8 * c.get("handoff_list_cross"), "{cross}");
        let a = simulate(Mechanism::Adopt, &p, &c);
        let (same, _) = a.p50_same_cross_us();
        let q = c.quantiles("adopt_path");
        assert!(same * 1000.0 >= q[0] && same * 1000.0 <= q[6], "{same}");
    }

    #[test]
    fn herd_costs_grow_with_cpus_and_adopt_is_cheapest() {
        let c = Calibration::reference();
        let p = |cpus| Params {
            cpus,
            load: 0.2,
            compute_ns: 50_000,
            events: 5_000,
            seed: 1,
        };
        let h2 = simulate(Mechanism::Herd, &p(2), &c).cpu_per_event_ns;
        let h64 = simulate(Mechanism::Herd, &p(64), &c).cpu_per_event_ns;
        let l64 = simulate(Mechanism::List, &p(64), &c).cpu_per_event_ns;
        // The herd's cost grows with the idle servers it wakes; the list's wakes one.
        assert!(h64 > 2.0 * h2 && h64 > l64, "{h2} {h64} {l64}");
        let a = simulate(Mechanism::Adopt, &p(8), &c).quantile_us(0.5);
        let l = simulate(Mechanism::List, &p(8), &c).quantile_us(0.5);
        assert!(a < l);
    }
}
