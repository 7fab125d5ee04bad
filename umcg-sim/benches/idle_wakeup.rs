//! criterion microbenches: wake one of K idle servers (K = 2, 8, 32) through each idle-wakeup
//! path of `umcg-sim`, with the raw futex and eventfd baselines in the same group.
//!
//! The waker runs on the first allowed CPU, the idle servers on the last (LIMITS.md's
//! "waking one of K idle threads" setup). Each sample is the mean latency from the waker's
//! timestamp to a server taking the work, from an `iter_custom` loop whose thread setup is
//! outside the timed values (the latencies are timestamps taken inside the loop).
//!
//! Run: `cargo bench -p umcg-sim --bench idle_wakeup`; CI: `cargo test -p umcg-sim --benches`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use umcg_sim::Mechanism;
use umcg_sim::baseline::{WakeKind, cpu_pair, mechanism_wake_one_of_k, wake_one_of_k};

fn mean(h: &hdrhistogram::Histogram<u64>, iters: u64) -> Duration {
    Duration::from_nanos((h.mean() * iters as f64) as u64)
}

fn idle_wakeup(c: &mut Criterion) {
    let (a, b) = cpu_pair();
    let mut g = c.benchmark_group("wake_one_of_k");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(200));
    g.measurement_time(Duration::from_secs(1));
    for k in [2usize, 8, 32] {
        for m in Mechanism::ALL {
            g.bench_with_input(BenchmarkId::new(m.name(), k), &k, |bch, &k| {
                bch.iter_custom(|iters| {
                    let n = iters.max(1) as usize;
                    match mechanism_wake_one_of_k(m, k, a, b, n) {
                        Ok(h) => mean(&h, iters),
                        Err(_) => Duration::ZERO,
                    }
                })
            });
        }
        for (name, kind) in [
            ("raw_futex", WakeKind::Futex),
            ("raw_eventfd_exclusive", WakeKind::Exclusive),
            ("raw_eventfd_herd", WakeKind::Herd),
        ] {
            g.bench_with_input(BenchmarkId::new(name, k), &k, |bch, &k| {
                bch.iter_custom(|iters| {
                    let n = iters.max(1) as usize;
                    match wake_one_of_k(kind, k, a, b, n) {
                        Ok((h, _, _)) => mean(&h, iters),
                        Err(_) => Duration::ZERO,
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, idle_wakeup);
criterion_main!(benches);
