//! criterion benches of the M:N runtime (issue 4), each against its baseline in one group.
//!
//! - `thread_ring/*`: 503 workers pass a token around a ring (one iteration = one lap =
//!   503 handoffs): umcg workers with park/unpark vs `std::thread` + `std::sync::mpsc` vs
//!   Tokio tasks + `tokio::sync::mpsc` (multi-thread runtime, 2 worker threads). Setup and
//!   teardown are outside the timed region.
//! - `spawn_join/*`: spawn a job and join it: umcg (pooled worker threads) from the main
//!   thread (outside the runtime: two cross-thread wakes per job) and from inside a worker
//!   (the job runs on the spawner's server; join parks the spawner), vs `std::thread`.
//! - `wakeup_vs_population/*`: a park/unpark ping-pong between two workers while N other
//!   workers are alive and parked, N = 10 and 10,000 (the per-wakeup cost must not grow with
//!   the number of workers).
//!
//! Run: `cargo bench --bench mn`. Results: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use umcg::runtime::{Runtime, Unparker};

const RING: usize = 503;

/// One ring of umcg workers: slot i holds the hop count for worker i (u64::MAX = empty).
fn umcg_ring(rt: &Runtime, laps: u64) -> Duration {
    let slots: Arc<Vec<AtomicU64>> =
        Arc::new((0..RING).map(|_| AtomicU64::new(u64::MAX)).collect());
    let unparkers: Arc<Mutex<Vec<Option<Unparker>>>> = Arc::new(Mutex::new(vec![None; RING]));
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<Instant>();
    let hs: Vec<_> = (0..RING)
        .map(|i| {
            let (slots, us, ready, done) = (
                slots.clone(),
                unparkers.clone(),
                ready_tx.clone(),
                done_tx.clone(),
            );
            rt.spawn(move || {
                us.lock().unwrap()[i] = Some(Unparker::current());
                ready.send(()).unwrap();
                let next = (i + 1) % RING;
                let mut next_u: Option<Unparker> = None;
                loop {
                    let v = slots[i].swap(u64::MAX, Ordering::AcqRel);
                    if v == u64::MAX {
                        umcg::runtime::park();
                        continue;
                    }
                    if v == 0 {
                        // Last hop: stop the ring (every worker gets a 0 once).
                        done.send(Instant::now()).ok();
                        slots[next].store(0, Ordering::Release);
                        let u =
                            next_u.get_or_insert_with(|| us.lock().unwrap()[next].clone().unwrap());
                        u.unpark();
                        return;
                    }
                    slots[next].store(v - 1, Ordering::Release);
                    let u = next_u.get_or_insert_with(|| us.lock().unwrap()[next].clone().unwrap());
                    u.unpark();
                }
            })
        })
        .collect();
    for _ in 0..RING {
        ready_rx.recv().unwrap();
    }
    let t0 = Instant::now();
    slots[0].store(laps * RING as u64, Ordering::Release);
    unparkers.lock().unwrap()[0].clone().unwrap().unpark();
    let t1 = done_rx.recv().unwrap();
    for h in hs {
        h.join().unwrap();
    }
    t1 - t0
}

fn std_ring(laps: u64) -> Duration {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..RING).map(|_| mpsc::channel::<u64>()).unzip();
    let (done_tx, done_rx) = mpsc::channel::<Instant>();
    let mut hs = Vec::new();
    for (i, rx) in rxs.into_iter().enumerate() {
        let next = txs[(i + 1) % RING].clone();
        let done = done_tx.clone();
        hs.push(
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    while let Ok(v) = rx.recv() {
                        if v == 0 {
                            done.send(Instant::now()).ok();
                            let _ = next.send(0);
                            return;
                        }
                        let _ = next.send(v - 1);
                    }
                })
                .unwrap(),
        );
    }
    let t0 = Instant::now();
    txs[0].send(laps * RING as u64).unwrap();
    let t1 = done_rx.recv().unwrap();
    drop(txs);
    for h in hs {
        h.join().unwrap();
    }
    t1 - t0
}

fn tokio_ring(rt: &tokio::runtime::Runtime, laps: u64) -> Duration {
    rt.block_on(async {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..RING)
            .map(|_| tokio::sync::mpsc::unbounded_channel::<u64>())
            .unzip();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let mut hs = Vec::new();
        for (i, mut rx) in rxs.into_iter().enumerate() {
            let next = txs[(i + 1) % RING].clone();
            let done = done_tx.clone();
            hs.push(tokio::spawn(async move {
                while let Some(v) = rx.recv().await {
                    if v == 0 {
                        let _ = done.send(Instant::now());
                        let _ = next.send(0);
                        return;
                    }
                    let _ = next.send(v - 1);
                }
            }));
        }
        let t0 = Instant::now();
        txs[0].send(laps * RING as u64).unwrap();
        let t1 = done_rx.recv().await.unwrap();
        drop(txs);
        for h in hs {
            h.await.unwrap();
        }
        t1 - t0
    })
}

