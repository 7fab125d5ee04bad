//! Real-thread stress of both idle-worker lists: 4 pusher threads, each owning a set of
//! worker tasks, push a task again only after the consumer has taken it (and reset its
//! field); 1 consumer thread calls `take_all` in a loop. At the end every push must have been
//! taken exactly once.
//!
//! Bookkeeping per task: `queued` (set by the owner before the push, cleared by the consumer
//! after the take; a take that finds it clear is a duplicate), and push/take counters.
//! No timing: the test ends after a fixed number of pushes.
#![cfg(not(umcg_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;

use umcg_abi::UmcgTask;
use umcg_abi::idle_workers::{IdleWorkerHead, WorkerPush};
use umcg_abi::v0_9::{IdleWorkerHeadV09, UmcgTaskV09};

const PUSHERS: usize = 4;
const TASKS_PER_PUSHER: usize = 8;
const TASKS: usize = PUSHERS * TASKS_PER_PUSHER;
const PUSHES_PER_PUSHER: u64 = 50_000;

/// One idle-worker list under test, with tasks that carry their index.
trait List: Sync {
    type Task: Sync;
    fn task(&self, index: u32) -> Self::Task;
    fn index(task: &Self::Task) -> usize;
    /// Push; `false` = contended (the caller retries).
    fn push(&self, task: &Self::Task) -> bool;
    /// Take everything; call `f` on each task in the chain.
    fn take_all(&self, f: &mut dyn FnMut(&Self::Task));
    /// Whether `task`'s field holds this list's head address.
    fn is_reset(&self, task: &Self::Task) -> bool;
}

struct V03 {
    head: IdleWorkerHead,
    bound: u32,
}

impl List for V03 {
    type Task = UmcgTask;
    fn task(&self, index: u32) -> UmcgTask {
        let t = UmcgTask::new_worker(0, self.head.addr());
        // The test's own use of a field the list does not touch: the task's index.
        t.server_tid.store(index, Ordering::Relaxed);
        t
    }
    fn index(task: &UmcgTask) -> usize {
        task.server_tid.load(Ordering::Relaxed) as usize
    }
    fn push(&self, task: &UmcgTask) -> bool {
        match self.head.push(task, self.bound) {
            Ok(WorkerPush::Pushed { attempts }) => {
                assert!((1..=self.bound).contains(&attempts));
                true
            }
            Ok(WorkerPush::Contended) => {
                assert!(self.is_reset(task), "a contended push restores the field");
                false
            }
            Err(e) => panic!("push refused: {e:?}"),
        }
    }
    fn take_all(&self, f: &mut dyn FnMut(&UmcgTask)) {
        // SAFETY: all tasks live in a Vec that outlives every thread of the test.
        for item in unsafe { self.head.take_all(TASKS + 1) } {
            let task = item.expect("walk error");
            // SAFETY: as above.
            f(unsafe { task.as_ref() });
        }
    }
    fn is_reset(&self, task: &UmcgTask) -> bool {
        task.idle_workers_ptr.load(Ordering::Relaxed) == self.head.addr()
    }
}

struct V09 {
    head: IdleWorkerHeadV09,
}

impl List for V09 {
    type Task = UmcgTaskV09;
    fn task(&self, index: u32) -> UmcgTaskV09 {
        let t = UmcgTaskV09::new_worker(self.head.addr(), 0);
        t.next_tid.store(index, Ordering::Relaxed);
        t
    }
    fn index(task: &UmcgTaskV09) -> usize {
        task.next_tid.load(Ordering::Relaxed) as usize
    }
    fn push(&self, task: &UmcgTaskV09) -> bool {
        self.head.push(task).expect("push refused");
        true
    }
    fn take_all(&self, f: &mut dyn FnMut(&UmcgTaskV09)) {
        // SAFETY: all tasks live in a Vec that outlives every thread of the test, and every
        // push runs to completion.
        for item in unsafe { self.head.take_all(TASKS + 1) } {
            let task = item.expect("walk error");
            // SAFETY: as above.
            f(unsafe { task.as_ref() });
        }
    }
    fn is_reset(&self, task: &UmcgTaskV09) -> bool {
        task.idle_workers_ptr.load(Ordering::Relaxed) == self.head.addr()
    }
}

#[derive(Debug)]
struct Outcome {
    pushes: u64,
    takes: u64,
    contended: u64,
    take_alls: u64,
}

/// Counts a pusher as finished when it ends, even by a panic (so the consumer stops).
struct CountOnDrop<'a>(&'a AtomicUsize);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Raises the flag if the consumer panics (so the pushers stop waiting for it).
struct FlagOnPanic<'a>(&'a AtomicBool);

impl Drop for FlagOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

impl Outcome {
    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} pushes, {} takes, {} contended pushes retried, {} take_all calls",
            self.pushes, self.takes, self.contended, self.take_alls
        );
    }
}

