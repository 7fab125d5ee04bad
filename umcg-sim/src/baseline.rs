//! Raw floors measured in the same run as the mechanisms (LIMITS.md: absolute figures drift
//! 10–70 % with load from other work, so only same-run ratios are comparable):
//!
//! - ping-pong handoffs (half a round trip) over a futex word, a pair of blocking eventfds,
//!   and a pair of eventfds each behind an epoll, with both threads on one CPU and on two;
//! - "wake one of K idle threads": a waker on the first CPU, K sleepers on the last, woken
//!   by a targeted `FUTEX_WAKE`, a shared eventfd with `EPOLLEXCLUSIVE`, or a shared eventfd
//!   without (the herd); latency from the waker's timestamp to the woken thread running, and
//!   the sleepers' CPU time per wakeup (`RUSAGE_THREAD`), as in LIMITS.md's table;
//! - the cost of entering the kernel (`gettid`) and of one timed sleep-and-wake of a thread
//!   (what every worker pays per event in the harness);
//! - each mechanism's handoff as the workload sees it ([`handoffs`]): the latency of the
//!   clean handoffs (one wakeup, no queueing) started on their worker's CPU and of the
//!   others, in a run of the harness at 20 % load (the distributions the model samples).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use umcg_runtime::sys::{self, Deadline, Epoll, EpollEvent, EventFd};

use crate::harness::new_histogram;
use crate::os::{Usage, now_ns, tight_timer_slack};

/// One baseline figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    /// Key, e.g. `futex_pingpong_cross`.
    pub name: String,
    /// Human placement, e.g. "CPU 0 <-> CPU 1".
    pub placement: String,
    /// Median, ns.
    pub p50_ns: f64,
    /// 99th percentile, ns.
    pub p99_ns: f64,
    /// CPU time per operation of the threads that matter (see each), ns; 0 if not measured.
    pub cpu_ns: f64,
    /// The latency at each of [`QUANTILES`], ns, for a baseline measured as a distribution
    /// (empty for a single figure).
    pub quantiles_ns: Vec<f64>,
}

/// The quantiles a distribution baseline keeps (and a calibration file stores).
pub const QUANTILES: [f64; 7] = [0.01, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99];

fn from_hist(name: &str, placement: String, h: &Histogram<u64>, cpu_ns: f64) -> Baseline {
    Baseline {
        name: name.to_string(),
        placement,
        p50_ns: h.value_at_quantile(0.5) as f64,
        p99_ns: h.value_at_quantile(0.99) as f64,
        cpu_ns,
        quantiles_ns: QUANTILES
            .iter()
            .map(|&q| h.value_at_quantile(q) as f64)
            .collect(),
    }
}

/// The two CPUs used: the first and the last allowed one (the same if only one).
pub fn cpu_pair() -> (usize, usize) {
    let cpus = sys::allowed_cpus().unwrap_or_default();
    match (cpus.first(), cpus.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => (0, 0),
    }
}

#[derive(Clone, Copy, Debug)]
enum Pipe {
    Futex,
    EventFd,
    Epoll,
}

