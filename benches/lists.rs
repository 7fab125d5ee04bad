//! criterion benches of the umcg-abi lists.
//!
//! - `idle_servers/push_pop_pair`: one push + one pop (the pop finds the live head), the
//!   uncontended fast path; baseline `baseline/two_cas`: two uncontended CAS on one word.
//! - `idle_servers/gc_per_node`: a collection unlinking N deleted nodes (throughput =
//!   nodes).
//! - `idle_servers_contended/push_pop_pair`: the same pair while a second thread runs push /
//!   pop / reclaim cycles on the same list.
//! - `idle_server_slot/offer_take`: v0.9.1's single idle-server slot (CAS in, XCHG out), for
//!   comparison with the v0.3 list.
//!
//! Run: `cargo bench --bench lists`. Results: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use umcg::abi::UmcgTask;
use umcg::abi::idle_servers::{Gc, IdleServerList, Pop, Remove};
use umcg::abi::v0_9::IdleServerSlot;

const BATCH: usize = 64;

/// Boxed: each task must keep its address (nodes are field addresses).
#[allow(clippy::vec_box)]
fn servers(n: usize) -> Vec<Box<UmcgTask>> {
    (0..n).map(|_| Box::new(UmcgTask::new_server())).collect()
}

fn push(list: &IdleServerList, s: &UmcgTask) {
    // SAFETY: every server is boxed and outlives the list's use in the bench.
    unsafe { list.push(s) }.expect("push");
}

/// Time `iters` push+pop pairs in batches of `BATCH` servers; collect and reset between
/// batches, outside the timed region.
fn push_pop_pairs(list: &IdleServerList, s: &[Box<UmcgTask>], iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        let t0 = Instant::now();
        for srv in &s[..n] {
            push(list, srv);
            match list.pop(usize::MAX) {
                Pop::Got(node) => {
                    black_box(node);
                }
                other => panic!("{other:?}"),
            }
        }
        total += t0.elapsed();
        for srv in &s[..n] {
            list.reclaim(srv).expect("reclaim");
        }
        left -= n as u64;
    }
    total
}

fn bench_uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("idle_servers");
    let list = Box::new(IdleServerList::new());
    let s = servers(BATCH);
    for t in &s {
        list.prepare(t);
    }
    g.bench_function(BenchmarkId::new("push_pop_pair", 1), |b| {
        b.iter_custom(|iters| push_pop_pairs(&list, &s, iters))
    });
    let word = AtomicU64::new(0);
    g.bench_function(BenchmarkId::new("baseline_two_cas", 1), |b| {
        b.iter(|| {
            let v = word.load(Ordering::Acquire);
            let _ = black_box(word.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire));
            let _ =
                black_box(word.compare_exchange(v + 1, v + 2, Ordering::AcqRel, Ordering::Acquire));
        })
    });
    for n in [16usize, 64] {
        g.throughput(Throughput::Elements(n as u64));
        let s = servers(n);
        for t in &s {
            list.prepare(t);
        }
        g.bench_function(BenchmarkId::new("gc_per_node", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for t in &s {
                        push(&list, t);
                    }
                    for t in &s {
                        assert_eq!(list.remove(t), Remove::Removed);
                    }
                    let t0 = Instant::now();
                    let r = list.gc();
                    total += t0.elapsed();
                    assert!(matches!(r, Gc::Done(st) if st.unlinked == n), "{r:?}");
                    for t in &s {
                        list.reclaim(t).expect("reclaim");
                    }
                }
                total
            })
        });
    }
    g.finish();
}

fn bench_contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("idle_servers_contended");
    let list = Arc::new(IdleServerList::new());
    let mine = servers(BATCH);
    let theirs = Arc::new(servers(BATCH));
    for t in mine.iter().chain(theirs.iter()) {
        list.prepare(t);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let (list, theirs, stop) = (list.clone(), theirs.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // The other thread pushes its servers and pops whatever it finds; claims of
                // our servers are returned by reclaiming them on our side.
                for t in theirs.iter() {
                    push(&list, t);
                    let _ = list.pop(usize::MAX);
                }
                for t in theirs.iter() {
                    let _ = list.remove(t);
                    list.reclaim(t).expect("reclaim");
                }
            }
        })
    };
    g.bench_function(BenchmarkId::new("push_pop_pair", 2), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH as u64) as usize;
                let t0 = Instant::now();
                for srv in &mine[..n] {
                    push(&list, srv);
                    black_box(list.pop(usize::MAX));
                }
                total += t0.elapsed();
                for srv in &mine[..n] {
                    let _ = list.remove(srv);
                    list.reclaim(srv).expect("reclaim");
                }
                left -= n as u64;
            }
            total
        })
    });
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    g.finish();
}

fn bench_slot(c: &mut Criterion) {
    let mut g = c.benchmark_group("idle_server_slot");
    let slot = IdleServerSlot::new();
    g.bench_function(BenchmarkId::new("offer_take", 1), |b| {
        b.iter(|| {
            assert!(slot.offer(black_box(42)));
            black_box(slot.take())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_uncontended, bench_contended, bench_slot);
criterion_main!(benches);
