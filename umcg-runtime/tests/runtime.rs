//! The M:N runtime: spawn/join, panics, worker reuse, blocking, yield, park/unpark,
//! preemption (the illumos lesson), policies, shutdown and drop.
#![cfg(not(umcg_loom))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use umcg_runtime::policy::GlobalFifo;
use umcg_runtime::{Runtime, Unparker};

fn rt(servers: usize) -> Runtime {
    common::watchdog("runtime test", Duration::from_secs(240));
    Runtime::builder()
        .servers(servers)
        .build()
        .expect("runtime")
}

#[test]
fn spawn_join_values_and_panics() {
    let rt = rt(2);
    let hs: Vec<_> = (0..100u64).map(|i| rt.spawn(move || i * i)).collect();
    let sum: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sum, (0..100u64).map(|i| i * i).sum());
    let h = rt.spawn(|| -> u32 { panic!("boom") });
    let e = h.join().unwrap_err();
    assert!(e.is_panic());
    assert!(e.to_string().contains("boom"));
    // A panicking worker does not take a server down.
    assert_eq!(rt.spawn(|| 7).join().unwrap(), 7);
    rt.shutdown().unwrap();
}

#[test]
fn workers_are_reused() {
    let rt = rt(2);
    for _ in 0..200 {
        rt.spawn(|| ()).join().unwrap();
    }
    // Sequential spawn+join reuses one pooled worker thread.
    assert!(
        rt.live_workers() <= 2,
        "{} workers alive",
        rt.live_workers()
    );
    rt.shutdown().unwrap();
}

