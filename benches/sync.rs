//! criterion benches of `umcg::runtime::sync` against `std::sync`, each pair in one group.
//!
//! - `mutex_contended/*`: 8 workers of a 2-server runtime each increment one shared
//!   counter `K` = 1,000 times per iteration (one iteration = 8,000 lock/unlock pairs);
//!   `umcg_mutex` vs `std_mutex` (whose waiters sleep in the kernel, invisible to their
//!   server). The workers are spawned once per sample and run `iters` iterations each, so
//!   spawn and join are amortised (`iter_custom`).
//! - `mutex_uncontended/*`: one lock/unlock pair on a plain thread.
//! - `channel_uncontended/*`: one send and one receive on the same plain thread,
//!   `umcg_channel` vs `std_mpsc`.
//! - `channel_spsc/*`: one worker sends 1,000 messages per iteration to another worker on
//!   a 2-server runtime.
//!
//! Run: `cargo bench --bench sync`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use umcg::runtime::Runtime;
use umcg::runtime::sync as usync;

const WORKERS: u64 = 8;
const K: u64 = 1_000;
const MSGS: u64 = 1_000;

fn runtime() -> Runtime {
    Runtime::builder()
        .servers(2)
        .worker_stack_size(64 * 1024)
        .build()
        .unwrap()
}

/// Run `WORKERS` workers doing `iters * K` critical sections each; the time from the first
/// spawn to the last join.
fn contended<M, F>(rt: &Runtime, iters: u64, m: Arc<M>, incr: F) -> Duration
where
    M: Send + Sync + 'static,
    F: Fn(&M) + Send + Sync + Copy + 'static,
{
    let t0 = Instant::now();
    let hs: Vec<_> = (0..WORKERS)
        .map(|_| {
            let m = m.clone();
            rt.spawn(move || {
                for _ in 0..iters * K {
                    incr(&m);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    t0.elapsed()
}

fn bench_mutex_contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("mutex_contended");
    g.sample_size(20);
    let rt = runtime();
    rt.spawn(|| ()).join().unwrap(); // Warm the pool.
    g.bench_function(BenchmarkId::new("umcg_mutex", WORKERS * K), |b| {
        b.iter_custom(|iters| {
            let m = Arc::new(usync::Mutex::new(0u64));
            let d = contended(&rt, iters, m.clone(), |m: &usync::Mutex<u64>| {
                *m.lock() += 1
            });
            assert_eq!(*m.lock(), iters * K * WORKERS);
            d
        })
    });
    g.bench_function(BenchmarkId::new("std_mutex", WORKERS * K), |b| {
        b.iter_custom(|iters| {
            let m = Arc::new(std::sync::Mutex::new(0u64));
            let d = contended(&rt, iters, m.clone(), |m: &std::sync::Mutex<u64>| {
                *m.lock().unwrap() += 1
            });
            assert_eq!(*m.lock().unwrap(), iters * K * WORKERS);
            d
        })
    });
    g.finish();
    rt.shutdown().unwrap();
}

fn bench_mutex_uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("mutex_uncontended");
    let um = usync::Mutex::new(0u64);
    g.bench_function(BenchmarkId::new("umcg_mutex", 1), |b| {
        b.iter(|| *black_box(&um).lock() += 1)
    });
    let sm = std::sync::Mutex::new(0u64);
    g.bench_function(BenchmarkId::new("std_mutex", 1), |b| {
        b.iter(|| *black_box(&sm).lock().unwrap() += 1)
    });
    g.finish();
}

fn bench_channel_uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_uncontended");
    let (tx, rx) = usync::channel::<u64>();
    g.bench_function(BenchmarkId::new("umcg_channel", 1), |b| {
        b.iter(|| {
            tx.send(black_box(1)).unwrap();
            rx.recv().unwrap()
        })
    });
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    g.bench_function(BenchmarkId::new("std_mpsc", 1), |b| {
        b.iter(|| {
            tx.send(black_box(1)).unwrap();
            rx.recv().unwrap()
        })
    });
    g.finish();
}

fn bench_channel_spsc(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_spsc");
    g.sample_size(20);
    let rt = runtime();
    g.bench_function(BenchmarkId::new("umcg_channel", MSGS), |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = usync::channel::<u64>();
            let t0 = Instant::now();
            let r = rt.spawn(move || rx.iter().sum::<u64>());
            let s = rt.spawn(move || (0..iters * MSGS).for_each(|i| tx.send(i).unwrap()));
            s.join().unwrap();
            black_box(r.join().unwrap());
            t0.elapsed()
        })
    });
    g.bench_function(BenchmarkId::new("std_mpsc", MSGS), |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            let t0 = Instant::now();
            let r = rt.spawn(move || rx.iter().sum::<u64>());
            let s = rt.spawn(move || (0..iters * MSGS).for_each(|i| tx.send(i).unwrap()));
            s.join().unwrap();
            black_box(r.join().unwrap());
            t0.elapsed()
        })
    });
    g.finish();
    rt.shutdown().unwrap();
}

criterion_group!(
    benches,
    bench_mutex_contended,
    bench_mutex_uncontended,
    bench_channel_uncontended,
    bench_channel_spsc
);
criterion_main!(benches);