/// A ping-pong of `iters` round trips between a thread on `a` and one on `b`; records half
/// of each round trip. The responder's CPU per handoff is reported.
fn pingpong(
    kind: Pipe,
    a: usize,
    b: usize,
    iters: usize,
) -> Result<(Histogram<u64>, f64), sys::Errno> {
    let mut h = new_histogram();
    let word = Arc::new(AtomicU32::new(0));
    let (e1, e2) = match kind {
        Pipe::Futex => (None, None),
        Pipe::EventFd => (
            Some(EventFd::new_blocking()?),
            Some(EventFd::new_blocking()?),
        ),
        Pipe::Epoll => (
            Some(EventFd::new_nonblocking()?),
            Some(EventFd::new_nonblocking()?),
        ),
    };
    let (e1, e2) = (Arc::new(e1), Arc::new(e2));
    let ep_for = |e: &Option<EventFd>| -> Result<Option<Epoll>, sys::Errno> {
        match (kind, e) {
            (Pipe::Epoll, Some(e)) => {
                let ep = Epoll::new()?;
                ep.add(e, 0, false)?;
                Ok(Some(ep))
            }
            _ => Ok(None),
        }
    };
    let ep_a = ep_for(&e2)?;
    let ep_b = ep_for(&e1)?;
    fn wait_fd(e: &EventFd, ep: &Option<Epoll>) {
        match ep {
            None => {
                let _ = e.drain();
            }
            Some(ep) => loop {
                if e.drain().unwrap_or(0) > 0 {
                    return;
                }
                let mut ev = [EpollEvent::empty()];
                let _ = ep.wait(&mut ev, Some(Duration::from_secs(5)));
            },
        }
    }
    let responder = {
        let (word, e1, e2) = (word.clone(), e1.clone(), e2.clone());
        std::thread::spawn(move || {
            let _ = sys::pin_to_cpu(b);
            let u0 = Usage::thread();
            for _ in 0..iters {
                match (&*e1, &*e2) {
                    (Some(e1), Some(e2)) => {
                        wait_fd(e1, &ep_b);
                        let _ = e2.signal();
                    }
                    _ => {
                        while word.load(Ordering::Acquire) != 1 {
                            let _ = sys::futex_wait(
                                &word,
                                0,
                                Some(Deadline::after(Duration::from_secs(5))),
                            );
                        }
                        word.store(0, Ordering::Release);
                        sys::futex_wake(&word, 1);
                    }
                }
            }
            Usage::thread().since(u0)
        })
    };
    let _ = sys::pin_to_cpu(a);
    for _ in 0..iters {
        let t0 = now_ns();
        match (&*e1, &*e2) {
            (Some(e1), Some(e2)) => {
                let _ = e1.signal();
                wait_fd(e2, &ep_a);
            }
            _ => {
                word.store(1, Ordering::Release);
                sys::futex_wake(&word, 1);
                while word.load(Ordering::Acquire) != 0 {
                    let _ =
                        sys::futex_wait(&word, 1, Some(Deadline::after(Duration::from_secs(5))));
                }
            }
        }
        h.saturating_record(((now_ns() - t0) / 2).max(1));
    }
    let u = responder.join().unwrap_or_default();
    Ok((h, u.cpu_ns as f64 / iters.max(1) as f64))
}

/// How one of K idle threads is woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeKind {
    /// Each sleeper on its own futex word; the waker wakes one by address.
    Futex,
    /// One shared eventfd, each sleeper in its own epoll with `EPOLLEXCLUSIVE`.
    Exclusive,
    /// One shared eventfd, each sleeper in its own epoll without it.
    Herd,
}

impl WakeKind {
    /// Name used in keys.
    pub fn name(self) -> &'static str {
        match self {
            WakeKind::Futex => "futex",
            WakeKind::Exclusive => "epollexclusive",
            WakeKind::Herd => "herd",
        }
    }
}

/// Sleep the calling thread for `d` with a timed futex wait (what the harness's workers do
/// between events), retrying early returns.
fn nap(d: Duration) {
    let w = AtomicU32::new(0);
    let end = now_ns() + d.as_nanos() as u64;
    while now_ns() < end {
        let _ = sys::futex_wait(&w, 0, Some(Deadline::Monotonic(end)));
    }
}

