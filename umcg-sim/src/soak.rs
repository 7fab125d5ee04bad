//! `umcg-sim soak`: a seeded random mix of scheduling events on the M:N runtime, with the
//! runtime's invariant checker on and a watchdog (issue 6).
//!
//! # Workload
//!
//! `workers` jobs run on `servers` servers; job `i` draws its events from a generator seeded
//! with `(seed, i)`, so a seed fixes every job's sequence of events (the interleaving is the
//! machine's; a failing seed replays the same mix, which is what makes failures recur). The
//! events, each bounded in time:
//!
//! | event | what it exercises |
//! |---|---|
//! | block | `umcg::sleep` of 0–50 µs: the block and wake hooks, the idle-worker list, idle servers |
//! | yield | `yield_now`: a direct worker-to-worker switch (or none if nothing else is runnable) |
//! | send | a message to a random job's mailbox: an unpark, the handoff slot, direct switches |
//! | recv-timeout | `recv_timeout` of 0–300 µs on the own mailbox: timeouts racing with sends |
//! | lock | a contended `umcg::sync::Mutex` (8 of them) around a counter |
//! | cancel-or-data | a pipe read under a `CancelToken`; a helper thread either cancels it or writes a byte, by the event's draw |
//! | spin | a busy loop longer than the time slice: a preemption kick |
//! | panic | spawn a job that panics and join it (captured; the pool reuses the worker) |
//! | park | `park()` once; a helper thread unparks parked jobs every 100 µs |
//! | unpark | unpark a random job, whatever it is doing (stray unparks: the NOTIFIED paths) |
//!
//! # What fails the run
//!
//! - any violation the runtime's checker reports (`umcg_runtime::check`: double enqueue, two
//!   workers on one server's CPU, a runtime transition off the spec's table);
//! - a worker runnable for longer than `--stall` (a lost wakeup), or a job making no
//!   progress for longer than `--stall` although every event is bounded: the watchdog
//!   prints the seed, the replay command and `Runtime::debug_dump` (every task's state and
//!   list membership) and fails;
//! - a job that does not finish, a lost or duplicated message, a lock count off, a cancel
//!   that returned data or data that returned cancelled, a panic not captured.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use umcg_runtime::cancel::{CancelToken, Cancelled};
use umcg_runtime::kernel::IdleWakeup;
use umcg_runtime::sync::{Mutex, Receiver, RecvTimeoutError, Sender, channel};
use umcg_runtime::{Runtime, check};

/// Soak parameters.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// Concurrent jobs (worker threads).
    pub workers: usize,
    /// Servers.
    pub servers: usize,
    /// Total events over all jobs.
    pub events: u64,
    /// Seed of every job's event sequence.
    pub seed: u64,
    /// Idle-wakeup mode.
    pub mode: IdleWakeup,
    /// Time slice (preemption).
    pub slice: Duration,
    /// Watchdog bound: runnable-and-not-run, or no progress, for longer fails the run.
    pub stall: Duration,
}

/// Counts of a finished soak run.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    /// Events executed (= the configured total).
    pub events: u64,
    /// Per kind, in [`KINDS`] order.
    pub per_kind: [u64; KINDS.len()],
    /// Messages sent (= received).
    pub messages: u64,
    /// recv-timeout events that timed out.
    pub timeouts: u64,
    /// Pipe reads cancelled.
    pub cancelled: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Event kinds, in draw order.
pub const KINDS: [&str; 10] = [
    "block",
    "yield",
    "send",
    "recv-timeout",
    "lock",
    "cancel-or-data",
    "spin",
    "panic",
    "park",
    "unpark",
];

/// Draw weights for [`KINDS`].
const WEIGHTS: [u32; 10] = [300, 180, 200, 150, 150, 40, 2, 2, 60, 100];

/// Why a soak run failed (exit code 1), or its arguments were refused (exit code 2).
#[derive(Debug)]
pub struct SoakFailure(pub String);

/// Bad `soak` arguments.
#[derive(Debug)]
pub struct SoakUsage(pub String);

impl fmt::Display for SoakFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SoakFailure {}