#[test]
fn blocking_workers_all_finish() {
    let rt = rt(2);
    let done = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..64)
        .map(|_| {
            let done = done.clone();
            rt.spawn(move || {
                for _ in 0..5 {
                    umcg_runtime::sleep(Duration::from_micros(200));
                    umcg_runtime::yield_now();
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 64);
    rt.shutdown().unwrap();
}

/// The illumos lesson: on a single server, one worker spins forever without blocking or
/// yielding, and 50 workers sleep and count. With the default time slice the counters all
/// advance.
#[test]
fn spinner_does_not_starve_sleepers() {
    let rt = Runtime::builder()
        .servers(1)
        .time_slice(Some(Duration::from_millis(2)))
        .build()
        .unwrap();
    common::watchdog("runtime test", Duration::from_secs(240));
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let spinner = rt.spawn(move || {
        let mut x = 1u64;
        while !s.load(Ordering::Relaxed) {
            x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7);
            std::hint::black_box(x);
        }
    });
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..50).map(|_| AtomicU64::new(0)).collect());
    let sleepers: Vec<_> = (0..50)
        .map(|i| {
            let (c, s) = (counters.clone(), stop.clone());
            rt.spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    umcg_runtime::sleep(Duration::from_micros(500));
                    c[i].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Every counter must reach 3 (bounded wait: a starved sleeper fails the test).
    let t0 = Instant::now();
    while counters.iter().any(|c| c.load(Ordering::Relaxed) < 3) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "sleepers starved: {:?}",
            counters
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    spinner.join().unwrap();
    for h in sleepers {
        h.join().unwrap();
    }
    rt.shutdown().unwrap();
}

#[test]
fn park_and_unpark_between_workers_and_threads() {
    let rt = rt(2);
    let flag = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Unparker>();
    let f = flag.clone();
    let h = rt.spawn(move || {
        tx.send(Unparker::current()).unwrap();
        while !f.load(Ordering::Acquire) {
            umcg_runtime::park();
        }
        1
    });
    let u = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(2));
    flag.store(true, Ordering::Release);
    u.unpark();
    assert_eq!(h.join().unwrap(), 1);
    rt.shutdown().unwrap();
}

#[test]
fn join_from_a_worker_and_nested_spawn() {
    let rt = rt(2);
    let h = rt.spawn(|| {
        let inner: Vec<_> = (0..10)
            .map(|i| umcg_runtime::spawn(move || i + 1))
            .collect();
        inner.into_iter().map(|h| h.join().unwrap()).sum::<i32>()
    });
    assert_eq!(h.join().unwrap(), 55);
    rt.shutdown().unwrap();
}

/// Many park/unpark pairs and yields at once: a worker queued twice would be run twice, which
/// the server detects (it asserts that a runnable worker is IDLE) and the count would be off.
#[test]
fn unpark_storm_never_double_runs() {
    let rt = rt(2);
    let n = 16;
    let unparkers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let hs: Vec<_> = (0..n)
        .map(|i| {
            let (u, p) = (unparkers.clone(), progress.clone());
            rt.spawn(move || {
                u.lock().unwrap().push(Unparker::current());
                for _ in 0..300 {
                    umcg_runtime::park();
                    p[i].fetch_add(1, Ordering::Relaxed);
                    if i % 2 == 0 {
                        umcg_runtime::yield_now();
                    }
                }
            })
        })
        .collect();
    let us: Vec<Unparker> = loop {
        let v = unparkers.lock().unwrap().clone();
        if v.len() == n {
            break v;
        }
        std::thread::yield_now();
    };
    let t0 = Instant::now();
    while !hs.iter().all(|h| h.is_finished()) {
        for u in &us {
            u.unpark();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "workers stuck");
        std::thread::yield_now();
    }
    for h in hs {
        h.join().unwrap();
    }
    rt.shutdown().unwrap();
}

#[test]
fn global_fifo_policy_and_drop_without_shutdown() {
    let rt = Runtime::builder()
        .servers(1)
        .policy(GlobalFifo::new())
        .build()
        .unwrap();
    common::watchdog("runtime test", Duration::from_secs(240));
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hs: Vec<_> = (0..8)
        .map(|i| {
            let o = order.clone();
            rt.spawn(move || o.lock().unwrap().push(i))
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(order.lock().unwrap().len(), 8);
    // A job still running when the runtime is dropped: drop returns at once.
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = rt.spawn(move || {
        while !s.load(Ordering::Relaxed) {
            umcg_runtime::sleep(Duration::from_millis(1));
        }
    });
    let t0 = Instant::now();
    drop(rt);
    assert!(t0.elapsed() < Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
}

#[test]
fn builder_errors() {
    let max = umcg_runtime::kernel::list_bound() - 1;
    let e = Runtime::builder().servers(max + 1).build().unwrap_err();
    assert!(e.to_string().contains("servers requested"), "{e}");
    assert!(matches!(
        Runtime::builder().servers(0).build(),
        Err(umcg_runtime::Error::NoServers)
    ));
}

/// fork in a worker: the child is not registered, the runtime refuses to work there with a
/// clear error (its servers do not exist in the child), and the parent is unaffected.
#[test]
fn fork_in_a_worker() {
    let rt = rt(2);
    let h = rt.spawn(|| {
        // SAFETY: the child only makes async-signal-safe-enough calls (atomics, the
        // emulator's registry which the atfork handler reset, malloc which glibc makes
        // fork-safe) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut code = 0;
            if umcg_runtime::kernel::current_tid() != 0 {
                code |= 1; // the child must not be registered
            }
            if umcg_runtime::kernel::umcg_wait(0, 0)
                != Err(umcg_runtime::kernel::UmcgError::Errno(
                    umcg_runtime::sys::Errno::EINVAL,
                ))
            {
                code |= 2;
            }
            match umcg_runtime::spawn(|| 1).join() {
                Err(e) if e.to_string().contains("forked child") => {}
                _ => code |= 4,
            }
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        libc::WEXITSTATUS(status)
    });
    assert_eq!(h.join().unwrap(), 0, "child checks failed (bit mask)");
    // The parent runtime still works.
    assert_eq!(rt.spawn(|| 5).join().unwrap(), 5);
    rt.shutdown().unwrap();
}

/// Wait (bounded) until `done()`; `what` names the starved party in the failure.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A spinner that gets the CPU through a direct worker-to-worker switch (its waker parks and
/// hands the server over without waking it) is still preempted: the server kicks whoever
/// holds its CPU now, not the worker it started.
#[test]
fn spinner_switched_in_directly_is_preempted() {
    let rt = Runtime::builder()
        .servers(1)
        .time_slice(Some(Duration::from_millis(2)))
        .build()
        .unwrap();
    common::watchdog("runtime test", Duration::from_secs(240));
    let stop = Arc::new(AtomicBool::new(false));
    let (to_spinner, spinner_rx) = umcg_runtime::sync::channel::<()>();
    let (to_waker, waker_rx) = umcg_runtime::sync::channel::<()>();
    let s = stop.clone();
    let spinner = rt.spawn(move || {
        spinner_rx.recv().unwrap();
        let mut x = 1u64;
        while !s.load(Ordering::Relaxed) {
            x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(7);
            std::hint::black_box(x);
        }
    });
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..20).map(|_| AtomicU64::new(0)).collect());
    let sleepers: Vec<_> = (0..20)
        .map(|i| {
            let (c, s) = (counters.clone(), stop.clone());
            rt.spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    umcg_runtime::sleep(Duration::from_micros(500));
                    c[i].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Waker: wake the spinner (into this server's handoff slot), then park on a channel:
    // the park switches straight to the spinner.
    let waker = rt.spawn(move || {
        to_spinner.send(()).unwrap();
        waker_rx.recv().unwrap();
    });
    let base: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    wait_until(
        "sleepers starved behind a directly switched-in spinner",
        || {
            counters
                .iter()
                .zip(&base)
                .all(|(c, b)| c.load(Ordering::Relaxed) >= b + 3)
        },
    );
    stop.store(true, Ordering::Relaxed);
    to_waker.send(()).unwrap();
    spinner.join().unwrap();
    waker.join().unwrap();
    for h in sleepers {
        h.join().unwrap();
    }
    rt.shutdown().unwrap();
}

/// Two workers that ping-pong through the handoff slot forever cannot starve a third on the
/// same server, even without preemption: after a short streak the policy goes first.
#[test]
fn handoff_slot_pair_cannot_starve_others() {
    let rt = Runtime::builder()
        .servers(1)
        .time_slice(None)
        .build()
        .unwrap();
    common::watchdog("runtime test", Duration::from_secs(240));
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let (to_q, q_rx) = umcg_runtime::sync::channel::<bool>();
    let (to_p, p_rx) = umcg_runtime::sync::channel::<bool>();
    let (s, r) = (stop.clone(), rounds.clone());
    let p = rt.spawn(move || {
        loop {
            let last = s.load(Ordering::Relaxed);
            to_q.send(last).unwrap();
            if last {
                return;
            }
            p_rx.recv().unwrap();
            r.fetch_add(1, Ordering::Relaxed);
        }
    });
    let q = rt.spawn(move || {
        while !q_rx.recv().unwrap() {
            to_p.send(false).unwrap();
        }
    });
    wait_until("the pair never started", || {
        rounds.load(Ordering::Relaxed) > 100
    });
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    let third = rt.spawn(move || r2.store(true, Ordering::Release));
    wait_until("a ping-ponging pair starved a third worker", || {
        ran.load(Ordering::Acquire)
    });
    stop.store(true, Ordering::Relaxed);
    third.join().unwrap();
    p.join().unwrap();
    q.join().unwrap();
    rt.shutdown().unwrap();
}

/// Yielding workers on one server without preemption take turns: a yield switches to the
/// next runnable worker (directly) and requeues the caller behind it.
#[test]
fn yielders_take_turns() {
    let rt = Runtime::builder()
        .servers(1)
        .time_slice(None)
        .build()
        .unwrap();
    common::watchdog("runtime test", Duration::from_secs(240));
    let n = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let hs: Vec<_> = (0..n)
        .map(|i| {
            let (c, s) = (counters.clone(), stop.clone());
            rt.spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    c[i].fetch_add(1, Ordering::Relaxed);
                    umcg_runtime::yield_now();
                }
            })
        })
        .collect();
    wait_until("a yielder never got the server", || {
        counters.iter().all(|c| c.load(Ordering::Relaxed) >= 1000)
    });
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    rt.shutdown().unwrap();
}