/// Waker on `waker_cpu`, `k` sleepers on `sleeper_cpu` (the same CPU or another); `iters`
/// wakeups. Returns latency (waker timestamp → woken thread running), the sleepers' CPU time
/// per wakeup, and the waker's wake call (p50), all ns.
///
/// The waker behaves as an unblocking worker of the harness: before each wakeup it sleeps
/// in a timed wait (so it has just woken from one, as a worker has), timestamps, wakes, and
/// goes back to timed sleeps until the wakeup is done. Nobody waits on a futex for the
/// woken thread, so its CPU time is its own wakeup and return to sleep, not a second
/// cross-CPU wakeup of the waker.
pub fn wake_one_of_k(
    kind: WakeKind,
    k: usize,
    waker_cpu: usize,
    sleeper_cpu: usize,
    iters: usize,
) -> Result<(Histogram<u64>, f64, f64), sys::Errno> {
    let k = k.max(1);
    let mut call = new_histogram();
    let words: Arc<Vec<AtomicU32>> = Arc::new((0..k).map(|_| AtomicU32::new(0)).collect());
    let efd = Arc::new(EventFd::new_nonblocking()?);
    let ts = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let asleep = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicU32::new(0));
    let mut eps = Vec::new();
    if kind != WakeKind::Futex {
        for i in 0..k {
            let ep = Epoll::new()?;
            ep.add(&*efd, i as u64, kind == WakeKind::Exclusive)?;
            eps.push(ep);
        }
    }
    let mut eps = eps.into_iter();
    let sleepers: Vec<_> = (0..k)
        .map(|i| {
            let (words, efd, ts, done, asleep, stop) = (
                words.clone(),
                efd.clone(),
                ts.clone(),
                done.clone(),
                asleep.clone(),
                stop.clone(),
            );
            let ep = eps.next();
            std::thread::spawn(move || {
                let _ = sys::pin_to_cpu(sleeper_cpu);
                let mut h = new_histogram();
                let u0 = Usage::thread();
                loop {
                    asleep.fetch_add(1, Ordering::AcqRel);
                    let won = match &ep {
                        None => {
                            let w = &words[i];
                            while w.load(Ordering::Acquire) == 0
                                && stop.load(Ordering::Acquire) == 0
                            {
                                let _ = sys::futex_wait(w, 0, None);
                            }
                            w.swap(0, Ordering::AcqRel) == 1
                        }
                        Some(ep) => {
                            let mut ev = [EpollEvent::empty()];
                            let _ = ep.wait(&mut ev, None);
                            efd.drain().unwrap_or(0) > 0
                        }
                    };
                    let now = now_ns();
                    asleep.fetch_sub(1, Ordering::AcqRel);
                    if stop.load(Ordering::Acquire) != 0 {
                        break;
                    }
                    if won {
                        h.saturating_record(now.saturating_sub(ts.load(Ordering::Acquire)).max(1));
                        done.fetch_add(1, Ordering::AcqRel);
                    }
                }
                (h, Usage::thread().since(u0))
            })
        })
        .collect();
    let _ = sys::pin_to_cpu(waker_cpu);
    tight_timer_slack();
    let settle = |want: usize| {
        let t0 = now_ns();
        while asleep.load(Ordering::Acquire) < want && now_ns() - t0 < 1_000_000_000 {
            nap(Duration::from_micros(20));
        }
        // Let the last one reach its sleep inside the system call.
        nap(Duration::from_micros(30));
    };
    for it in 0..iters {
        settle(k);
        let t0 = now_ns();
        ts.store(t0, Ordering::Release);
        match kind {
            WakeKind::Futex => {
                let w = &words[it % k];
                w.store(1, Ordering::Release);
                sys::futex_wake(w, 1);
            }
            _ => {
                let _ = efd.signal();
            }
        }
        call.saturating_record((now_ns() - t0).max(1));
        let want = it as u32 + 1;
        let t0 = now_ns();
        while done.load(Ordering::Acquire) < want && now_ns() - t0 < 1_000_000_000 {
            nap(Duration::from_micros(20));
        }
    }
    settle(k);
    stop.store(1, Ordering::Release);
    // Exclusive sleepers may need several signals to all see the stop.
    while !sleepers.iter().all(|s| s.is_finished()) {
        for w in words.iter() {
            sys::futex_wake(w, 1);
        }
        let _ = efd.signal();
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut h = new_histogram();
    let mut cpu = 0;
    for s in sleepers {
        if let Ok((hs, u)) = s.join() {
            let _ = h.add(&hs);
            cpu += u.cpu_ns;
        }
    }
    Ok((
        h,
        cpu as f64 / iters.max(1) as f64,
        call.value_at_quantile(0.5) as f64,
    ))
}

/// Where the scheduler runs a thread woken by its timer when its previous CPU `busy` is kept
/// busy by a spinning thread and `idle` is idle: the fraction of `iters` wakeups that ran on
/// `busy` (the rest were moved to the idle CPU). The thread is placed on `busy` before each
/// sleep and may then run on both CPUs, as an unpinned worker of the harness.
pub fn stay_on_busy_fraction(busy: usize, idle: usize, iters: usize) -> f64 {
    if busy == idle {
        return 0.0;
    }
    let stop = Arc::new(AtomicU32::new(0));
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = sys::pin_to_cpu(busy);
            while stop.load(Ordering::Relaxed) == 0 {
                std::hint::spin_loop();
            }
        })
    };
    let both = [busy, idle];
    let t = std::thread::spawn(move || {
        tight_timer_slack();
        let mut stayed = 0usize;
        for _ in 0..iters {
            let _ = sys::pin_to_cpu(busy);
            crate::os::set_affinity(&both);
            nap(Duration::from_micros(200));
            if sys::current_cpu() == busy {
                stayed += 1;
            }
        }
        stayed as f64 / iters.max(1) as f64
    });
    let f = t.join().unwrap_or(0.0);
    stop.store(1, Ordering::Relaxed);
    let _ = spinner.join();
    f
}

/// `adopt`'s move: a thread on CPU `a` that just woke from a timed sleep pins itself to the
/// idle CPU `b` (a migration) and then widens its affinity again. Returns the latency until
/// it runs on `b` (p50) and the thread's CPU time for the move and the widening (p50), ns.
pub fn migrate(a: usize, b: usize, iters: usize) -> (f64, f64) {
    let t = std::thread::spawn(move || {
        tight_timer_slack();
        let (mut lat, mut cpu) = (new_histogram(), new_histogram());
        for _ in 0..iters {
            let _ = sys::pin_to_cpu(a);
            nap(Duration::from_micros(100));
            let (t0, c0) = (now_ns(), crate::os::thread_cpu_ns());
            let _ = sys::pin_to_cpu(b);
            let t1 = now_ns();
            crate::os::set_affinity(&[a, b]);
            let c1 = crate::os::thread_cpu_ns();
            lat.saturating_record((t1 - t0).max(1));
            cpu.saturating_record(c1.saturating_sub(c0).max(1));
        }
        (
            lat.value_at_quantile(0.5) as f64,
            cpu.value_at_quantile(0.5) as f64,
        )
    });
    t.join().unwrap_or((0.0, 0.0))
}

