//! loom model checks of the idle-wakeup mechanisms' protocols (crate doc, "The protocol every
//! mechanism implements"), on the futex model of `umcg_runtime::sys` (`sys/model.rs`):
//!
//! - no lost wakeup: every event a waker raises is served without any rescue (were a wakeup
//!   lost, the servers and the main thread would all sleep and loom would report a
//!   deadlock);
//! - every event is served exactly once;
//! - `adopt`: a server is held by one party at a time (a claiming worker, or its own thread
//!   serving the queue).
//!
//! `slot`'s rotation (no server stranded in the stack behind an empty slot) is a capacity
//! property, not a lost event, so these runs cannot see it; the unit test
//! `slot_rotation_never_strands_a_server` covers it. The epoll mechanisms are not modelled
//! (loom cannot see inside `epoll_wait`).
//!
//! What it found: `list`'s server spun for good after a stale claim (see
//! `ListHandoff::announce`); `list_one_server_two_wakers` fails without that fix.
//!
//! Preemption bound: 2, as the other loom tests; 1 with two servers, whose stop phase (the
//! main thread re-waking until every server has left, as the harness does) makes the bound-2
//! space take many minutes.
//!
//! Run: `RUSTFLAGS="--cfg umcg_loom" cargo test -p umcg-sim --release --test loom_mechanisms`
//! (`ci/loom.sh` does).
#![cfg(umcg_loom)]

use loom::sync::Arc;
use umcg_abi::sync::{AtomicU32, Ordering};
use umcg_runtime::sys;
use umcg_sim::{IdleWakeup, Mechanism, Work, build, server_loop, unblock};

/// The run queue as the harness keeps it (a count is enough: events are alike), the stop
/// flag, and what was served.
struct Queue {
    queued: AtomicU32,
    stop: AtomicU32,
    served: AtomicU32,
    /// `adopt`: per server, 1 while some party runs an event on it.
    in_use: Vec<AtomicU32>,
    exited: AtomicU32,
}

impl Work for Queue {
    fn pending(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) != 0
    }
}

impl Queue {
    fn new(servers: usize) -> Self {
        Queue {
            queued: AtomicU32::new(0),
            stop: AtomicU32::new(0),
            served: AtomicU32::new(0),
            in_use: (0..servers).map(|_| AtomicU32::new(0)).collect(),
            exited: AtomicU32::new(0),
        }
    }

    fn pop(&self) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Run one event on server `s` (`adopt` checks that nobody else runs on it).
    fn run(&self, s: usize, adopt: bool) {
        if adopt {
            assert_eq!(
                self.in_use[s].swap(1, Ordering::AcqRel),
                0,
                "server {s} held by two parties"
            );
            self.in_use[s].store(0, Ordering::Release);
        }
        self.served.fetch_add(1, Ordering::AcqRel);
        sys::futex_wake(&self.served, 1);
    }
}

/// One server: the harness's loop ([`umcg_sim::server_loop`]) over this queue.
fn server(m: &dyn IdleWakeup, q: &Queue, s: usize) {
    let adopt = m.mechanism() == Mechanism::Adopt;
    let run_next = |_| {
        let popped = q.pop();
        if popped {
            q.run(s, adopt);
        }
        popped
    };
    server_loop(m, s, q, run_next, |_| {});
    q.exited.fetch_add(1, Ordering::AcqRel);
}

/// One event raised by a waker: the harness's path ([`umcg_sim::unblock`]); a claimed server
/// runs it at once.
fn raise(m: &dyn IdleWakeup, q: &Queue) {
    let push = || {
        q.queued.fetch_add(1, Ordering::AcqRel);
    };
    let _ = unblock(m, q, |tok| q.run(tok, true), push);
}

/// `servers` servers on CPU 0 (one CPU: `adopt` claims in index order), `wakers` threads
/// raising `events` events each; the main thread waits until all are served, then stops.
fn check(mech: Mechanism, servers: usize, wakers: usize, events: u32, bound: usize) {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(bound);
    // The stop loop and the list's retry loops yield to the model scheduler; their paths
    // are longer than loom's default branch budget.
    model.max_branches = 20_000;
    model.check(move || {
        let m: Arc<Box<dyn IdleWakeup>> =
            Arc::new(build(mech, servers, &[0]).expect("futex mechanisms need no fd"));
        let q = Arc::new(Queue::new(servers));
        let srv: Vec<_> = (0..servers)
            .map(|s| {
                let (m, q) = (m.clone(), q.clone());
                loom::thread::spawn(move || server(&**m, &q, s))
            })
            .collect();
        let wk: Vec<_> = (0..wakers)
            .map(|_| {
                let (m, q) = (m.clone(), q.clone());
                loom::thread::spawn(move || {
                    for _ in 0..events {
                        raise(&**m, &q);
                    }
                })
            })
            .collect();
        for w in wk {
            w.join().unwrap();
        }
        let total = wakers as u32 * events;
        loop {
            let n = q.served.load(Ordering::Acquire);
            if n >= total {
                break;
            }
            let _ = sys::futex_wait(&q.served, n, None);
        }
        assert_eq!(q.served.load(Ordering::Acquire), total, "{mech:?}");
        assert_eq!(q.queued.load(Ordering::Acquire), 0, "{mech:?}");
        q.stop.store(1, Ordering::Release);
        while q.exited.load(Ordering::Acquire) < servers as u32 {
            m.wake_all();
            loom::thread::yield_now();
        }
        for s in srv {
            s.join().unwrap();
        }
        assert_eq!(
            q.served.load(Ordering::Acquire),
            total,
            "{mech:?} served twice"
        );
    });
}

#[test]
fn list_two_servers_one_waker() {
    check(Mechanism::List, 2, 1, 1, 1);
}

#[test]
fn list_one_server_two_wakers() {
    check(Mechanism::List, 1, 2, 1, 2);
}

#[test]
fn slot_two_servers_one_waker() {
    check(Mechanism::Slot, 2, 1, 1, 1);
}

#[test]
fn slot_one_server_two_wakers() {
    check(Mechanism::Slot, 1, 2, 1, 2);
}

#[test]
fn adopt_two_servers_one_waker_two_events() {
    check(Mechanism::Adopt, 2, 1, 2, 2);
}

#[test]
fn adopt_one_server_two_wakers() {
    check(Mechanism::Adopt, 1, 2, 1, 2);
}

#[test]
fn adopt_one_server_two_wakers_two_events_each() {
    // Enough events for a claimer to hand the server to its thread and for another claimer
    // to find it released while the thread goes back to sleep.
    check(Mechanism::Adopt, 1, 2, 2, 2);
}
