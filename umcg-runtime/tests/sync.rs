//! `umcg_runtime::sync`: Mutex, Condvar and the channel, used from workers (on one and two
//! servers) and from plain threads. Exact counts and multisets, never timings; a lost
//! wakeup hangs a test, and the watchdog turns the hang into a failure.
#![cfg(not(umcg_loom))]

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use umcg_runtime::Runtime;
use umcg_runtime::sync::{
    Condvar, Mutex, RecvError, RecvTimeoutError, SendError, TryRecvError, channel,
};

fn rt(servers: usize) -> Runtime {
    common::watchdog("sync test", Duration::from_secs(240));
    Runtime::builder()
        .servers(servers)
        .build()
        .expect("runtime")
}

/// A counter that is only correct under mutual exclusion: a plain `u64` updated in two
/// steps with a yield in between (so that on one server another worker runs while the
/// lock is held), and a flag that must never be seen set on entry.
struct Guarded {
    m: Mutex<u64>,
    inside: AtomicBool,
}

fn hammer(g: &Guarded, iters: u64, yield_every: u64) {
    for i in 0..iters {
        let mut v = g.m.lock();
        assert!(
            !g.inside.swap(true, Ordering::Relaxed),
            "two holders inside the critical section"
        );
        let old = *v;
        if yield_every != 0 && i % yield_every == 0 {
            umcg_runtime::yield_now();
        }
        *v = old + 1;
        g.inside.store(false, Ordering::Relaxed);
        drop(v);
    }
}

fn mutex_counter(servers: usize) {
    const WORKERS: u64 = 16;
    const THREADS: u64 = 2;
    const ITERS: u64 = 2_000;
    let rt = rt(servers);
    let g = Arc::new(Guarded {
        m: Mutex::new(0),
        inside: AtomicBool::new(false),
    });
    let ws: Vec<_> = (0..WORKERS)
        .map(|_| {
            let g = g.clone();
            rt.spawn(move || hammer(&g, ITERS, 7))
        })
        .collect();
    let ts: Vec<_> = (0..THREADS)
        .map(|_| {
            let g = g.clone();
            std::thread::spawn(move || hammer(&g, ITERS, 7))
        })
        .collect();
    for h in ws {
        h.join().unwrap();
    }
    for t in ts {
        t.join().unwrap();
    }
    assert_eq!(*g.m.lock(), (WORKERS + THREADS) * ITERS);
    assert!(!g.m.is_locked());
    rt.shutdown().unwrap();
}

#[test]
fn mutex_counter_one_server() {
    mutex_counter(1);
}

#[test]
fn mutex_counter_two_servers() {
    mutex_counter(2);
}

/// A short time slice: holders are preempted inside their critical sections (and inside
/// the slow paths, which must defer the kick).
#[test]
fn mutex_counter_with_preemption() {
    common::watchdog("sync test", Duration::from_secs(240));
    let rt = Runtime::builder()
        .servers(2)
        .time_slice(Some(Duration::from_micros(200)))
        .build()
        .unwrap();
    let g = Arc::new(Guarded {
        m: Mutex::new(0),
        inside: AtomicBool::new(false),
    });
    let ws: Vec<_> = (0..8)
        .map(|_| {
            let g = g.clone();
            rt.spawn(move || hammer(&g, 5_000, 0))
        })
        .collect();
    for h in ws {
        h.join().unwrap();
    }
    assert_eq!(*g.m.lock(), 8 * 5_000);
    rt.shutdown().unwrap();
}

/// Starvation, deterministic: on one cooperative server a hog re-takes the lock in a loop
/// and yields *while holding it*, so the victim only ever runs when the lock is taken.
/// Barging alone would starve the victim (each time it is woken the hog has the lock
/// again); the handoff after one lost race gives it the lock within two hog unlocks.
#[test]
fn mutex_waiter_is_not_starved_by_a_barging_hog() {
    common::watchdog("sync test", Duration::from_secs(240));
    let rt = Runtime::builder()
        .servers(1)
        .time_slice(None)
        .build()
        .unwrap();
    let m = Arc::new(Mutex::new(()));
    let unlocks = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (m2, u2, d2) = (m.clone(), unlocks.clone(), done.clone());
    let hog = rt.spawn(move || {
        while !d2.load(Ordering::Acquire) {
            let g = m2.lock();
            umcg_runtime::yield_now();
            u2.fetch_add(1, Ordering::Relaxed);
            drop(g);
        }
    });
    let victim = rt.spawn(move || {
        let mut worst = 0;
        for _ in 0..100 {
            let before = unlocks.load(Ordering::Relaxed);
            let g = m.lock();
            worst = worst.max(unlocks.load(Ordering::Relaxed) - before);
            drop(g);
            umcg_runtime::yield_now();
        }
        done.store(true, Ordering::Release);
        worst
    });
    let worst = victim.join().unwrap();
    assert!(worst <= 2, "the victim waited for {worst} hog unlocks");
    hog.join().unwrap();
    rt.shutdown().unwrap();
}

