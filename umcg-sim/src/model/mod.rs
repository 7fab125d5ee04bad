//! A discrete-event simulation of C CPUs, one server pinned to each, serving open-loop
//! Poisson unblock events through one idle-wakeup [`Mechanism`], with costs from a
//! [`Calibration`].
//!
//! # What is simulated
//!
//! 1. Arrivals: Poisson at `λ = load × C / compute`. The unblocking worker runs on an idle
//!    CPU if there is one (the scheduler's idle-sibling placement), else on a random CPU,
//!    where its own costs (the timed wake, the wake call) delay the server computing there.
//! 2. The waker pushes the event on a FIFO run queue and, per mechanism:
//!    - `list`, `eventfd-per-server`: pops the most recently idled server (LIFO) and wakes
//!      it: latency = futex (resp. epoll) handoff, same-CPU or cross-CPU;
//!    - `slot`: wakes the slot holder if the slot is full; the woken server rotates the next
//!      user-space idle server into the slot when it starts, and wakes one more from the
//!      stack if work is still queued (libumcg);
//!    - `epoll-excl`: always writes the fd; the kernel wakes the first idle server in
//!      registration order, latency growing with the number K of idle waiters as measured;
//!      a write with nobody idle leaves the fd readable, and the next server to go idle
//!      pays a futile wakeup;
//!    - `herd`: always writes; all K idle servers wake, each losing one burns its CPU share
//!      of the herd's cost and is unavailable meanwhile; the winner's latency is the epoll
//!      wakeup plus the waker's walk over the K waiters (LIMITS.md's herd latencies put all
//!      sleepers on one CPU, where they serialise; here each server has its own CPU);
//!    - `adopt`: if a server is idle, the worker runs at once on its own (idle) CPU after a
//!      list claim.
//! 3. A woken server takes the head of the run queue (latency = start − unblock); it finds
//!    nothing if another server took it (a futile wakeup). A server finishing a compute
//!    takes the next queued event at once, or goes idle.
//!
//! CPU per event = timed worker wake + waker calls + woken servers' CPU + herd losers +
//! futile wakeups, all from the calibration, as the harness measures it.
//!
//! Not simulated: cache effects, contention on the run-queue lock, the list's GC, vCPU
//! steal, and more servers than CPUs.

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
    /// Server wakeups.
    pub wakeups: u64,
    /// Wakeups that found no work.
    pub futile: u64,
}

impl Prediction {
    /// Latency quantile, µs.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Arrival,
    /// A woken server starts (takes the queue head).
    Start(usize),
    /// A server's compute (generation-tagged: stale ones are ignored).
    Done(usize, u64),
    /// A herd loser (or a futile fd wakeup) is back asleep.
    Back(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cpu {
    Idle,
    Waking,
    Busy,
}

struct Sim<'a> {
    m: Mechanism,
    c: &'a Calibration,
    p: &'a Params,
    q: EventQueue<Ev>,
    cpu: Vec<Cpu>,
    done_at: Vec<u64>,
    generation: Vec<u64>,
    /// Idle servers, most recent last (the list is LIFO; the slot's stack too).
    idle: Vec<usize>,
    slot: Option<usize>,
    fd_readable: bool,
    runq: VecDeque<u64>,
    rng: SplitMix,
    lat: Histogram<u64>,
    overhead: f64,
    wakeups: u64,
    futile: u64,
}

impl Sim<'_> {
    fn lat_handoff(&self, from: usize, to: usize) -> f64 {
        let same = from == to;
        match self.m {
            Mechanism::EventFdPerServer => {
                self.c.get(if same { "epoll_same" } else { "epoll_cross" })
            }
            _ => self.c.get(if same { "futex_same" } else { "futex_cross" }),
        }
    }

    fn wakee_cpu(&self) -> f64 {
        match self.m {
            Mechanism::EventFdPerServer => self.c.get("excl_cpu_2"),
            _ => self.c.get("futex_cpu_2"),
        }
    }