/// Two shared-eventfd costs that involve no sleeping thread, ns (p50 of batches): an eventfd
/// write that nobody waits for (the fd is in an epoll without waiters: what `epoll-excl`
/// and `herd` pay per event when every server is busy), and a stale wakeup: `epoll_wait` on
/// an fd a previous write left readable, which returns at once, plus the drain.
pub fn fd_write_and_stale(iters: usize) -> Result<(f64, f64), sys::Errno> {
    let efd = EventFd::new_nonblocking()?;
    let ep = Epoll::new()?;
    ep.add(&efd, 0, true)?;
    let (mut w, mut st) = (new_histogram(), new_histogram());
    let mut ev = [EpollEvent::empty()];
    for _ in 0..iters.div_ceil(100) {
        let t0 = now_ns();
        for _ in 0..100 {
            let _ = efd.signal();
        }
        w.saturating_record(((now_ns() - t0) / 100).max(1));
        let _ = efd.drain();
        let mut sum = 0;
        for _ in 0..100 {
            let _ = efd.signal();
            let t0 = now_ns();
            let _ = ep.wait(&mut ev, Some(Duration::ZERO));
            let _ = efd.drain();
            sum += now_ns() - t0;
        }
        st.saturating_record((sum / 100).max(1));
    }
    Ok((
        w.value_at_quantile(0.5) as f64,
        st.value_at_quantile(0.5) as f64,
    ))
}