/// SplitMix64: small, seedable, and good enough to draw event kinds.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn kind(&mut self) -> usize {
        let mut x = self.below(WEIGHTS.iter().sum::<u32>() as u64) as u32;
        for (i, w) in WEIGHTS.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        0
    }
}

/// A pipe read that the helper thread ends, by cancelling or writing.
struct CancelRequest {
    token: CancelToken,
    write_end: Arc<OwnedFd>,
    cancel: bool,
}

/// What every job shares.
struct Shared {
    mailboxes: Vec<Sender<u64>>,
    locks: Vec<Mutex<u64>>,
    requests: StdMutex<Vec<CancelRequest>>,
    /// Per job: its unparker (set when it starts) and whether it is in a park event.
    unparkers: Vec<std::sync::OnceLock<umcg_runtime::Unparker>>,
    parked: Vec<AtomicBool>,
    /// Per job: events done, and the monotonic time of the last one.
    done: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    sent: AtomicU64,
    received: AtomicU64,
    timeouts: AtomicU64,
    cancelled: AtomicU64,
    lock_ops: AtomicU64,
    per_kind: [AtomicU64; KINDS.len()],
    failures: StdMutex<Vec<String>>,
    epoch: Instant,
    slice: Duration,
}

impl Shared {
    fn fail(&self, msg: String) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < 32 {
            f.push(msg);
        }
    }
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Marker payload of the intended panics (the soak's panic hook keeps them quiet).
#[derive(Debug)]
pub struct IntendedPanic;

/// Run one soak. `progress` is called with the events done so far, a few times a second.
pub fn run(cfg: &SoakConfig, mut progress: impl FnMut(u64)) -> Result<SoakReport, SoakFailure> {
    if cfg.workers == 0 || cfg.servers == 0 {
        return Err(SoakFailure(
            "--workers and --servers must be at least 1".into(),
        ));
    }
    check::enable();
    install_quiet_panic_hook();
    let rt = Runtime::builder()
        .servers(cfg.servers)
        .idle_wakeup(cfg.mode)
        .time_slice(Some(cfg.slice))
        .worker_stack_size(128 * 1024)
        .build()
        .map_err(|e| SoakFailure(format!("building the runtime: {e}")))?;
    let n = cfg.workers;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| channel::<u64>()).unzip();
    let sh = Arc::new(Shared {
        mailboxes: txs,
        locks: (0..8).map(|_| Mutex::new(0)).collect(),
        requests: StdMutex::new(Vec::new()),
        unparkers: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
        parked: (0..n).map(|_| AtomicBool::new(false)).collect(),
        done: (0..n).map(|_| AtomicU64::new(0)).collect(),
        last: (0..n).map(|_| AtomicU64::new(0)).collect(),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        cancelled: AtomicU64::new(0),
        lock_ops: AtomicU64::new(0),
        per_kind: Default::default(),
        failures: StdMutex::new(Vec::new()),
        epoch: Instant::now(),
        slice: cfg.slice,
    });
    let stop_helper = Arc::new(AtomicBool::new(false));
    let helper = {
        let (sh, stop) = (sh.clone(), stop_helper.clone());
        std::thread::Builder::new()
            .name("soak-canceller".into())
            .spawn(move || canceller(&sh, &stop))
            .map_err(|e| SoakFailure(format!("starting the canceller thread: {e}")))?
    };
    let t0 = Instant::now();
    let base = cfg.events / n as u64;
    let extra = cfg.events % n as u64;
    let mut handles = Vec::with_capacity(n);
    for (i, rx) in rxs.into_iter().enumerate() {
        let quota = base + u64::from((i as u64) < extra);
        let sh2 = sh.clone();
        let seed = cfg.seed;
        handles.push(rt.spawn(move || job(&sh2, i, seed, quota, rx)));
    }

    // Watchdog: violations, stalled runnable workers, jobs without progress.
    let total = cfg.events;
    let mut verdict = Ok(());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let done: u64 = sh.done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
        progress(done);
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
        if check::violation_count() > 0 {
            verdict = Err(format!("invariant violations: {:#?}", check::violations()));
            break;
        }
        let stalled = rt.stalled(cfg.stall);
        if !stalled.is_empty() {
            verdict = Err(format!(
                "lost wakeup: {} worker(s) runnable for more than {:?}:\n{}",
                stalled.len(),
                cfg.stall,
                stalled.join("\n")
            ));
            break;
        }
        let now = sh.now();
        let stall_ns = u64::try_from(cfg.stall.as_nanos()).unwrap_or(u64::MAX);
        let stuck: Vec<usize> = (0..n)
            .filter(|&i| {
                !handles[i].is_finished()
                    && now.saturating_sub(sh.last[i].load(Ordering::Relaxed)) > stall_ns
            })
            .collect();
        if !stuck.is_empty() {
            verdict = Err(format!(
                "{} job(s) made no progress for {:?} although every event is bounded (first: {:?})",
                stuck.len(),
                cfg.stall,
                &stuck[..stuck.len().min(16)]
            ));
            break;
        }
    }
    if let Err(msg) = verdict {
        let dump = rt.debug_dump();
        // Leave the runtime to `Drop` (it never waits) and the stuck threads to the exit.
        stop_helper.store(true, Ordering::Relaxed);
        return Err(SoakFailure(format!(
            "{msg}\n\nreplay: umcg-sim soak --workers {} --servers {} --events {} --seed {} --mode {}\n\nstate dump:\n{dump}",
            cfg.workers,
            cfg.servers,
            cfg.events,
            cfg.seed,
            mode_name(cfg.mode)
        )));
    }
    for (i, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            sh.fail(format!("job {i} did not finish cleanly: {e}"));
        }
    }
    stop_helper.store(true, Ordering::Relaxed);
    let _ = helper.join();
    rt.shutdown()
        .map_err(|e| SoakFailure(format!("shutdown: {e}")))?;
    let elapsed = t0.elapsed();

    let mut failures = sh
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let done: u64 = sh.done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
    if done != total {
        failures.push(format!("{done} events done, {total} expected"));
    }
    let (sent, received) = (
        sh.sent.load(Ordering::Relaxed),
        sh.received.load(Ordering::Relaxed) + drain_late(),
    );
    if sent != received {
        failures.push(format!("{sent} messages sent, {received} received"));
    }
    let locked: u64 = sh.locks.iter().map(|m| *m.lock()).sum();
    let lock_ops = sh.lock_ops.load(Ordering::Relaxed);
    if locked != lock_ops {
        failures.push(format!(
            "locked counters sum to {locked}, {lock_ops} lock events"
        ));
    }
    if check::violation_count() > 0 {
        failures.push(format!("invariant violations: {:#?}", check::violations()));
    }
    if !failures.is_empty() {
        return Err(SoakFailure(format!(
            "{}\n\nreplay: umcg-sim soak --workers {} --servers {} --events {} --seed {} --mode {}",
            failures.join("\n"),
            cfg.workers,
            cfg.servers,
            cfg.events,
            cfg.seed,
            mode_name(cfg.mode)
        )));
    }
    let mut per_kind = [0; KINDS.len()];
    for (p, c) in per_kind.iter_mut().zip(&sh.per_kind) {
        *p = c.load(Ordering::Relaxed);
    }
    Ok(SoakReport {
        events: done,
        per_kind,
        messages: sent,
        timeouts: sh.timeouts.load(Ordering::Relaxed),
        cancelled: sh.cancelled.load(Ordering::Relaxed),
        elapsed,
    })
}