#[test]
fn mutex_api_try_lock_into_inner_and_no_poisoning() {
    let rt = rt(1);
    let m = Arc::new(Mutex::new(vec![1, 2]));
    let g = m.lock();
    assert!(m.try_lock().is_none());
    let m2 = m.clone();
    assert!(rt.spawn(move || m2.try_lock().is_none()).join().unwrap());
    drop(g);
    m.try_lock().unwrap().push(3);
    // A panic while holding the lock unlocks it; the data stays as left.
    let m3 = m.clone();
    let e = rt
        .spawn(move || {
            let mut g = m3.lock();
            g.push(4);
            panic!("holder panics");
        })
        .join()
        .unwrap_err();
    assert!(e.is_panic());
    assert!(!m.is_locked());
    assert_eq!(*m.lock(), [1, 2, 3, 4]);
    let mut m = Arc::try_unwrap(m).unwrap();
    m.get_mut().push(5);
    assert_eq!(m.into_inner(), [1, 2, 3, 4, 5]);
    assert_eq!(format!("{:?}", Mutex::new(7)), "Mutex { data: 7, .. }");
    rt.shutdown().unwrap();
}

/// A bounded queue from a Mutex and two Condvars; producers and consumers are workers and
/// plain threads. Every item is consumed exactly once.
#[test]
fn condvar_producer_consumer_exact_counts() {
    const CAP: usize = 4;
    const PRODUCERS: usize = 6; // 4 workers, 2 threads
    const ITEMS: usize = 3_000; // per producer
    struct Q {
        m: Mutex<(VecDeque<usize>, usize)>, // (items, producers finished)
        not_empty: Condvar,
        not_full: Condvar,
    }
    fn produce(q: &Q, p: usize) {
        for i in 0..ITEMS {
            let mut g = q.not_full.wait_while(q.m.lock(), |(v, _)| v.len() == CAP);
            g.0.push_back(p * ITEMS + i);
            drop(g);
            q.not_empty.notify_one();
        }
        q.m.lock().1 += 1;
        q.not_empty.notify_all();
    }
    fn consume(q: &Q) -> Vec<usize> {
        let mut got = Vec::new();
        loop {
            let mut g = q
                .not_empty
                .wait_while(q.m.lock(), |(v, done)| v.is_empty() && *done < PRODUCERS);
            match g.0.pop_front() {
                Some(x) => {
                    drop(g);
                    q.not_full.notify_one();
                    got.push(x);
                }
                None => return got,
            }
        }
    }
    for servers in [1, 2] {
        let rt = rt(servers);
        let q = Arc::new(Q {
            m: Mutex::new((VecDeque::new(), 0)),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        });
        let cw: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                rt.spawn(move || consume(&q))
            })
            .collect();
        let ct = {
            let q = q.clone();
            std::thread::spawn(move || consume(&q))
        };
        let pw: Vec<_> = (0..4)
            .map(|p| {
                let q = q.clone();
                rt.spawn(move || produce(&q, p))
            })
            .collect();
        let pt: Vec<_> = (4..PRODUCERS)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || produce(&q, p))
            })
            .collect();
        pw.into_iter().for_each(|h| h.join().unwrap());
        pt.into_iter().for_each(|h| h.join().unwrap());
        let mut all: Vec<usize> = cw.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.extend(ct.join().unwrap());
        assert_eq!(all.len(), PRODUCERS * ITEMS);
        all.sort_unstable();
        assert!(all.iter().copied().eq(0..PRODUCERS * ITEMS));
        rt.shutdown().unwrap();
    }
}