/// The workload's own CPU cost per event with no server and no wakeup at all: the workers of
/// `cfg` sleep until their Poisson arrival times (timed futex waits, as in the harness) and
/// run the compute in their own thread. Returns process CPU per event beyond the compute, ns.
/// What every mechanism pays on top of its wakeups: the workers' timed sleeps and wakes.
pub fn workload_cpu_ns(cfg: &crate::harness::Config) -> f64 {
    use crate::os::burn_cpu;
    let times = crate::harness::schedule(cfg);
    let n: usize = times.iter().map(Vec::len).sum();
    let go = AtomicU64::new(0);
    let compute = cfg.compute_ns;
    let u = std::thread::scope(|s| {
        let hs: Vec<_> = times
            .iter()
            .map(|t| {
                let go = &go;
                s.spawn(move || {
                    // Free on the run's CPUs, whatever the creator's affinity.
                    crate::os::set_affinity(&cfg.cpus);
                    tight_timer_slack();
                    let w = AtomicU32::new(0);
                    let t0 = loop {
                        let t = go.load(Ordering::Acquire);
                        if t != 0 {
                            break t;
                        }
                        std::thread::sleep(Duration::from_micros(100));
                    };
                    for &t in t {
                        let d = t0 + t;
                        while now_ns() < d {
                            let _ = sys::futex_wait(&w, 0, Some(Deadline::Monotonic(d)));
                        }
                        burn_cpu(compute);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let u0 = Usage::process();
        go.store(now_ns() + 1_000_000, Ordering::Release);
        for h in hs {
            let _ = h.join();
        }
        Usage::process().since(u0)
    });
    ((u.cpu_ns as f64 - n as f64 * compute as f64) / n.max(1) as f64).max(0.0)
}

/// `gettid` round trip into the kernel, ns (median of batches).
pub fn syscall_ns(iters: usize) -> f64 {
    let mut h = new_histogram();
    for _ in 0..iters.div_ceil(100) {
        let t0 = now_ns();
        for _ in 0..100 {
            std::hint::black_box(sys::gettid());
        }
        h.saturating_record(((now_ns() - t0) / 100).max(1));
    }
    h.value_at_quantile(0.5) as f64
}

/// CPU per timed sleep-and-wake of one thread (a timed futex wait of `nap`), ns.
pub fn timed_wake_cpu_ns(iters: usize, nap: Duration) -> f64 {
    let h = std::thread::spawn(move || {
        tight_timer_slack();
        let w = AtomicU32::new(0);
        let u0 = Usage::thread();
        for _ in 0..iters {
            let _ = sys::futex_wait(&w, 0, Some(Deadline::after(nap)));
        }
        Usage::thread().since(u0).cpu_ns as f64 / iters.max(1) as f64
    });
    h.join().unwrap_or(0.0)
}

/// One claim (tag-bit list pop) plus one release (reclaim + push) of an idle server, ns: what
/// `adopt` pays instead of a wakeup.
pub fn list_claim_release_ns(iters: usize) -> f64 {
    use umcg_abi::UmcgTask;
    use umcg_abi::idle_servers::{IdleServerList, Pop};
    let list = IdleServerList::new();
    let t = Box::new(UmcgTask::new_server());
    list.prepare(&t);
    let mut h = new_histogram();
    for _ in 0..iters.div_ceil(100) {
        let t0 = now_ns();
        for _ in 0..100 {
            // SAFETY: `t` is boxed and outlives `list`'s use here; one thread pushes it.
            let _ = unsafe { list.push(&t) };
            if let Pop::Got(n) = list.pop(64) {
                std::hint::black_box(n);
            }
            let _ = list.reclaim(&t);
        }
        h.saturating_record(((now_ns() - t0) / 100).max(1));
    }
    h.value_at_quantile(0.5) as f64
}

/// `adopt`'s start path as the harness runs it, ns (p50): from the unblocking worker's
/// timestamp, just back from a timed sleep (`nap`), through its CPU lookup, the claim of an
/// idle server of the `adopt` mechanism, the claim counter and the same-CPU check, to the
/// worker's start timestamp. The claimed server is on `cpu`, the thread's own CPU (no
/// migration). What `adopt`'s same-CPU latency is, with the caches as a woken worker finds
/// them.
pub fn adopt_claim_path_ns(cpu: usize, iters: usize, nap: Duration) -> f64 {
    let h = std::thread::spawn(move || {
        if sys::pin_to_cpu(cpu).is_err() {
            return 0.0;
        }
        tight_timer_slack();
        let Ok(m) = crate::build(crate::Mechanism::Adopt, 1, &[cpu]) else {
            return 0.0;
        };
        let claims = AtomicU64::new(0);
        let w = AtomicU32::new(0);
        let mut h = new_histogram();
        for _ in 0..iters.max(1) {
            let _ = sys::futex_wait(&w, 0, Some(Deadline::after(nap)));
            // As `Shared::worker` then `Shared::unblock`, `move_to` and `run` in the harness.
            let ts = now_ns();
            let me = std::hint::black_box(sys::current_cpu());
            let Some(tok) = m.claim() else { continue };
            claims.fetch_add(1, Ordering::Relaxed);
            let moved = m.server_cpu(tok).is_some_and(|c| c != sys::current_cpu());
            let start = now_ns();
            std::hint::black_box((me, moved));
            h.saturating_record(start.saturating_sub(ts).max(1));
            m.release(tok);
        }
        h.value_at_quantile(0.5) as f64
    });
    h.join().unwrap_or(0.0)
}

/// The loads at which [`workload_cpu_ns`] is measured (the calibration's `workload_cpu_*`).
pub const WORKLOAD_LOADS: [f64; 5] = [0.1, 0.3, 0.5, 0.7, 0.9];

/// The workload that [`workload_cpu_ns`] imitates in [`run_all`].
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSpec {
    /// Worker threads.
    pub workers: usize,
    /// CPUs of the capacity (the load is a fraction of `cpus.len()` CPUs).
    pub cpus: Vec<usize>,
    /// Compute per event, ns.
    pub compute_ns: u64,
    /// Length of each load's arrival schedule, ns.
    pub duration_ns: u64,
    /// Seed of the arrival process.
    pub seed: u64,
}

impl WorkloadSpec {
    /// The harness configuration of this workload at `load`, for `duration_ns` with `seed`:
    /// one server per CPU, unpinned workers.
    pub fn config(&self, load: f64, duration_ns: u64, seed: u64) -> crate::harness::Config {
        crate::harness::Config {
            servers: self.cpus.len().max(1),
            workers: self.workers.max(1),
            cpus: self.cpus.clone(),
            pin_workers: false,
            load,
            compute_ns: self.compute_ns.max(1),
            duration_ns,
            seed,
        }
    }

    /// The defaults of `umcg-sim compare` on the allowed CPUs.
    pub fn default_for(cpus: Vec<usize>, quick: bool) -> Self {
        WorkloadSpec {
            workers: 32,
            cpus,
            compute_ns: 100_000,
            duration_ns: if quick { 60_000_000 } else { 300_000_000 },
            seed: 42,
        }
    }
}

fn one(name: &str, placement: String, v: f64) -> Baseline {
    Baseline {
        name: name.into(),
        placement,
        p50_ns: v,
        p99_ns: v,
        cpu_ns: v,
        quantiles_ns: Vec::new(),
    }
}

/// Every baseline, `iters` operations each (the wakeups use a third of that), and the
/// workload's own cost at [`WORKLOAD_LOADS`]. The measurements pin the calling thread; its
/// affinity is restored before returning (threads it creates later inherit it).
pub fn run_all(iters: usize, w: &WorkloadSpec, progress: impl FnMut(&str)) -> Vec<Baseline> {
    let allowed = sys::allowed_cpus().unwrap_or_default();
    let out = run_all_pinned(iters, w, progress);
    if !allowed.is_empty() {
        crate::os::set_affinity(&allowed);
    }
    out
}

fn run_all_pinned(iters: usize, w: &WorkloadSpec, mut progress: impl FnMut(&str)) -> Vec<Baseline> {
    let (a, b) = cpu_pair();
    let mut out = Vec::new();
    let pairs: Vec<(&str, usize, usize)> = if a == b {
        vec![("same", a, a)]
    } else {
        vec![("same", a, a), ("cross", a, b)]
    };
    for (kind, key) in [
        (Pipe::Futex, "futex_pingpong"),
        (Pipe::EventFd, "eventfd_pingpong"),
        (Pipe::Epoll, "epoll_eventfd_pingpong"),
    ] {
        for &(place, x, y) in &pairs {
            progress(&format!("{key}_{place}"));
            if let Ok((h, cpu)) = pingpong(kind, x, y, iters) {
                out.push(from_hist(
                    &format!("{key}_{place}"),
                    format!("CPU {x} <-> CPU {y}"),
                    &h,
                    cpu,
                ));
            }
        }
    }
    let wake_iters = (iters / 3).max(50);
    let mut wake = |out: &mut Vec<Baseline>, key: String, kind, k, x, y| {
        progress(&key);
        if let Ok((h, cpu, call)) = wake_one_of_k(kind, k, x, y, wake_iters) {
            out.push(from_hist(
                &key,
                format!("waker CPU {x}, {k} sleepers CPU {y}"),
                &h,
                cpu,
            ));
            out.push(one(
                &format!("{key}_wakercall"),
                format!("waker CPU {x}"),
                call,
            ));
        }
    };
    // One sleeper woken by a worker-like waker: the handoff every targeted mechanism makes.
    for (kind, name) in [(WakeKind::Futex, "futex"), (WakeKind::Exclusive, "epoll")] {
        for &(place, x, y) in &pairs {
            wake(&mut out, format!("wake1of1_{name}_{place}"), kind, 1, x, y);
        }
    }
    for kind in [WakeKind::Futex, WakeKind::Exclusive, WakeKind::Herd] {
        for k in [2, 8, 32] {
            wake(
                &mut out,
                format!("wake1of{k}_{}", kind.name()),
                kind,
                k,
                a,
                b,
            );
        }
    }
    progress("syscall");
    let s = syscall_ns(iters * 10);
    out.push(one("syscall_gettid", "one thread".into(), s));
    let c = list_claim_release_ns(iters * 10);
    out.push(one("list_claim_release", "one thread".into(), c));
    progress("adopt_claim_path");
    let c = adopt_claim_path_ns(a, (iters / 3).max(50), Duration::from_micros(50));
    out.push(one(
        "adopt_claim_path",
        format!("one thread, CPU {a}, after 50 us naps"),
        c,
    ));
    if let Ok((wr, st)) = fd_write_and_stale(iters * 10) {
        out.push(one("eventfd_write_nowaiter", "one thread".into(), wr));
        out.push(one("epoll_stale_wakeup", "one thread".into(), st));
    }
    progress("timed_wake");
    let c = timed_wake_cpu_ns((iters / 2).max(100), Duration::from_micros(200));
    out.push(Baseline {
        name: "timed_sleep_wake".into(),
        placement: "one thread, 200 us naps".into(),
        p50_ns: 0.0,
        p99_ns: 0.0,
        cpu_ns: c,
        quantiles_ns: Vec::new(),
    });
    if a != b {
        progress("placement");
        let f = stay_on_busy_fraction(a, b, (iters / 3).max(50));
        out.push(Baseline {
            name: "stay_on_busy_pct".into(),
            placement: format!("spinner on CPU {a}, CPU {b} idle"),
            p50_ns: f * 100.0,
            p99_ns: f * 100.0,
            cpu_ns: 0.0,
            quantiles_ns: Vec::new(),
        });
        progress("migrate");
        let (lat, cpu) = migrate(a, b, (iters / 3).max(50));
        out.push(Baseline {
            name: "migrate".into(),
            placement: format!("CPU {a} -> idle CPU {b}"),
            p50_ns: lat,
            p99_ns: lat,
            cpu_ns: cpu,
            quantiles_ns: Vec::new(),
        });
    }
    for &l in &WORKLOAD_LOADS {
        let key = format!("workload_L{:.0}", l * 100.0);
        progress(&key);
        let c = workload_cpu_ns(&w.config(l, w.duration_ns, w.seed));
        out.push(Baseline {
            name: key,
            placement: format!(
                "{} unpinned workers, no servers, {:.0} us compute",
                w.workers,
                w.compute_ns as f64 / 1000.0
            ),
            p50_ns: 0.0,
            p99_ns: 0.0,
            cpu_ns: c,
            quantiles_ns: Vec::new(),
        });
    }
    if a != b {
        handoffs(w, &mut out, &mut progress);
    }
    out
}

/// The load of the harness runs that measure the handoffs ([`handoffs`]): between the
/// validation's loads, high enough that CPUs are as warm as there (handoffs at 5 % load
/// are ×1.3–1.5 slower than at 20–50 %: longer-halted vCPUs, colder caches).
pub const HANDOFF_LOAD: f64 = 0.2;

/// The mechanisms whose handoffs [`handoffs`] measures: all of them (`herd`: the first of
/// the herd to start; `adopt`: the claim of the worker's own CPU's server).
pub const HANDOFF_MECHANISMS: [crate::Mechanism; 6] = crate::Mechanism::ALL;

/// The baseline name of `m`'s handoff to a server on the unblocking worker's CPU (`place` =
/// `"same"`) or on another (`"cross"`).
pub fn handoff_key(m: crate::Mechanism, place: &str) -> String {
    format!("handoff_{}_{place}", m.name())
}

/// Each mechanism's handoff in the workload's own conditions: the harness (`w`'s workers,
/// CPUs and compute; unpinned workers) at [`HANDOFF_LOAD`] for twice `w`'s duration, the
/// latency of its clean handoffs ([`crate::harness::RunResult::handoff`]: one wakeup, no
/// queueing) started on their worker's CPU (`handoff_<m>_same`) and of the others
/// (`_cross`), as distributions. A kind with fewer than 30 clean handoffs gets more runs
/// (3 at most, new seeds); one with none at all falls back to every event of that kind, and
/// its placement text says so.
///
/// Why not a microbenchmark: on a VM the cost of waking a halted vCPU, and of a worker's
/// first instructions after a long sleep (cold caches and TLB), depend on the host's halt
/// polling and on what else ran; a two-thread loop reproduces neither (on the reference
/// machine its cross-CPU wake was 33–40 µs where the workload's own was 26–28 µs, its
/// same-CPU one 1.5 µs where the workload's was 3 µs). These runs are not the experiments
/// the model is validated against: another load, another seed, and only the handoffs with
/// no interaction between events (the model simulates the interactions).
pub fn handoffs(w: &WorkloadSpec, out: &mut Vec<Baseline>, progress: &mut impl FnMut(&str)) {
    for m in HANDOFF_MECHANISMS {
        progress(&handoff_key(m, "same"));
        let mut cfg = w.config(
            HANDOFF_LOAD,
            w.duration_ns.saturating_mul(2),
            w.seed ^ 0x5eed,
        );
        // [clean, all events] x [same CPU, other CPU]. Short runs (`--quick`, or a slow
        // build such as the AddressSanitizer one) may see few clean handoffs of a kind: run
        // again, up to HANDOFF_RUNS times, until each kind has HANDOFF_MIN.
        let mut h: [[Histogram<u64>; 2]; 2] =
            std::array::from_fn(|_| std::array::from_fn(|_| new_histogram()));
        let (mut runs, mut events) = (0, 0);
        while runs < HANDOFF_RUNS {
            let Ok(r) = crate::harness::run(m, &cfg) else {
                break;
            };
            runs += 1;
            events += r.events;
            cfg.seed = cfg.seed.wrapping_add(1);
            for (i, (all, same)) in [
                (&r.handoff, &r.handoff_same_cpu),
                (&r.latency, &r.latency_same_cpu),
            ]
            .into_iter()
            .enumerate()
            {
                let _ = h[i][0].add(same);
                let _ = h[i][1].add(crate::harness::others(all, same));
            }
            if h[0].iter().all(|x| x.len() >= HANDOFF_MIN) {
                break;
            }
        }
        for (j, place) in ["same", "cross"].into_iter().enumerate() {
            // Clean handoffs if there are any; else every event of that kind (noted).
            let (hist, what) = if !h[0][j].is_empty() {
                (&h[0][j], "clean handoffs")
            } else {
                (&h[1][j], "events (no clean handoff seen)")
            };
            if hist.is_empty() {
                continue;
            }
            let placement = format!(
                "harness at {:.0} % load, {} {what} of {events} events in {runs} run(s): {}",
                HANDOFF_LOAD * 100.0,
                hist.len(),
                cfg.placement()
            );
            out.push(from_hist(&handoff_key(m, place), placement, hist, 0.0));
        }
    }
}

/// The most harness runs [`handoffs`] makes per mechanism.
const HANDOFF_RUNS: u32 = 3;

/// The clean handoffs of each kind [`handoffs`] wants before it stops running.
const HANDOFF_MIN: u64 = 30;

/// Wake one of `k` idle servers through mechanism `m` (the criterion benches' path): `k`
/// servers on `sleeper_cpu` idle through [`crate::IdleWakeup::idle`], a waker on `waker_cpu`
/// publishes one unit of work, fences and calls `wake_one` (`adopt`: `claim` + `release`).
/// Latency from the waker's timestamp to a server taking the work.
pub fn mechanism_wake_one_of_k(
    m: crate::Mechanism,
    k: usize,
    waker_cpu: usize,
    sleeper_cpu: usize,
    iters: usize,
) -> Result<Histogram<u64>, sys::Errno> {
    use std::sync::atomic::{AtomicBool, fence};
    struct W {
        pending: AtomicU32,
        stop: AtomicBool,
    }
    impl crate::Work for W {
        fn pending(&self) -> bool {
            self.pending.load(Ordering::Acquire) != 0
        }
        fn stopping(&self) -> bool {
            self.stop.load(Ordering::Acquire)
        }
    }
    let k = k.max(1);
    let mech = crate::build(m, k, &[sleeper_cpu])?;
    let w = W {
        pending: AtomicU32::new(0),
        stop: AtomicBool::new(false),
    };
    let ts = AtomicU64::new(0);
    let done = AtomicU32::new(0);
    let mut h = new_histogram();
    std::thread::scope(|s| {
        let servers: Vec<_> = (0..k)
            .map(|i| {
                let (mech, w, ts, done) = (&*mech, &w, &ts, &done);
                s.spawn(move || {
                    let _ = sys::pin_to_cpu(sleeper_cpu);
                    let mut h = new_histogram();
                    loop {
                        if w.pending.swap(0, Ordering::AcqRel) == 1 {
                            h.saturating_record(
                                now_ns().saturating_sub(ts.load(Ordering::Acquire)).max(1),
                            );
                            done.fetch_add(1, Ordering::AcqRel);
                            sys::futex_wake(done, 1);
                            continue;
                        }
                        if w.stop.load(Ordering::Acquire) {
                            break;
                        }
                        if mech.idle(i, w) == crate::Idle::Woken {
                            mech.after_wake(i, w);
                        }
                    }
                    h
                })
            })
            .collect();
        let _ = sys::pin_to_cpu(waker_cpu);
        std::thread::sleep(Duration::from_millis(2));
        for it in 0..iters {
            // Let the last woken server go back to sleep.
            std::thread::sleep(Duration::from_micros(50));
            let t0 = now_ns();
            ts.store(t0, Ordering::Release);
            if let Some(tok) = mech.claim() {
                h.saturating_record((now_ns() - t0).max(1));
                mech.release(tok);
                continue;
            }
            w.pending.store(1, Ordering::Release);
            fence(Ordering::SeqCst);
            let _ = mech.wake_one();
            let want = it as u32 + 1;
            let start = now_ns();
            while done.load(Ordering::Acquire) < want {
                let d = done.load(Ordering::Acquire);
                let _ = sys::futex_wait(&done, d, Some(Deadline::after(Duration::from_millis(5))));
                if now_ns() - start > 1_000_000_000 {
                    mech.wake_all();
                }
            }
        }
        w.stop.store(true, Ordering::Release);
        while !servers.iter().all(|s| s.is_finished()) {
            mech.wake_all();
            std::thread::sleep(Duration::from_micros(200));
        }
        for s in servers {
            if let Ok(hs) = s.join() {
                let _ = h.add(&hs);
            }
        }
    });
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_complete() {
        let (a, b) = cpu_pair();
        let (h, _) = pingpong(Pipe::Futex, a, b, 50).unwrap();
        assert_eq!(h.len(), 50);
        let (h, _) = pingpong(Pipe::Epoll, a, b, 50).unwrap();
        assert_eq!(h.len(), 50);
        for kind in [WakeKind::Futex, WakeKind::Exclusive, WakeKind::Herd] {
            let (h, _, _) = wake_one_of_k(kind, 3, a, b, 20).unwrap();
            assert_eq!(h.len(), 20, "{kind:?}");
        }
    }
}