    /// Charge `ns` of overhead to CPU `u`; if it is computing, its compute ends later.
    fn steal(&mut self, u: usize, ns: f64) {
        self.overhead += ns;
        if self.cpu[u] == Cpu::Busy {
            self.done_at[u] += ns as u64;
            self.generation[u] += 1;
            let g = self.generation[u];
            self.q.push(self.done_at[u], Ev::Done(u, g));
        }
    }

    fn remove_idle(&mut self, v: usize) {
        if let Some(i) = self.idle.iter().rposition(|&x| x == v) {
            self.idle.remove(i);
        }
        if self.slot == Some(v) {
            self.slot = None;
        }
    }

    fn wake(&mut self, t: u64, from: usize, v: usize, lat: f64, cpu: f64) {
        self.remove_idle(v);
        self.cpu[v] = Cpu::Waking;
        self.wakeups += 1;
        self.overhead += cpu;
        self.q.push(t + lat as u64, Ev::Start(v));
        let _ = from;
    }

    fn start_compute(&mut self, t: u64, v: usize, arrival: u64) {
        self.lat.saturating_record(t.saturating_sub(arrival).max(1));
        self.cpu[v] = Cpu::Busy;
        self.done_at[v] = t + self.p.compute_ns;
        self.generation[v] += 1;
        let g = self.generation[v];
        self.q.push(self.done_at[v], Ev::Done(v, g));
    }

    fn go_idle(&mut self, t: u64, v: usize) {
        if matches!(self.m, Mechanism::EpollExclusive | Mechanism::Herd) && self.fd_readable {
            // A write nobody consumed: this epoll_wait returns at once, finds nothing.
            self.fd_readable = false;
            self.futile += 1;
            self.overhead += self.c.get("excl_cpu_2");
            self.cpu[v] = Cpu::Waking;
            self.q
                .push(t + self.c.get("epoll_same") as u64, Ev::Back(v));
            return;
        }
        self.cpu[v] = Cpu::Idle;
        if self.m == Mechanism::Slot && self.slot.is_none() {
            self.slot = Some(v);
        } else {
            self.idle.push(v);
        }
    }

    fn idle_count(&self) -> usize {
        self.idle.len() + usize::from(self.slot.is_some())
    }

    fn arrival(&mut self, t: u64) {
        let n = self.p.cpus;
        let idle_cpus: Vec<usize> = (0..n).filter(|&i| self.cpu[i] == Cpu::Idle).collect();
        let u = if idle_cpus.is_empty() {
            (self.rng.next_u64() % n as u64) as usize
        } else {
            idle_cpus[(self.rng.next_u64() % idle_cpus.len() as u64) as usize]
        };
        self.steal(u, self.c.get("timed_wake_cpu"));
        let k = self.idle_count();
        match self.m {
            Mechanism::Adopt => {
                if self.cpu[u] == Cpu::Idle {
                    self.remove_idle(u);
                    let claim = self.c.get("claim_release");
                    self.overhead += claim;
                    self.start_compute(t + claim as u64, u, t);
                } else {
                    self.runq.push_back(t);
                }
            }
            Mechanism::List | Mechanism::EventFdPerServer => {
                self.runq.push_back(t);
                match self.idle.last().copied() {
                    Some(v) => {
                        let call = self.c.get("futex_call_2");
                        self.steal(u, call);
                        let lat = self.lat_handoff(u, v);
                        let cpu = self.wakee_cpu();
                        self.wake(t, u, v, call + lat, cpu);
                    }
                    None => self.steal(u, 100.0),
                }
            }
            Mechanism::Slot => {
                self.runq.push_back(t);
                match self.slot.take() {
                    Some(v) => {
                        let call = self.c.get("futex_call_2");
                        self.steal(u, call);
                        let lat = self.lat_handoff(u, v);
                        let cpu = self.wakee_cpu();
                        self.wake(t, u, v, call + lat, cpu);
                    }
                    None => self.steal(u, 50.0),
                }
            }
            Mechanism::EpollExclusive => {
                self.runq.push_back(t);
                let call = self.c.get("excl_call_2");
                self.steal(u, call);
                // The first idle server in registration order.
                match (0..n).find(|&i| self.cpu[i] == Cpu::Idle) {
                    Some(v) => {
                        let same = u == v;
                        let lat = if same {
                            self.c.get("epoll_same") + self.c.at_k("excl_lat", k)
                                - self.c.get("excl_lat_2")
                        } else {
                            self.c.at_k("excl_lat", k)
                        };
                        let cpu = self.c.at_k("excl_cpu", k);
                        self.wake(t, u, v, lat, cpu);
                    }
                    None => self.fd_readable = true,
                }
            }
            Mechanism::Herd => {
                self.runq.push_back(t);
                let call = self.c.at_k("herd_call", k).max(self.c.get("excl_call_2"));
                self.steal(u, call);
                if k == 0 {
                    self.fd_readable = true;
                    return;
                }
                let all: Vec<usize> = self.idle.clone();
                let total_cpu = self.c.at_k("herd_cpu", k);
                // LIMITS.md's herd latencies put all K sleepers on one CPU, where they run in
                // turn; here each server has its own CPU, so the winner waits for the epoll
                // wakeup plus the waker's walk over K waiters (its write call), not for the
                // losers' runs.
                let lat = if k == 1 && all[0] == u {
                    self.c.get("epoll_same")
                } else {
                    self.c.get("epoll_cross") + (call - self.c.get("excl_call_2")).max(0.0)
                };
                let share = total_cpu / k as f64;
                // The first to run wins; every other one wakes, finds nothing, sleeps again,
                // each on its own CPU for its share of the herd's CPU time.
                let winner = all[(self.rng.next_u64() % k as u64) as usize];
                for v in all {
                    if v == winner {
                        self.wake(t, u, v, lat, share);
                    } else {
                        self.remove_idle(v);
                        self.cpu[v] = Cpu::Waking;
                        self.wakeups += 1;
                        self.futile += 1;
                        self.overhead += share;
                        self.q.push(t + lat as u64 + share as u64, Ev::Back(v));
                    }
                }
            }
        }
    }