fn bench_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("thread_ring");
    g.sample_size(10);
    let rt = Runtime::builder()
        .servers(2)
        .worker_stack_size(64 * 1024)
        .build()
        .unwrap();
    g.bench_function(BenchmarkId::new("umcg", RING), |b| {
        b.iter_custom(|laps| umcg_ring(&rt, laps))
    });
    g.bench_function(BenchmarkId::new("std_thread_mpsc", RING), |b| {
        b.iter_custom(std_ring)
    });
    let trt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    g.bench_function(BenchmarkId::new("tokio_tasks", RING), |b| {
        b.iter_custom(|laps| tokio_ring(&trt, laps))
    });
    g.finish();
    rt.shutdown().unwrap();
}

fn bench_spawn_join(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_join");
    let rt = Runtime::builder().servers(2).build().unwrap();
    rt.spawn(|| ()).join().unwrap(); // warm the pool
    g.bench_function(BenchmarkId::new("umcg_pooled", 1), |b| {
        b.iter(|| rt.spawn(|| black_box(1)).join().unwrap())
    });
    g.bench_function(BenchmarkId::new("umcg_pooled_from_worker", 1), |b| {
        b.iter_custom(|iters| {
            rt.spawn(move || {
                let t0 = Instant::now();
                for _ in 0..iters {
                    umcg::runtime::spawn(|| black_box(1)).join().unwrap();
                }
                t0.elapsed()
            })
            .join()
            .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("std_thread", 1), |b| {
        b.iter(|| {
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(|| black_box(1))
                .unwrap()
                .join()
                .unwrap()
        })
    });
    g.finish();
    rt.shutdown().unwrap();
}

/// Ping-pong between two workers through park/unpark while `population` others are parked.
///
/// Without time slices: nothing here spins, and with 10,000 workers allocating as they start
/// and finish (the pool's `Vec` grows under its mutex) a slice-end kick can land inside
/// malloc. A worker preempted while it holds glibc's arena lock stalls every worker that
/// then waits for that lock, invisibly to its server (the emulator limit in
/// `umcg-runtime/src/kernel/preempt.rs`). One `cargo test --benches` run hung that way at
/// teardown (session 4; both servers' workers waiting on the pool mutex and the arena lock).
fn bench_population(c: &mut Criterion) {
    let mut g = c.benchmark_group("wakeup_vs_population");
    g.sample_size(20);
    for population in [10usize, 10_000] {
        let rt = Runtime::builder()
            .servers(2)
            .time_slice(None)
            .worker_stack_size(64 * 1024)
            .max_pooled_workers(population + 16)
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let parked: Arc<Mutex<Vec<Unparker>>> = Arc::new(Mutex::new(Vec::new()));
        let idle: Vec<_> = (0..population)
            .map(|_| {
                let (s, p) = (stop.clone(), parked.clone());
                rt.spawn(move || {
                    p.lock().unwrap().push(Unparker::current());
                    while !s.load(Ordering::Acquire) {
                        umcg::runtime::park();
                    }
                })
            })
            .collect();
        while parked.lock().unwrap().len() < population {
            std::thread::sleep(Duration::from_millis(1));
        }
        g.bench_function(BenchmarkId::new("park_unpark_roundtrip", population), |b| {
            b.iter_custom(|iters| {
                let ball = Arc::new(AtomicU64::new(0));
                let go = Arc::new(AtomicBool::new(false));
                let us: Arc<Mutex<[Option<Unparker>; 2]>> = Arc::new(Mutex::new([None, None]));
                let (rtx, rrx) = mpsc::channel::<()>();
                let players: Vec<_> = (0..2u64)
                    .map(|me| {
                        let (ball, us, rtx, go) =
                            (ball.clone(), us.clone(), rtx.clone(), go.clone());
                        rt.spawn(move || {
                            us.lock().unwrap()[me as usize] = Some(Unparker::current());
                            rtx.send(()).unwrap();
                            while !go.load(Ordering::Acquire) {
                                umcg::runtime::park();
                            }
                            let total = 2 * iters;
                            let mut other: Option<Unparker> = None;
                            loop {
                                let v = ball.load(Ordering::Acquire);
                                if v >= total {
                                    return;
                                }
                                if v % 2 == me {
                                    ball.store(v + 1, Ordering::Release);
                                    let o = other.get_or_insert_with(|| {
                                        us.lock().unwrap()[1 - me as usize].clone().unwrap()
                                    });
                                    o.unpark();
                                } else {
                                    umcg::runtime::park();
                                }
                            }
                        })
                    })
                    .collect();
                rrx.recv().unwrap();
                rrx.recv().unwrap();
                let t0 = Instant::now();
                go.store(true, Ordering::Release);
                for u in us.lock().unwrap().iter() {
                    u.clone().unwrap().unpark();
                }
                for p in players {
                    p.join().unwrap();
                }
                t0.elapsed()
            })
        });
        stop.store(true, Ordering::Release);
        for u in parked.lock().unwrap().iter() {
            u.unpark();
        }
        for h in idle {
            h.join().unwrap();
        }
        rt.shutdown().unwrap();
    }
    g.finish();
}

criterion_group!(benches, bench_ring, bench_spawn_join, bench_population);
criterion_main!(benches);