fn stress<L: List>(list: &L) -> Outcome {
    let tasks: Vec<L::Task> = (0..TASKS as u32).map(|i| list.task(i)).collect();
    let queued: Vec<AtomicBool> = (0..TASKS).map(|_| AtomicBool::new(false)).collect();
    let pushes: Vec<AtomicU64> = (0..TASKS).map(|_| AtomicU64::new(0)).collect();
    let takes: Vec<AtomicU64> = (0..TASKS).map(|_| AtomicU64::new(0)).collect();
    let duplicates = AtomicU64::new(0);
    let contended = AtomicU64::new(0);
    let pushers_done = AtomicUsize::new(0);
    let consumer_failed = AtomicBool::new(false);
    let mut take_alls = 0;

    thread::scope(|s| {
        for p in 0..PUSHERS {
            let (tasks, queued, pushes) = (&tasks, &queued, &pushes);
            let (contended, pushers_done) = (&contended, &pushers_done);
            let consumer_failed = &consumer_failed;
            s.spawn(move || {
                let _done = CountOnDrop(pushers_done);
                let own = p * TASKS_PER_PUSHER..(p + 1) * TASKS_PER_PUSHER;
                let mut done = 0;
                while done < PUSHES_PER_PUSHER {
                    let mut progressed = false;
                    for i in own.clone() {
                        if done == PUSHES_PER_PUSHER {
                            break;
                        }
                        // Acquire: pairs with the consumer's Release clear, which follows
                        // the field's reset, so the push below reads the head address.
                        if queued[i].load(Ordering::Acquire) {
                            continue;
                        }
                        assert!(list.is_reset(&tasks[i]), "taken task not reset");
                        // Published to the consumer by the push itself.
                        queued[i].store(true, Ordering::Relaxed);
                        pushes[i].fetch_add(1, Ordering::Relaxed);
                        while !list.push(&tasks[i]) {
                            contended.fetch_add(1, Ordering::Relaxed);
                        }
                        done += 1;
                        progressed = true;
                    }
                    if !progressed {
                        // Every own task is queued: let the consumer run.
                        if consumer_failed.load(Ordering::Acquire) {
                            return;
                        }
                        thread::yield_now();
                    }
                }
            });
        }

        // The consumer, on this thread.
        let _failed = FlagOnPanic(&consumer_failed);
        let take = |n: &mut u64| {
            list.take_all(&mut |t| {
                let i = L::index(t);
                assert!(list.is_reset(t), "yielded before the reset");
                takes[i].fetch_add(1, Ordering::Relaxed);
                // Release: publishes the reset to the owner's Acquire load.
                if !queued[i].swap(false, Ordering::AcqRel) {
                    duplicates.fetch_add(1, Ordering::Relaxed);
                }
                *n += 1;
            });
        };
        let mut taken = 0;
        loop {
            let finished = pushers_done.load(Ordering::Acquire) == PUSHERS;
            let before = taken;
            take(&mut taken);
            take_alls += 1;
            if finished {
                // Every push completed before `finished` was read; this take got the rest.
                break;
            }
            if taken == before {
                thread::yield_now();
            }
        }
    });

    assert_eq!(
        duplicates.load(Ordering::Relaxed),
        0,
        "a push was taken twice"
    );
    for i in 0..TASKS {
        let (p, t) = (
            pushes[i].load(Ordering::Relaxed),
            takes[i].load(Ordering::Relaxed),
        );
        assert_eq!(p, t, "task {i}: {p} pushes, {t} takes");
        assert!(!queued[i].load(Ordering::Relaxed), "task {i} still queued");
        assert!(list.is_reset(&tasks[i]), "task {i} not reset");
    }
    let pushes: u64 = pushes.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    assert_eq!(pushes, PUSHERS as u64 * PUSHES_PER_PUSHER);
    Outcome {
        pushes,
        takes: takes.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
        contended: contended.load(Ordering::Relaxed),
        take_alls,
    }
}

#[test]
fn v0_3_bounded_cas_large_bound() {
    let list = V03 {
        head: IdleWorkerHead::new(),
        bound: 64,
    };
    let o = stress(&list);
    o.report("v0.3, bound 64");
    assert_eq!(o.takes, o.pushes);
}

#[test]
fn v0_3_bounded_cas_bound_1_retried() {
    // Every lost CAS is `Contended`: exercises the restore-and-retry path.
    let list = V03 {
        head: IdleWorkerHead::new(),
        bound: 1,
    };
    let o = stress(&list);
    o.report("v0.3, bound 1");
    assert_eq!(o.takes, o.pushes);
}

#[test]
fn v0_9_pending_push() {
    let list = V09 {
        head: IdleWorkerHeadV09::new(),
    };
    let o = stress(&list);
    o.report("v0.9.1");
    assert_eq!(o.takes, o.pushes);
    assert_eq!(o.contended, 0, "the PENDING push is wait-free");
}