    fn start(&mut self, t: u64, v: usize) {
        if self.m == Mechanism::Slot {
            // Rotate a user-space idle server into the slot; wake one more if work waits.
            if self.slot.is_none()
                && let Some(w) = self.idle.pop()
            {
                self.slot = Some(w);
            }
        }
        match self.runq.pop_front() {
            Some(a) => {
                self.start_compute(t, v, a);
                if self.m == Mechanism::Slot
                    && !self.runq.is_empty()
                    && let Some(w) = self.idle.pop()
                {
                    let lat = self.lat_handoff(v, w);
                    let cpu = self.wakee_cpu();
                    self.steal(v, self.c.get("futex_call_2"));
                    self.wake(t, v, w, lat, cpu);
                }
            }
            None => {
                self.futile += 1;
                self.go_idle(t, v);
            }
        }
    }

    fn done(&mut self, t: u64, v: usize) {
        match self.runq.pop_front() {
            Some(a) => self.start_compute(t, v, a),
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
        c,
        p: &p,
        q: EventQueue::new(),
        cpu: vec![Cpu::Idle; n],
        done_at: vec![0; n],
        generation: vec![0; n],
        idle: (0..n).rev().collect(),
        slot: None,
        fd_readable: false,
        runq: VecDeque::new(),
        rng: SplitMix::new(p.seed),
        lat: new_histogram(),
        overhead: 0.0,
        wakeups: 0,
        futile: 0,
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
                if g == s.generation[v] && s.cpu[v] == Cpu::Busy {
                    s.done(t, v);
                }
            }
            Ev::Back(v) => {
                // A herd loser or futile wakeup: take work if some arrived meanwhile.
                match s.runq.pop_front() {
                    Some(a) => s.start_compute(t, v, a),
                    None => {
                        s.cpu[v] = Cpu::Idle;
                        s.idle.push(v);
                    }
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
        let c = Calibration::limits_md();
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
    fn herd_costs_grow_with_cpus_and_adopt_is_cheapest() {
        let c = Calibration::limits_md();
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
        assert!(h64 > 2.0 * h2 && h64 > 2.0 * l64, "{h2} {h64} {l64}");
        let a = simulate(Mechanism::Adopt, &p(8), &c).quantile_us(0.5);
        let l = simulate(Mechanism::List, &p(8), &c).quantile_us(0.5);
        assert!(a < l);
    }
}