/// The CLI spelling of a mode.
pub fn mode_name(m: IdleWakeup) -> &'static str {
    match m {
        IdleWakeup::EventFd => "eventfd",
        _ => "list",
    }
}

fn job(sh: &Shared, i: usize, seed: u64, quota: u64, rx: Receiver<u64>) {
    let mut rng = Rng::new(seed, i as u64);
    let n = sh.mailboxes.len() as u64;
    sh.last[i].store(sh.now(), Ordering::Relaxed);
    let _ = sh.unparkers[i].set(umcg_runtime::Unparker::current());
    for _ in 0..quota {
        let kind = rng.kind();
        match kind {
            0 => umcg_runtime::sleep(Duration::from_micros(rng.below(50))),
            1 => umcg_runtime::yield_now(),
            2 => {
                let to = rng.below(n) as usize;
                sh.sent.fetch_add(1, Ordering::Relaxed);
                if sh.mailboxes[to].send(i as u64).is_err() {
                    sh.fail(format!("job {i}: mailbox {to} closed"));
                }
            }
            3 => match rx.recv_timeout(Duration::from_micros(rng.below(300))) {
                Ok(_) => {
                    sh.received.fetch_add(1, Ordering::Relaxed);
                }
                Err(RecvTimeoutError::Timeout) => {
                    sh.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Err(RecvTimeoutError::Disconnected) => sh.fail(format!("job {i}: mailbox gone")),
            },
            4 => {
                let m = &sh.locks[rng.below(sh.locks.len() as u64) as usize];
                *m.lock() += 1;
                sh.lock_ops.fetch_add(1, Ordering::Relaxed);
            }
            5 => cancel_or_data(sh, i, rng.below(2) == 0),
            6 => {
                let until = Instant::now() + sh.slice + sh.slice / 2;
                let mut x = 1u64;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                }
            }
            8 => {
                sh.parked[i].store(true, Ordering::SeqCst);
                umcg_runtime::park();
                sh.parked[i].store(false, Ordering::SeqCst);
            }
            9 => {
                if let Some(u) = sh.unparkers[rng.below(n) as usize].get() {
                    u.unpark();
                }
            }
            _ => {
                let h = umcg_runtime::spawn(|| std::panic::panic_any(IntendedPanic));
                match h.join() {
                    Err(e) if e.is_panic() => {}
                    Err(e) => sh.fail(format!("job {i}: nested panic came back as {e}")),
                    Ok(()) => sh.fail(format!("job {i}: a panicking job returned")),
                }
            }
        }
        sh.per_kind[kind].fetch_add(1, Ordering::Relaxed);
        sh.done[i].fetch_add(1, Ordering::Relaxed);
        sh.last[i].store(sh.now(), Ordering::Relaxed);
    }
    // Drain the mailbox: messages still in flight to us are counted as received once the
    // senders are done; the last one drains after every job finished (see `run`).
    while rx.try_recv().is_ok() {
        sh.received.fetch_add(1, Ordering::Relaxed);
    }
    // Keep the receiver alive until every sender is done: park it in a global list.
    LATE.lock().unwrap_or_else(|e| e.into_inner()).push(rx);
}

