//! loom model of the v0.3 idle-server list (`umcg_abi::idle_servers`).
//!
//! Run: `RUSTFLAGS="--cfg umcg_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2
//! CARGO_TARGET_DIR=target/loom cargo test -p umcg-abi --release --test loom_idle_servers`
//!
//! Every model checks the list's accounting invariant: after all threads are joined and the
//! list is drained, each server was claimed (returned by a pop, or claimed by `pop_all`)
//! exactly as many times as it was pushed. A double claim is a server woken twice
//! for one idle period; a missing one is a lost server.
#![cfg(umcg_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use umcg_abi::UmcgTask;
use umcg_abi::idle_servers::{Gc, IdleServerList, Node, Pop, Push, Reclaim};

const BOUND: usize = 16;

/// Servers with per-server push and claim counters.
struct World {
    list: IdleServerList,
    /// Boxed: each task must keep its address (nodes are field addresses).
    #[allow(clippy::vec_box)]
    servers: Vec<Box<UmcgTask>>,
    pushes: Vec<AtomicUsize>,
    claims: Vec<AtomicUsize>,
}

impl World {
    fn new(n: usize) -> Arc<World> {
        let w = World {
            list: IdleServerList::new(),
            servers: (0..n).map(|_| Box::new(UmcgTask::new_server())).collect(),
            pushes: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            claims: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        };
        // Prepare only once the list has its final address (it must not move afterwards).
        let w = Arc::new(w);
        for s in &w.servers {
            w.list.prepare(s);
        }
        w
    }

    fn index(&self, node: Node) -> usize {
        self.servers
            .iter()
            .position(|s| Node::of(s) == node)
            .expect("a pop returned a node that is not one of our servers")
    }

    fn push(&self, i: usize) {
        // SAFETY: the servers are boxed in `World`, which outlives every thread of the model.
        let r = unsafe { self.list.push(&self.servers[i]) };
        self.pushes[i].fetch_add(1, Ordering::SeqCst);
        match r {
            Ok(Push::Pushed) => {}
            // The stale popper that marked the node got `Pop::Got` and counted the claim.
            Ok(Push::ClaimedWhilePushing) => {}
            Err(e) => panic!("push of server {i} refused: {e:?}"),
        }
    }

    /// Pop once; record the claim. Returns the index popped.
    fn pop(&self) -> Option<usize> {
        match self.list.pop(BOUND) {
            Pop::Got(n) => {
                let i = self.index(n);
                self.claims[i].fetch_add(1, Ordering::SeqCst);
                Some(i)
            }
            Pop::Empty => None,
            other => panic!("pop: {other:?}"),
        }
    }

    fn reclaim(&self, i: usize) {
        match self.list.reclaim(&self.servers[i]) {
            Ok(Reclaim::Reset) | Ok(Reclaim::AlreadyReset) => {}
            other => panic!("reclaim of server {i}: {other:?}"),
        }
    }

    /// Drain whatever is left and check the accounting invariant.
    fn drain_and_check(&self) {
        let mut extra = vec![0usize; self.servers.len()];
        self.list
            .pop_all(|t| extra[self.index(Node::of(t))] += 1)
            .expect("pop_all");
        for (i, extra) in extra.iter().enumerate() {
            let pushes = self.pushes[i].load(Ordering::SeqCst);
            let claims = self.claims[i].load(Ordering::SeqCst) + extra;
            assert_eq!(
                claims, pushes,
                "server {i}: {pushes} pushes but {claims} claims"
            );
        }
        assert_eq!(self.list.is_empty(), Ok(true));
    }
}

/// A push, a pop and a collection race; one deleted node waits for the collector.
#[test]
fn push_vs_pop_vs_gc() {
    loom::model(|| {
        let w = World::new(3);
        w.push(0);
        w.push(1);
        assert_eq!(w.pop(), Some(1)); // node 1 is deleted but still linked

        let w1 = w.clone();
        let pusher = thread::spawn(move || w1.push(2));
        let w2 = w.clone();
        let popper = thread::spawn(move || w2.pop());
        let w3 = w.clone();
        let collector = thread::spawn(move || match w3.list.gc() {
            Gc::Done(_) | Gc::Busy => {}
            Gc::Corrupt(c, _) => panic!("gc: {c:?}"),
        });
        pusher.join().unwrap();
        let popped = popper.join().unwrap();
        collector.join().unwrap();
        // Server 0 was live before the pop started and nobody else pops: never Empty.
        assert!(popped.is_some(), "the pop missed a live server");
        w.reclaim(1);
        w.drain_and_check();
    });
}