/// One `notify_all` wakes every waiter: N workers (and two threads) wait for a flag; the
/// flag is set and notified once. A waiter left asleep hangs the test.
#[test]
fn condvar_notify_all_wakes_every_waiter() {
    const WORKERS: usize = 40;
    const THREADS: usize = 2;
    let rt = rt(2);
    // (waiting count, go flag)
    let st = Arc::new((Mutex::new((0usize, false)), Condvar::new(), Condvar::new()));
    let wait = |st: &(Mutex<(usize, bool)>, Condvar, Condvar)| {
        let mut g = st.0.lock();
        g.0 += 1;
        st.2.notify_one(); // Tell the main thread one more is waiting.
        let g = st.1.wait_while(g, |(_, go)| !*go);
        assert!(g.1);
    };
    let ws: Vec<_> = (0..WORKERS)
        .map(|_| {
            let st = st.clone();
            rt.spawn(move || wait(&st))
        })
        .collect();
    let ts: Vec<_> = (0..THREADS)
        .map(|_| {
            let st = st.clone();
            std::thread::spawn(move || wait(&st))
        })
        .collect();
    let mut g =
        st.2.wait_while(st.0.lock(), |(n, _)| *n < WORKERS + THREADS);
    g.1 = true;
    drop(g);
    st.1.notify_all();
    ws.into_iter().for_each(|h| h.join().unwrap());
    ts.into_iter().for_each(|h| h.join().unwrap());
    rt.shutdown().unwrap();
}

/// Timed waits, on a plain thread and on a worker: a timeout with nobody notifying reports
/// `timed_out`, a notification before the (long) deadline is seen.
#[test]
fn condvar_wait_timeout_on_threads_and_workers() {
    fn check() {
        let m = Mutex::new(());
        let cv = Condvar::new();
        let (g, r) = cv.wait_timeout_while(m.lock(), Duration::from_millis(2), |_| true);
        assert!(r.timed_out());
        let (_g, _r) = cv.wait_timeout(g, Duration::from_micros(100));
        // Notified before the deadline: a worker or thread flips the flag.
        let st = Arc::new((Mutex::new(false), Condvar::new()));
        let s2 = st.clone();
        let setter = std::thread::spawn(move || {
            *s2.0.lock() = true;
            s2.1.notify_all();
        });
        let (g, r) =
            st.1.wait_timeout_while(st.0.lock(), Duration::from_secs(100), |b| !*b);
        assert!(*g && !r.timed_out());
        drop(g);
        setter.join().unwrap();
    }
    check();
    let rt = rt(1);
    // Another worker keeps running while one sleeps in a timed wait (the server is free).
    let spinner_done = Arc::new(AtomicBool::new(false));
    let sd = spinner_done.clone();
    let other = rt.spawn(move || {
        while !sd.load(Ordering::Acquire) {
            umcg_runtime::yield_now();
        }
    });
    rt.spawn(check).join().unwrap();
    spinner_done.store(true, Ordering::Release);
    other.join().unwrap();
    rt.shutdown().unwrap();
}

/// A `notify_one` that races with a timeout is not swallowed: a popped waiter reports
/// "notified", never "timed out". Impatient waiters (short timed waits, always queued ahead
/// of the patient one) do not want the tokens and forward every notification they get; the
/// patient waiter (untimed) consumes the tokens, one per round, and is asleep when most
/// tokens arrive. A notification reported as a timeout would never be forwarded, and the
/// round would wait for ever.
#[test]
fn condvar_notify_one_is_not_swallowed_by_timeouts() {
    const TOKENS: usize = 2_000;
    struct St {
        m: Mutex<(usize, usize, bool)>, // (tokens, taken, done)
        cv: Condvar,
        progress: Condvar,
    }
    fn impatient(st: &St) {
        let mut g = st.m.lock();
        while !g.2 {
            let (g2, r) = st.cv.wait_timeout(g, Duration::from_micros(20));
            g = g2;
            if !r.timed_out() {
                st.cv.notify_one(); // Not for me: pass it on.
            }
        }
    }
    fn patient(st: &St) {
        let mut g = st.m.lock();
        while g.1 < TOKENS {
            g = st.cv.wait_while(g, |(t, _, _)| *t == 0);
            g.0 -= 1;
            g.1 += 1;
            st.progress.notify_one();
        }
    }
    let rt = rt(2);
    let st = Arc::new(St {
        m: Mutex::new((0, 0, false)),
        cv: Condvar::new(),
        progress: Condvar::new(),
    });
    let imp_w: Vec<_> = (0..2)
        .map(|_| {
            let st = st.clone();
            rt.spawn(move || impatient(&st))
        })
        .collect();
    let imp_t = {
        let st = st.clone();
        std::thread::spawn(move || impatient(&st))
    };
    let pat = {
        let st = st.clone();
        rt.spawn(move || patient(&st))
    };
    for round in 1..=TOKENS {
        st.m.lock().0 += 1;
        st.cv.notify_one();
        drop(
            st.progress
                .wait_while(st.m.lock(), |(_, taken, _)| *taken < round),
        );
    }
    pat.join().unwrap();
    st.m.lock().2 = true;
    imp_w.into_iter().for_each(|h| h.join().unwrap());
    imp_t.join().unwrap();
    assert_eq!(*st.m.lock(), (0, TOKENS, true));
    rt.shutdown().unwrap();
}