/// Receivers of finished jobs, drained at the end of `run` (messages sent to a job after it
/// finished are received here).
static LATE: StdMutex<Vec<Receiver<u64>>> = StdMutex::new(Vec::new());

/// Drain the receivers of finished jobs (called once every job has finished).
fn drain_late() -> u64 {
    let mut late = LATE.lock().unwrap_or_else(|e| e.into_inner());
    let mut n = 0;
    for rx in late.iter() {
        while rx.try_recv().is_ok() {
            n += 1;
        }
    }
    late.clear();
    n
}

fn cancel_or_data(sh: &Shared, i: usize, cancel: bool) {
    let (r, w) = match nix_pipe() {
        Ok(p) => p,
        Err(e) => {
            sh.fail(format!("job {i}: pipe: {e}"));
            return;
        }
    };
    // The job keeps its own reference to the write end: if the helper's were the last one,
    // closing it after a cancel would let the read see end-of-file instead.
    let w = Arc::new(w);
    let token = CancelToken::new();
    sh.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(CancelRequest {
            token: token.clone(),
            write_end: w.clone(),
            cancel,
        });
    let mut buf = [0u8; 1];
    let res = token.run(|| umcg_runtime::io::read(&r, &mut buf));
    match (res, cancel) {
        (Err(e), true) if Cancelled::is(&e) => {
            sh.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        (Ok(1), false) => {}
        (res, cancel) => sh.fail(format!(
            "job {i}: pipe read under a token returned {res:?}, helper {}",
            if cancel { "cancelled" } else { "wrote a byte" }
        )),
    }
    drop(w);
    if token.waiters() != 0 {
        sh.fail(format!(
            "job {i}: token still has {} waiters",
            token.waiters()
        ));
    }
}

fn nix_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The helper thread: unparks jobs in a park event, and ends every pending pipe read, by
/// cancelling its token or writing a byte, after a short delay (so that most reads really
/// wait).
fn canceller(sh: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_micros(100));
        for (p, u) in sh.parked.iter().zip(&sh.unparkers) {
            if p.load(Ordering::SeqCst)
                && let Some(u) = u.get()
            {
                u.unpark();
            }
        }
        let batch = std::mem::take(&mut *sh.requests.lock().unwrap_or_else(|e| e.into_inner()));
        for r in batch {
            if r.cancel {
                r.token.cancel();
            } else {
                use std::os::fd::AsRawFd;
                // SAFETY: the write end is open (we hold an Arc of it) and the buffer is one
                // valid byte.
                let n = unsafe { libc::write(r.write_end.as_raw_fd(), b"x".as_ptr().cast(), 1) };
                if n != 1 {
                    sh.fail(format!(
                        "canceller: pipe write: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
        }
    }
}

fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<IntendedPanic>().is_none() {
                prev(info);
            }
        }));
    });
}

