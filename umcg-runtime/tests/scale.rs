//! Scale: 10,000 workers alive at once (64 KiB stacks) on 2 servers complete a round of
//! blocking work; a burst of 1,000 simultaneous unblocks is drained and every worker runs.
//! Timings are printed for the record, never asserted.
#![cfg(not(umcg_loom))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use umcg_runtime::Runtime;
use umcg_runtime::sys::{futex_wait, futex_wake};

/// All workers block on one futex gate (inside `blocking`), so all are alive at once; the
/// gate opens; every worker must unblock, be drained from the kernel's list and finish.
fn gated_round(rt: &Runtime, n: usize) -> Duration {
    let gate = Arc::new(AtomicU32::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let (g, a) = (gate.clone(), arrived.clone());
            rt.spawn(move || {
                a.fetch_add(1, Ordering::AcqRel);
                umcg_runtime::blocking(|| {
                    while g.load(Ordering::Acquire) == 0 {
                        futex_wait(&g, 0, None);
                    }
                });
            })
        })
        .collect();
    let t0 = Instant::now();
    while arrived.load(Ordering::Acquire) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "only {} of {n} workers started",
            arrived.load(Ordering::Acquire)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let t_open = Instant::now();
    gate.store(1, Ordering::Release);
    futex_wake(&gate, i32::MAX);
    for h in hs {
        h.join().expect("worker");
    }
    t_open.elapsed()
}

#[test]
fn ten_thousand_workers_on_two_servers() {
    common::watchdog("scale test", Duration::from_secs(300));
    let rt = Runtime::builder()
        .servers(2)
        .worker_stack_size(64 * 1024)
        .max_pooled_workers(10_000)
        .build()
        .unwrap();
    let t = gated_round(&rt, 10_000);
    assert!(
        rt.live_workers() >= 10_000,
        "10,000 worker threads were alive"
    );
    eprintln!("10,000 gated workers: all unblocked and finished in {t:?}");
    // A second round reuses the pooled threads.
    let t = gated_round(&rt, 10_000);
    eprintln!("second round (pooled threads): {t:?}");
    assert!(rt.live_workers() <= 10_000 + 2);
    rt.shutdown().unwrap();
}

#[test]
fn burst_of_a_thousand_unblocks() {
    common::watchdog("scale test", Duration::from_secs(300));
    let rt = Runtime::builder()
        .servers(2)
        .worker_stack_size(64 * 1024)
        .build()
        .unwrap();
    for _ in 0..3 {
        let t = gated_round(&rt, 1_000);
        eprintln!("burst of 1,000 unblocks drained and finished in {t:?}");
    }
    rt.shutdown().unwrap();
}