/// Several senders (workers and plain threads) to one receiver (a worker, then a plain
/// thread): the exact multiset arrives, each sender's messages in order, then
/// `RecvError` once every sender is gone.
#[test]
fn channel_many_senders_exact_multiset() {
    const WORKER_SENDERS: u64 = 6;
    const THREAD_SENDERS: u64 = 2;
    const PER: u64 = 5_000;
    for (servers, rx_in_worker) in [(1, true), (2, true), (2, false)] {
        let rt = rt(servers);
        let (tx, rx) = channel::<(u64, u64)>();
        let receive = move || {
            let mut next = vec![0u64; (WORKER_SENDERS + THREAD_SENDERS) as usize];
            let mut n = 0u64;
            while let Ok((s, i)) = rx.recv() {
                assert_eq!(next[s as usize], i, "sender {s}: out of order");
                next[s as usize] += 1;
                n += 1;
            }
            assert_eq!(rx.recv(), Err(RecvError));
            assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
            (n, next)
        };
        let receiver: Box<dyn FnOnce() -> (u64, Vec<u64>)> = if rx_in_worker {
            let h = rt.spawn(receive);
            Box::new(move || h.join().unwrap())
        } else {
            let h = std::thread::spawn(receive);
            Box::new(move || h.join().unwrap())
        };
        let ws: Vec<_> = (0..WORKER_SENDERS)
            .map(|s| {
                let tx = tx.clone();
                rt.spawn(move || {
                    for i in 0..PER {
                        tx.send((s, i)).unwrap();
                        if i % 64 == 0 {
                            umcg_runtime::yield_now();
                        }
                    }
                })
            })
            .collect();
        let ts: Vec<_> = (WORKER_SENDERS..WORKER_SENDERS + THREAD_SENDERS)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        tx.send((s, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        ws.into_iter().for_each(|h| h.join().unwrap());
        ts.into_iter().for_each(|h| h.join().unwrap());
        let (n, next) = receiver();
        assert_eq!(n, (WORKER_SENDERS + THREAD_SENDERS) * PER);
        assert!(next.iter().all(|&k| k == PER));
        rt.shutdown().unwrap();
    }
}

/// Disconnection both ways, `try_recv`, `recv_timeout`, and no leak of undelivered
/// messages (each carries a drop counter).
#[test]
fn channel_disconnection_and_drops() {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = channel();
    assert_eq!(rx.try_recv().err(), Some(TryRecvError::Empty));
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(1)).err(),
        Some(RecvTimeoutError::Timeout)
    );
    for _ in 0..10 {
        tx.send(Counted(drops.clone())).unwrap();
    }
    drop(rx.recv().unwrap());
    assert_eq!(drops.load(Ordering::Relaxed), 1);
    drop(rx); // 9 undelivered: dropped with the receiver.
    assert_eq!(drops.load(Ordering::Relaxed), 10);
    let SendError(back) = tx.send(Counted(drops.clone())).unwrap_err();
    drop(back);
    assert_eq!(drops.load(Ordering::Relaxed), 11);

    // Across block boundaries (31 messages a block): messages left when both halves go
    // are dropped too, once.
    let (tx, rx) = channel();
    for _ in 0..100 {
        tx.send(Counted(drops.clone())).unwrap();
    }
    drop(tx);
    for _ in 0..40 {
        assert!(rx.try_recv().is_ok());
    }
    assert_eq!(drops.load(Ordering::Relaxed), 11 + 40);
    drop(rx);
    assert_eq!(drops.load(Ordering::Relaxed), 11 + 100);

    // A receiver parked in a worker (and one in a thread) wakes with RecvError when the
    // last sender drops.
    let rt = rt(1);
    for in_worker in [true, false] {
        let (tx, rx) = channel::<u8>();
        let (ptx, prx) = channel::<()>();
        let wait = move || {
            ptx.send(()).unwrap();
            rx.recv()
        };
        let h: Box<dyn FnOnce() -> Result<u8, RecvError>> = if in_worker {
            let h = rt.spawn(wait);
            Box::new(move || h.join().unwrap())
        } else {
            let h = std::thread::spawn(wait);
            Box::new(move || h.join().unwrap())
        };
        prx.recv().unwrap();
        let tx2 = tx.clone();
        drop(tx);
        drop(tx2);
        assert_eq!(h(), Err(RecvError));
        let (tx, rx) = channel::<u8>();
        let r = rt.spawn(move || rx.recv_timeout(Duration::from_millis(1)));
        assert_eq!(r.join().unwrap(), Err(RecvTimeoutError::Timeout));
        drop(tx);
    }
    rt.shutdown().unwrap();
}

