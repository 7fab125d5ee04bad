//! The runtime with its invariant checker on (`umcg_runtime::check`), for situations the
//! checker sees and plain assertions do not. Every runtime in this binary is built after
//! `check::enable()`.
#![cfg(not(umcg_loom))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use umcg_runtime::{Runtime, check};

/// A panic inside `blocking` unwinds through the wake hook: the worker is queued and run
/// again before it runs any more code, so it never holds its server's CPU while BLOCKED
/// beside the worker the server runs meanwhile. The pooled worker is then reused by
/// ping-ponging jobs; the checker sees no violation.
#[test]
fn panic_inside_blocking_runs_the_wake_hook() {
    common::watchdog("check_mode test", Duration::from_secs(240));
    check::enable();
    std::panic::set_hook(Box::new(|_| {}));
    let rt = Runtime::builder()
        .servers(1)
        .max_pooled_workers(4)
        .build()
        .unwrap();
    for _ in 0..20 {
        let e = rt
            .spawn(|| {
                umcg_runtime::blocking(|| panic!("inside a blocking call"));
            })
            .join()
            .unwrap_err();
        assert!(e.is_panic());
        // Two workers ping-pong (parks and direct switches on the same server).
        let n = Arc::new(AtomicU64::new(0));
        let (tx_a, rx_a) = umcg_runtime::sync::channel::<u32>();
        let (tx_b, rx_b) = umcg_runtime::sync::channel::<u32>();
        let n2 = n.clone();
        let a = rt.spawn(move || {
            for i in 0..100 {
                tx_b.send(i).unwrap();
                rx_a.recv().unwrap();
                n2.fetch_add(1, Ordering::Relaxed);
            }
        });
        let b = rt.spawn(move || {
            for _ in 0..100 {
                let v = rx_b.recv().unwrap();
                tx_a.send(v).unwrap();
            }
        });
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(n.load(Ordering::Relaxed), 100);
    }
    rt.shutdown().unwrap();
    let _ = std::panic::take_hook();
    assert_eq!(check::violation_count(), 0, "{:#?}", check::violations());
}

/// A kick lands between the block hook's read of the state word and its CAS
/// RUNNING→BLOCKED (the ticker sets PREEMPTED on a worker that is just entering a blocking
/// call). The hook retries once, so the worker blocks as BLOCKED|PREEMPTED instead of the
/// emulator reporting a violation and aborting. Workers spin about one slice, then block:
/// thousands of kicks arrive right around the hook.
#[test]
fn kick_racing_the_block_hook_is_not_a_violation() {
    common::watchdog("check_mode test", Duration::from_secs(240));
    check::enable();
    let rt = Runtime::builder()
        .servers(1)
        .time_slice(Some(Duration::from_micros(50)))
        .build()
        .unwrap();
    let blocks = Arc::new(AtomicU64::new(0));
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    let hs: Vec<_> = (0..2)
        .map(|i| {
            let blocks = blocks.clone();
            rt.spawn(move || {
                let mut k = i as u64;
                while std::time::Instant::now() < until {
                    // Up to three slices of work (the futex timeout behind a slice has up
                    // to 50 us of timer slack), with a varying length so the kicks drift
                    // over the hook.
                    k = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let h = (k ^ (k >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    let len = Duration::from_nanos((h >> 32) % 150_000);
                    let spin = std::time::Instant::now();
                    while spin.elapsed() < len {
                        std::hint::spin_loop();
                    }
                    umcg_runtime::blocking(|| std::hint::black_box(k));
                    blocks.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    rt.shutdown().unwrap();
    assert!(blocks.load(Ordering::Relaxed) > 0);
    assert_eq!(check::violation_count(), 0, "{:#?}", check::violations());
}
