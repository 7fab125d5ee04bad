//! Real-thread stress of the idle-server list: owner threads push their servers, popper
//! threads claim them, one collector collects, for a bounded number of pushes.
//!
//! A server cycles like a real one: pushed (idle) -> claimed by one popper (woken) -> its
//! owner reclaims the node and pushes it again. Invariants checked:
//! - no double claim: a popper that claims a server whose previous claim has not been
//!   consumed by its owner yet fails the test at once;
//! - nothing lost: after the run, draining the list accounts for every push, so
//!   claims == pushes for every server;
//! - no corruption and no push refused.
#![cfg(not(umcg_loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use umcg_abi::UmcgTask;
use umcg_abi::idle_servers::{Gc, IdleServerList, Node, Pop, Push, Reclaim};

const SERVERS: usize = 12;
const OWNERS: usize = 3;
const POPPERS: usize = 3;
const PUSHES_PER_SERVER: usize = 20_000;
const BOUND: usize = 4 * SERVERS;

struct World {
    list: IdleServerList,
    /// Boxed so that each task keeps its address (node addresses are field addresses).
    #[allow(clippy::vec_box)]
    servers: Vec<Box<UmcgTask>>,
    /// Set by the popper that claimed the server, cleared by its owner.
    claimed: Vec<AtomicBool>,
    pushes: Vec<AtomicUsize>,
    claims: Vec<AtomicUsize>,
    stop: AtomicBool,
    /// Set when any thread panics, so that the others stop instead of waiting forever.
    failed: Arc<AtomicBool>,
    bound_exceeded: AtomicU64,
}

/// Sets the flag if the thread holding it unwinds.
struct PanicFlag(Arc<AtomicBool>);

impl Drop for PanicFlag {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl World {
    fn index(&self, n: Node) -> usize {
        self.servers
            .iter()
            .position(|t| Node::of(t) == n)
            .expect("foreign node")
    }

    fn claim(&self, i: usize) {
        self.claims[i].fetch_add(1, Ordering::SeqCst);
        assert!(
            !self.claimed[i].swap(true, Ordering::AcqRel),
            "server {i} claimed twice in one idle period"
        );
    }

    fn push(&self, i: usize) {
        self.pushes[i].fetch_add(1, Ordering::SeqCst);
        // SAFETY: the servers are boxed in `World`, alive until every thread is joined.
        match unsafe { self.list.push(&self.servers[i]) } {
            Ok(Push::Pushed) | Ok(Push::ClaimedWhilePushing) => {}
            Err(e) => panic!("push of {i} refused: {e:?}"),
        }
    }
}

#[test]
fn pushers_poppers_and_a_collector() {
    let w = Arc::new(World {
        list: IdleServerList::new(),
        servers: (0..SERVERS)
            .map(|_| Box::new(UmcgTask::new_server()))
            .collect(),
        claimed: (0..SERVERS).map(|_| AtomicBool::new(false)).collect(),
        pushes: (0..SERVERS).map(|_| AtomicUsize::new(0)).collect(),
        claims: (0..SERVERS).map(|_| AtomicUsize::new(0)).collect(),
        stop: AtomicBool::new(false),
        failed: Arc::new(AtomicBool::new(false)),
        bound_exceeded: AtomicU64::new(0),
    });
    for t in &w.servers {
        w.list.prepare(t);
    }

    let owners: Vec<_> = (0..OWNERS)
        .map(|o| {
            let w = w.clone();
            thread::spawn(move || {
                let _flag = PanicFlag(w.failed.clone());
                let mine: Vec<usize> = (o..SERVERS).step_by(OWNERS).collect();
                for &i in &mine {
                    w.push(i);
                }
                let mut done = 0;
                while done < mine.len() {
                    assert!(!w.failed.load(Ordering::SeqCst), "another thread failed");
                    done = 0;
                    for &i in &mine {
                        if w.pushes[i].load(Ordering::SeqCst) >= PUSHES_PER_SERVER {
                            done += 1;
                            continue;
                        }
                        if w.claimed[i].load(Ordering::Acquire) {
                            // Woken: collect our node, then go idle again.
                            match w.list.reclaim(&w.servers[i]) {
                                Ok(Reclaim::Reset) | Ok(Reclaim::AlreadyReset) => {}
                                other => panic!("reclaim of {i}: {other:?}"),
                            }
                            w.claimed[i].store(false, Ordering::Release);
                            w.push(i);
                        }
                    }
                    thread::yield_now();
                }
            })
        })
        .collect();

    let poppers: Vec<_> = (0..POPPERS)
        .map(|_| {
            let w = w.clone();
            thread::spawn(move || {
                let _flag = PanicFlag(w.failed.clone());
                while !w.stop.load(Ordering::Acquire) {
                    match w.list.pop(BOUND) {
                        Pop::Got(n) => w.claim(w.index(n)),
                        Pop::Empty => thread::yield_now(),
                        Pop::BoundExceeded => {
                            w.bound_exceeded.fetch_add(1, Ordering::Relaxed);
                        }
                        Pop::Corrupt(c) => panic!("corruption: {c:?}"),
                    }
                }
            })
        })
        .collect();

    let collector = {
        let w = w.clone();
        thread::spawn(move || {
            let _flag = PanicFlag(w.failed.clone());
            while !w.stop.load(Ordering::Acquire) {
                match w.list.gc() {
                    Gc::Done(_) | Gc::Busy => {}
                    Gc::Corrupt(c, _) => panic!("gc: {c:?}"),
                }
                thread::yield_now();
            }
        })
    };

    // Join every thread (no short-circuit), then fail if any panicked.
    let mut ok = true;
    for o in owners {
        ok &= o.join().is_ok();
    }
    w.stop.store(true, Ordering::Release);
    for p in poppers {
        ok &= p.join().is_ok();
    }
    ok &= collector.join().is_ok();
    assert!(ok, "a thread panicked (see above)");

    // Drain: live nodes are claimed by pop_all; nodes popped at the very end are already
    // counted as claims.
    let mut extra = [0usize; SERVERS];
    w.list
        .pop_all(|t| extra[w.index(Node::of(t))] += 1)
        .expect("pop_all");
    let mut total = 0;
    for (i, extra) in extra.iter().enumerate() {
        let pushes = w.pushes[i].load(Ordering::SeqCst);
        let claims = w.claims[i].load(Ordering::SeqCst) + extra;
        assert_eq!(pushes, PUSHES_PER_SERVER, "server {i} did not finish");
        assert_eq!(
            claims, pushes,
            "server {i}: {pushes} pushes, {claims} claims"
        );
        total += pushes;
    }
    assert_eq!(total, SERVERS * PUSHES_PER_SERVER);
    eprintln!(
        "{total} pushes, each claimed once; {} pops exceeded the bound of {BOUND}",
        w.bound_exceeded.load(Ordering::Relaxed)
    );
}
