//! loom models of the v0.3 idle-worker list (`umcg_abi::idle_workers`): kernel-side bounded
//! CAS pushes racing a user-space `take_all`.
//!
//! Run with:
//! `RUSTFLAGS="--cfg umcg_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2
//! CARGO_TARGET_DIR=target/loom cargo test -p umcg-abi --release --test loom_idle_workers`
#![cfg(umcg_loom)]

use loom::sync::Arc;
use loom::thread;
use umcg_abi::UmcgTask;
use umcg_abi::idle_workers::{IdleWorkerHead, WorkerPush, push_worker};
use umcg_abi::sync::Ordering;

/// Drain one `take_all`, checking that each yielded worker was reset to the head before it was
/// yielded, and append the task addresses to `out`.
fn take_into(head: &IdleWorkerHead, out: &mut Vec<usize>) {
    // SAFETY: every task pushed in these models is held by an `Arc` until after the final
    // take; no link is corrupted.
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

fn addr_of(t: &Arc<UmcgTask>) -> usize {
    Arc::as_ptr(t).addr()
}

/// Two workers pushed concurrently (one through the typed head, one through the raw
/// kernel-side push) while user space takes the list: each worker is taken exactly once
/// across the racing take and a final take after the joins.
#[test]
fn two_pushes_vs_take_all() {
    loom::model(|| {
        let head = Arc::new(IdleWorkerHead::new());
        let w1 = Arc::new(UmcgTask::new_worker(0, head.addr()));
        let w2 = Arc::new(UmcgTask::new_worker(0, head.addr()));

        let t1 = {
            let (head, w) = (head.clone(), w1.clone());
            thread::spawn(move || head.push(&w, 3))
        };
        let t2 = {
            let (head, w) = (head.clone(), w2.clone());
            thread::spawn(move || {
                // SAFETY: `w`'s field holds the address of `head`, alive in this closure.
                let r = unsafe { push_worker(&w, 3) };
                drop(head);
                r
            })
        };

        let mut taken = Vec::new();
        take_into(&head, &mut taken);
        // Each CAS can lose at most to the other push and to the take: 3 attempts suffice.
        for r in [t1.join().unwrap(), t2.join().unwrap()] {
            match r {
                Ok(WorkerPush::Pushed { attempts }) => assert!((1..=3).contains(&attempts)),
                other => panic!("unexpected push outcome {other:?}"),
            }
        }
        take_into(&head, &mut taken);

        taken.sort_unstable();
        let mut want = vec![addr_of(&w1), addr_of(&w2)];
        want.sort_unstable();
        assert_eq!(taken, want, "every pushed worker taken exactly once");
        assert!(head.is_empty());
        for w in [&w1, &w2] {
            assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), head.addr());
        }
    });
}

/// Pushes with a bound of 1 that retry on `Contended`: a lost CAS must restore the worker's
/// field to the head (or the retry would fail or push onto a stale link), and nothing is lost
/// or duplicated against a racing take.
#[test]
fn contended_pushes_restore_and_retry() {
    loom::model(|| {
        let head = Arc::new(IdleWorkerHead::new());
        let w1 = Arc::new(UmcgTask::new_worker(0, head.addr()));
        let w2 = Arc::new(UmcgTask::new_worker(0, head.addr()));

        let spawn_pusher = |w: &Arc<UmcgTask>| {
            let (head, w) = (head.clone(), w.clone());
            thread::spawn(move || {
                let mut contended = 0;
                loop {
                    match head.push(&w, 1) {
                        Ok(WorkerPush::Pushed { attempts: 1 }) => return contended,
                        Ok(WorkerPush::Contended) => {
                            assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), head.addr());
                            contended += 1;
                        }
                        other => panic!("unexpected push outcome {other:?}"),
                    }
                }
            })
        };
        let t1 = spawn_pusher(&w1);
        let t2 = spawn_pusher(&w2);

        let mut taken = Vec::new();
        take_into(&head, &mut taken);
        let contended = t1.join().unwrap() + t2.join().unwrap();
        assert!(contended <= 2);
        take_into(&head, &mut taken);

        taken.sort_unstable();
        let mut want = vec![addr_of(&w1), addr_of(&w2)];
        want.sort_unstable();
        assert_eq!(taken, want, "every pushed worker taken exactly once");
    });
}

/// A worker taken by a `take_all` is pushed again right away (it was reset, so it may be)
/// while a second worker is pushed concurrently: a final take finds each worker exactly once.
#[test]
fn repush_after_reset() {
    loom::model(|| {
        let head = Arc::new(IdleWorkerHead::new());
        let w1 = Arc::new(UmcgTask::new_worker(0, head.addr()));
        let w2 = Arc::new(UmcgTask::new_worker(0, head.addr()));
        assert_eq!(head.push(&w1, 1), Ok(WorkerPush::Pushed { attempts: 1 }));

        let t2 = {
            let (head, w) = (head.clone(), w2.clone());
            thread::spawn(move || head.push(&w, 3))
        };
        let mut first = Vec::new();
        take_into(&head, &mut first);
        assert!(
            first.contains(&addr_of(&w1)),
            "w1 was queued before the take"
        );
        for w in [&w1, &w2] {
            if first.contains(&addr_of(w)) {
                assert!(matches!(head.push(w, 3), Ok(WorkerPush::Pushed { .. })));
            }
        }
        assert!(matches!(t2.join().unwrap(), Ok(WorkerPush::Pushed { .. })));

        let mut last = Vec::new();
        take_into(&head, &mut last);
        last.sort_unstable();
        let mut want = vec![addr_of(&w1), addr_of(&w2)];
        want.sort_unstable();
        assert_eq!(
            last, want,
            "each worker queued exactly once after the re-pushes"
        );
    });
}