/// `umcg-sim soak` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Concurrent jobs (worker threads).
    #[arg(long, default_value_t = 1000)]
    pub workers: usize,
    /// Servers (at most 2 x CPUs - 1).
    #[arg(long, default_value_t = 2)]
    pub servers: usize,
    /// Total events over all jobs.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Seed of the event mix (a failing seed replays the same mix).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Idle-wakeup mode: list, eventfd, or both (one after the other).
    #[arg(long, default_value = "both", value_parser = ["list", "eventfd", "both"])]
    pub mode: String,
    /// Time slice in microseconds.
    #[arg(long, default_value_t = 1000)]
    pub slice_us: u64,
    /// Watchdog bound in milliseconds (runnable and not run, or no progress).
    #[arg(long, default_value_t = 10_000)]
    pub stall_ms: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Check `soak` arguments before anything runs.
pub fn validate(a: &SoakArgs) -> Result<(), SoakUsage> {
    if a.workers == 0 || a.servers == 0 || a.events == 0 {
        return Err(SoakUsage(
            "--workers, --servers and --events must be at least 1".into(),
        ));
    }
    if a.slice_us == 0 || a.stall_ms == 0 {
        return Err(SoakUsage(
            "--slice-us and --stall-ms must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Run `umcg-sim soak` (after [`validate`]); prints a report per mode. Err: the failure
/// report, with the replay command and, for a stall, the state dump.
pub fn cli(a: &SoakArgs) -> Result<(), SoakFailure> {
    let modes: &[IdleWakeup] = match a.mode.as_str() {
        "list" => &[IdleWakeup::List],
        "eventfd" => &[IdleWakeup::EventFd],
        _ => &[IdleWakeup::List, IdleWakeup::EventFd],
    };
    for &mode in modes {
        let cfg = SoakConfig {
            workers: a.workers,
            servers: a.servers,
            events: a.events,
            seed: a.seed,
            mode,
            slice: Duration::from_micros(a.slice_us),
            stall: Duration::from_millis(a.stall_ms),
        };
        let pb = if a.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(a.events)
        };
        pb.set_message(format!("soak ({})", mode_name(mode)));
        let r = run(&cfg, |d| pb.set_position(d));
        pb.finish_and_clear();
        let r = r?;
        println!(
            "soak {}: {} events on {} workers / {} servers, seed {}: PASS in {:.1} s ({:.0} events/s); 0 violations, every job finished",
            mode_name(mode),
            r.events,
            a.workers,
            a.servers,
            a.seed,
            r.elapsed.as_secs_f64(),
            r.events as f64 / r.elapsed.as_secs_f64().max(1e-9)
        );
        let kinds: Vec<String> = KINDS
            .iter()
            .zip(r.per_kind)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "  events: {}; messages {} (all received), recv timeouts {}, reads cancelled {}",
            kinds.join(", "),
            r.messages,
            r.timeouts,
            r.cancelled
        );
    }
    Ok(())
}