/// H1 (ABA): a slow popper holds (A, next = B) while A is popped, collected, reset and pushed
/// again. Its mark CAS may then succeed, which must be a correct pop of the re-pushed A.
#[test]
fn aba_interleaving_h1() {
    loom::model(|| {
        let w = World::new(2);
        w.push(1); // B
        w.push(0); // A, head

        let w1 = w.clone();
        let slow = thread::spawn(move || w1.pop());
        let w2 = w.clone();
        let churn = thread::spawn(move || {
            if let Some(i) = w2.pop() {
                w2.reclaim(i);
                w2.push(i);
            }
        });
        let slow_got = slow.join().unwrap();
        churn.join().unwrap();
        assert!(slow_got.is_some());
        w.drain_and_check();
    });
}

/// H2: the list is H -> A(deleted) -> B. A popper races the collector, which unlinks A, and
/// A's owner, which resets A and pushes it again. The popper must never follow A's reset
/// link, never return Empty (B stays live for it), and never claim a node twice.
#[test]
fn gc_races_pop_h2() {
    loom::model(|| {
        let w = World::new(2);
        w.push(1); // B
        w.push(0); // A
        assert_eq!(w.pop(), Some(0)); // A deleted, still linked

        let w1 = w.clone();
        let popper = thread::spawn(move || w1.pop());
        let w2 = w.clone();
        let owner = thread::spawn(move || {
            w2.reclaim(0); // collect A and reset it
            w2.push(0); // A goes idle again
        });
        let got = popper.join().unwrap();
        owner.join().unwrap();
        assert!(got.is_some(), "the pop returned Empty with B live");
        w.drain_and_check();
    });
}

/// H2, reset only: the collector unlinks A and its owner resets it, without pushing it
/// again. A popper that read A's address before the unlink then reads the reset value; it
/// must restart from the head and find B, not mark A (which is off the list) or stop.
#[test]
fn gc_races_pop_h2_reset_only() {
    loom::model(|| {
        let w = World::new(2);
        w.push(1); // B
        w.push(0); // A
        assert_eq!(w.pop(), Some(0)); // A deleted, still linked

        let w1 = w.clone();
        let popper = thread::spawn(move || w1.pop());
        let w2 = w.clone();
        let owner = thread::spawn(move || w2.reclaim(0));
        let got = popper.join().unwrap();
        owner.join().unwrap();
        assert_eq!(got, Some(1), "the pop must find B");
        w.drain_and_check();
    });
}

/// A stale popper holding A's address marks A while A's owner is between P2 and P3 of a new
/// push whose head CAS loses to a third pusher. The mark must survive (no double claim).
#[test]
fn stale_popper_during_push() {
    loom::model(|| {
        let w = World::new(3);
        w.push(0); // A

        let w1 = w.clone();
        let popper = thread::spawn(move || w1.pop());
        let w2 = w.clone();
        let owner = thread::spawn(move || {
            if w2.pop() == Some(0) {
                w2.reclaim(0);
                w2.push(0);
            }
        });
        let w3 = w.clone();
        let other = thread::spawn(move || w3.push(2));
        popper.join().unwrap();
        owner.join().unwrap();
        other.join().unwrap();
        w.drain_and_check();
    });
}

/// `pop_all` racing a pop: every live server goes to exactly one of them.
#[test]
fn pop_all_vs_pop() {
    loom::model(|| {
        let w = World::new(2);
        w.push(0);
        w.push(1);
        let w1 = w.clone();
        let popper = thread::spawn(move || w1.pop());
        let w2 = w.clone();
        let taker = thread::spawn(move || {
            let mut v = Vec::new();
            w2.list
                .pop_all(|t| v.push(w2.index(Node::of(t))))
                .expect("pop_all");
            for i in v {
                w2.claims[i].fetch_add(1, Ordering::SeqCst);
            }
        });
        if let Some(i) = popper.join().unwrap() {
            taker.join().unwrap();
            w.reclaim(i);
        } else {
            taker.join().unwrap();
        }
        w.drain_and_check();
    });
}
