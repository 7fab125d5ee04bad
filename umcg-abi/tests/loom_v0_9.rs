//! loom models of v0.9.1's idle-worker list with `UMCG_IDLE_NODE_PENDING` and of the
//! idle-server slot handshake (`umcg_abi::v0_9`).
//!
//! Run with:
//! `RUSTFLAGS="--cfg umcg_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2
//! CARGO_TARGET_DIR=target/loom cargo test -p umcg-abi --release --test loom_v0_9`
#![cfg(umcg_loom)]

use loom::sync::Arc;
use loom::thread;
use umcg_abi::sync::Ordering;
use umcg_abi::v0_9::{
    IdleServerSlot, IdleWorkerHeadV09, UmcgTaskV09, push_worker, take_idle_server,
};

/// Drain one `take_all` (which spins on PENDING), checking each yielded worker's reset, and
/// append the task addresses to `out`.
fn take_into(head: &IdleWorkerHeadV09, out: &mut Vec<usize>) {
    // SAFETY: every task pushed in these models is held by an `Arc` until after the final
    // take, and every push runs to completion (no PENDING is left forever).
    for item in unsafe { head.take_all(8) } {
        let task = item.expect("a well-formed chain walks without error");
        // SAFETY: the task is alive (held by the model's `Arc`s).
        let field = unsafe { &task.as_ref().idle_workers_ptr };
        assert_eq!(
            field.load(Ordering::Relaxed),
            head.addr(),
            "reset before yield"
        );
        out.push(task.as_ptr().addr());
    }
}

fn addr_of(t: &Arc<UmcgTaskV09>) -> usize {
    Arc::as_ptr(t).addr()
}

fn worker(head: &IdleWorkerHeadV09) -> Arc<UmcgTaskV09> {
    Arc::new(UmcgTaskV09::new_worker(head.addr(), 0))
}

/// A worker already queued, a second one being pushed (PENDING window included) and a
/// racing take: the take must wait out PENDING instead of ending the walk there, so the older
/// worker is never lost; a final take collects whatever the racing one did not.
#[test]
fn pending_push_vs_consumer() {
    loom::model(|| {
        let head = Arc::new(IdleWorkerHeadV09::new());
        let w0 = worker(&head);
        let w1 = worker(&head);
        assert_eq!(head.push(&w0), Ok(0));

        let t1 = {
            let (head, w) = (head.clone(), w1.clone());
            thread::spawn(move || head.push(&w))
        };
        let mut taken = Vec::new();
        take_into(&head, &mut taken);
        let old = t1.join().unwrap().expect("well-formed push");
        // w1 links to w0 if its exchange came before the take's, else to nothing.
        assert!(old == 0 || old == w0.idle_workers_node());
        take_into(&head, &mut taken);

        taken.sort_unstable();
        let mut want = vec![addr_of(&w0), addr_of(&w1)];
        want.sort_unstable();
        assert_eq!(taken, want, "every pushed worker taken exactly once");
        assert!(head.is_empty());
    });
}

/// Two concurrent PENDING pushes (typed and raw) against a racing take and a final take.
#[test]
fn two_pending_pushes_vs_take_all() {
    loom::model(|| {
        let head = Arc::new(IdleWorkerHeadV09::new());
        let w1 = worker(&head);
        let w2 = worker(&head);

        let t1 = {
            let (head, w) = (head.clone(), w1.clone());
            thread::spawn(move || head.push(&w))
        };
        let t2 = {
            let (head, w) = (head.clone(), w2.clone());
            thread::spawn(move || {
                // SAFETY: `w`'s field holds the address of `head`, alive in this closure.
                let r = unsafe { push_worker(&w) };
                drop(head);
                r
            })
        };
        let mut taken = Vec::new();
        take_into(&head, &mut taken);
        assert!(t1.join().unwrap().is_ok());
        assert!(t2.join().unwrap().is_ok());
        take_into(&head, &mut taken);

        taken.sort_unstable();
        let mut want = vec![addr_of(&w1), addr_of(&w2)];
        want.sort_unstable();
        assert_eq!(taken, want, "every pushed worker taken exactly once");
        for w in [&w1, &w2] {
            assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), head.addr());
        }
    });
}

/// The lost-wake-up handshake of §4.8 without fences. Kernel: push W, then take the slot.
/// Server: offer its TID, then look at the list. Either the kernel gets the TID or the server
/// sees W.
#[test]
fn slot_handshake() {
    const SERVER_TID: u32 = 7;
    loom::model(|| {
        let head = Arc::new(IdleWorkerHeadV09::new());
        let slot = Arc::new(IdleServerSlot::new());
        let w = Arc::new(UmcgTaskV09::new_worker(head.addr(), slot.addr()));

        let kernel = {
            let (head, w) = (head.clone(), w.clone());
            let slot = slot.clone();
            thread::spawn(move || {
                head.push(&w).expect("well-formed push");
                // SAFETY: `w`'s slot pointer holds the address of `slot`, alive here.
                let tid = unsafe { take_idle_server(&w) }.expect("well-formed slot pointer");
                drop(slot);
                tid
            })
        };
        assert!(slot.offer(SERVER_TID));
        let server_saw_worker = !head.is_empty();
        let kernel_took = kernel.join().unwrap();

        assert!(
            kernel_took == Some(SERVER_TID) || server_saw_worker,
            "lost wake-up: the kernel found no server and the server found no worker"
        );
        // If the kernel did not take the TID, the server still holds the slot and withdraws.
        assert_eq!(slot.withdraw(SERVER_TID), kernel_took.is_none());
        let mut taken = Vec::new();
        take_into(&head, &mut taken);
        assert_eq!(taken, vec![addr_of(&w)]);
    });
}