/// Senders (workers and threads) race with the receiver's drop: every message created is
/// dropped exactly once, whether received, returned in `SendError`, dropped with the
/// receiver, or left in the channel for its own drop.
#[test]
fn channel_receiver_drop_races_with_senders() {
    static CREATED: AtomicUsize = AtomicUsize::new(0);
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    struct Counted;
    impl Counted {
        fn new() -> Self {
            CREATED.fetch_add(1, Ordering::Relaxed);
            Counted
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
    let rt = rt(2);
    for round in 0..20 {
        let (tx, rx) = channel::<Counted>();
        let send_until_gone = move || {
            let mut sent = 0usize;
            while tx.send(Counted::new()).is_ok() {
                sent += 1;
            }
            sent
        };
        let ws: Vec<_> = (0..3).map(|_| rt.spawn(send_until_gone.clone())).collect();
        let t = std::thread::spawn(send_until_gone);
        let take = 100 + round * 37;
        let r = rt.spawn(move || {
            for _ in 0..take {
                drop(rx.recv().unwrap());
            }
        });
        r.join().unwrap();
        let sent: usize =
            ws.into_iter().map(|h| h.join().unwrap()).sum::<usize>() + t.join().unwrap();
        assert!(sent >= take);
    }
    assert_eq!(
        DROPPED.load(Ordering::Relaxed),
        CREATED.load(Ordering::Relaxed)
    );
    rt.shutdown().unwrap();
}

/// The lost-wakeup stress: 10,000 round trips between two workers on ONE server over two
/// channels (each side parks on every round), then over a Mutex+Condvar. A park that
/// misses its unpark hangs at once.
#[test]
fn ping_pong_10k_rounds_on_one_server() {
    const ROUNDS: u64 = 10_000;
    for servers in [1, 2] {
        let rt = rt(servers);
        let (atx, arx) = channel::<u64>();
        let (btx, brx) = channel::<u64>();
        let a = rt.spawn(move || {
            for i in 0..ROUNDS {
                atx.send(i).unwrap();
                assert_eq!(brx.recv().unwrap(), i + 1);
            }
        });
        let b = rt.spawn(move || {
            while let Ok(i) = arx.recv() {
                btx.send(i + 1).unwrap();
            }
        });
        a.join().unwrap();
        b.join().unwrap();

        // Mutex + Condvar: `turn` alternates between the two players.
        let st = Arc::new((Mutex::new(0u64), Condvar::new()));
        let players: Vec<_> = (0..2u64)
            .map(|me| {
                let st = st.clone();
                rt.spawn(move || {
                    for _ in 0..ROUNDS {
                        let mut g = st.1.wait_while(st.0.lock(), |t| *t % 2 != me);
                        *g += 1;
                        drop(g);
                        st.1.notify_one();
                    }
                })
            })
            .collect();
        players.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(*st.0.lock(), 2 * ROUNDS);
        rt.shutdown().unwrap();
    }
}

/// Ping-pong between a worker and a plain thread (the two parking worlds wake each other).
#[test]
fn ping_pong_worker_and_thread() {
    const ROUNDS: u64 = 5_000;
    let rt = rt(1);
    let (atx, arx) = channel::<u64>();
    let (btx, brx) = channel::<u64>();
    let w = rt.spawn(move || {
        while let Ok(i) = arx.recv() {
            btx.send(i + 1).unwrap();
        }
    });
    for i in 0..ROUNDS {
        atx.send(i).unwrap();
        assert_eq!(brx.recv().unwrap(), i + 1);
    }
    drop(atx);
    w.join().unwrap();
    rt.shutdown().unwrap();
}
