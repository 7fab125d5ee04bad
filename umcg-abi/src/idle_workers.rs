//! The v0.3 idle-worker list (spec §2.7.2): the kernel pushes a worker with a bounded CAS
//! loop, user space takes the whole list at once.
//!
//! # Shape
//!
//! An intrusive singly-linked stack whose nodes are the `idle_workers_ptr` fields of worker
//! [`UmcgTask`]s. The head is a separate `u64` word owned by user space
//! ([`IdleWorkerHead`]). The field is used twice ("dual use"):
//!
//! | `W.idle_workers_ptr` | meaning |
//! |---|---|
//! | `== &H` | W is not queued; a push will go onto the list whose head word is at `&H` |
//! | anything else | W is queued: the address of the next queued worker's field, 0 = end |
//!
//! Invariants (what the code checks, and what it reports when memory breaks them):
//! - Node and head addresses are 8-byte aligned, so their bit 0 is 0 (a set bit 0 is reported
//!   as a *tagged* head, the mark of the idle-server list and of v0.9.1's PENDING).
//! - A node lies at `offset_of!(UmcgTask, idle_workers_ptr)` (24 outside loom) inside a
//!   64-byte aligned task; the node → task conversion subtracts that offset.
//! - After [`IdleWorkerHead::take_all`] has yielded a worker, its field holds `&H` again:
//!   the reset that must happen before the worker runs or is pushed again (otherwise the
//!   kernel would push onto whatever stale link the field still holds).
//!
//! # Protocol
//!
//! Push of worker W, by the (emulated) kernel ([`push_worker`], or
//! [`IdleWorkerHead::push`] for a typed head), with `N` attempts (`2 × nr_cpu_ids` in v0.3):
//! 1. `h = W.idle_workers_ptr`, read before anything is written; `node = &W.idle_workers_ptr`.
//!    `h` must be a plausible head address (non-zero, 8-aligned, untagged, not `node`).
//! 2. Up to `N` times: `first = *h`; `*node = first`; CAS `*h` from `first` to `node`.
//!    Success: W is queued ([`WorkerPush::Pushed`]). Failure: retry with the value seen.
//! 3. Bound exhausted: [`WorkerPush::Contended`]. The v0.3 kernel kills the worker here; this
//!    module only reports it and restores `W.idle_workers_ptr = h`, so the caller may retry.
//!
//! Consume, by user space ([`IdleWorkerHead::take_all`]):
//! 1. `first = XCHG(H, 0)`: the whole list is now private to the consumer.
//! 2. For each node, at most `max_len` of them: `next = *node`; `*node = &H` (the reset);
//!    yield the worker; continue at `next`. 0 ends the walk.
//!
//! ABA does not arise: pushes only ever CAS the head, and the consumer takes everything with
//! one exchange. A push whose `first` went stale (taken and re-pushed meanwhile) can only
//! succeed if the head holds `first` again at the CAS, and then `first` *is* the current top,
//! so the link written in step 2 is right.
//!
//! # Bad input
//!
//! Nothing here panics or loops forever on corrupted shared memory; each problem ends the
//! operation with an error value:
//! - push: a null, misaligned or tagged `h`, or `h == node` ([`PushError`]); a head word
//!   holding a misaligned value, or already pointing at W ([`PushError::CorruptHeadValue`],
//!   [`PushError::AlreadyAtHead`]). On every error W's field is left holding `h`.
//! - walk: a misaligned link, a node whose task would not be 64-aligned, a node that already
//!   holds `&H` (a cycle back to a node reset earlier in the same walk, or a worker that was
//!   never queued), more than `max_len` nodes ([`WalkError`]). The walk stops at the first
//!   error; nodes after it stay taken off the list without being reset.
//!
//! An address that is well formed but points at memory that is no worker task cannot be
//! detected; that is what the `# Safety` contracts exclude.
//!
//! # Memory ordering
//!
//! The spec writes step 2 as "barrier; `first = *h`; `*node = first`; barrier; CAS". Both
//! barriers order the pusher's earlier writes (the worker's state, the link in `*node`)
//! before the CAS that publishes the node, which is exactly the Release half of the CAS:
//! - The successful CAS is **Release**; the consumer's `XCHG(H, 0)` is **Acquire** and pairs
//!   with it. Each CAS on `H` is a read-modify-write, so it continues the release sequence of
//!   every earlier push: the consumer's exchange synchronises with *all* pushes whose nodes
//!   it took, and sees every link they stored. `first` and the link store can therefore be
//!   Relaxed, as can a failed CAS (it publishes nothing).
//! - The reset store `*node = &H` is **Release**; the pusher's load of
//!   `h = W.idle_workers_ptr` is **Acquire** and pairs with it, so a push that sees the reset
//!   also sees everything the consumer did before it.
//! - Node loads in the walk are Acquire (needed by v0.9.1's PENDING protocol, which shares the
//!   walk; harmless here).
//!
//! The ordering between the two lists for lost-wake-up avoidance (kernel: push worker,
//! barrier, pop server) is the caller's: it needs a `fence(SeqCst)` after the push.

use core::marker::PhantomData;
use core::mem::offset_of;
use core::num::NonZeroUsize;
use core::ptr::{self, NonNull};

use crate::consts::UMCG_TASK_ALIGN;
use crate::sync::{AtomicU64, Ordering, spin_loop};
use crate::task::UmcgTask;

/// The low three bits of a node or head address: zero for an 8-byte aligned `u64` word.
const WORD_ALIGN_MASK: u64 = 7;

/// Offset of the node inside a v0.3 task (24 outside loom; loom atomics are larger).
const NODE_OFFSET: usize = offset_of!(UmcgTask, idle_workers_ptr);

/// The outcome of a bounded push that found its input well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerPush {
    /// The worker is queued; `attempts` CAS attempts were made (1 = uncontended).
    Pushed {
        /// Number of CAS attempts, including the successful one.
        attempts: u32,
    },
    /// Every attempt lost its CAS (or the bound was 0). The worker is not queued and its
    /// field holds the head address again. The v0.3 kernel treats this as fatal (SIGSEGV);
    /// the caller decides.
    Contended,
}

/// A push refused because of what it found in memory. Nothing was published; the worker's
/// field holds what it held before the push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// `idle_workers_ptr` is 0: the worker has no idle-worker list (or is queued last).
    NullHead,
    /// `idle_workers_ptr` has bit 0 set: no head address (v0.9.1's PENDING is such a value).
    TaggedHead(u64),
    /// `idle_workers_ptr` is not 8-byte aligned.
    MisalignedHead(u64),
    /// `idle_workers_ptr` holds the worker's own node address: a stale link, not a head.
    SelfLink(u64),
    /// The head word at `head` holds `value`, which is no node address (v0.3 push only).
    CorruptHeadValue {
        /// Address of the head word.
        head: u64,
        /// What it held.
        value: u64,
    },
    /// The head word already points at this worker's node: the worker is queued but its field
    /// was reset to the head, and pushing it would link it to itself (v0.3 push only).
    AlreadyAtHead,
    /// The worker's field names another head than the one it is pushed onto (typed pushes).
    WrongHead {
        /// The head address the worker's field holds.
        found: u64,
    },
}

/// Why a walk over a taken chain stopped early. The walk yields this once, then ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// A link that is not 8-byte aligned (so not a node; a v0.3 walk reports PENDING this way).
    MisalignedNode(u64),
    /// A node whose task would not be 64-byte aligned, or would lie at address 0: not the
    /// idle-worker field of a task.
    MisalignedTask(u64),
    /// A node that already holds the head address: it was taken earlier in this walk (the
    /// chain has a cycle) or was never queued. It is not yielded again.
    Cycle(u64),
    /// The chain has more than `max_len` nodes; `max_len` workers have been yielded and the
    /// rest of the chain is left as it is (taken off the list, not reset).
    TooLong {
        /// The limit the walk was given.
        max_len: usize,
    },
}

/// A reference to the `AtomicU64` at `addr`.
///
/// # Safety
///
/// - `addr` is the address of an `AtomicU64` whose provenance was exposed and which stays
///   alive, unmoved and only atomically accessed for `'a`.
pub(crate) unsafe fn atomic_u64_at<'a>(addr: u64) -> &'a AtomicU64 {
    // The ABI carries addresses as u64; on the 64-bit targets UMCG exists for this is lossless.
    let p = ptr::with_exposed_provenance::<AtomicU64>(addr as usize);
    // SAFETY: the caller guarantees a live, exposed, atomically accessed `AtomicU64` at `addr`.
    unsafe { &*p }
}

/// Checks a value read from a worker's field as a head address (spec step 1), given the
/// worker's own node address.
pub(crate) fn check_head_addr(h: u64, node: u64) -> Result<(), PushError> {
    if h == 0 {
        Err(PushError::NullHead)
    } else if h & 1 != 0 {
        Err(PushError::TaggedHead(h))
    } else if h & WORD_ALIGN_MASK != 0 {
        Err(PushError::MisalignedHead(h))
    } else if h == node {
        Err(PushError::SelfLink(h))
    } else {
        Ok(())
    }
}

/// Address of `worker`'s node, exposing the provenance of the *whole* task (so a consumer may
/// turn the node back into a task pointer with `with_exposed_provenance`).
fn node_addr_of(worker: &UmcgTask) -> u64 {
    let base = (worker as *const UmcgTask).expose_provenance();
    (base + NODE_OFFSET) as u64
}

/// The bounded CAS loop of step 2 onto `head` (at address `h`), for `worker`'s `node`.
fn push_onto(
    head: &AtomicU64,
    h: u64,
    node: &AtomicU64,
    node_addr: u64,
    bound: u32,
) -> Result<WorkerPush, PushError> {
    // Relaxed: `first` is only stored into our own (unpublished) node and then validated by
    // the CAS; the Release CAS publishes the store.
    let mut first = head.load(Ordering::Relaxed);
    let mut attempts = 0;
    let outcome = loop {
        if attempts == bound {
            break Ok(WorkerPush::Contended);
        }
        if first & WORD_ALIGN_MASK != 0 {
            break Err(PushError::CorruptHeadValue {
                head: h,
                value: first,
            });
        }
        if first == node_addr {
            break Err(PushError::AlreadyAtHead);
        }
        attempts += 1;
        // The node is private until the CAS below succeeds: a plain (Relaxed) store.
        node.store(first, Ordering::Relaxed);
        // Release: publishes the link just stored (and the worker's earlier writes) to the
        // consumer's Acquire exchange. A failure publishes nothing.
        match head.compare_exchange(first, node_addr, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(WorkerPush::Pushed { attempts }),
            Err(seen) => first = seen,
        }
    };
    // Not published: give the worker its head address back, so it can be pushed again.
    node.store(h, Ordering::Relaxed);
    outcome
}

/// The kernel-side bounded push of `worker` onto the head its `idle_workers_ptr` names
/// (spec §2.7.2), with at most `bound` CAS attempts.
///
/// Returns [`WorkerPush::Pushed`] or [`WorkerPush::Contended`] (no attempt succeeded; the
/// worker's field is restored), or a [`PushError`] for bad input found in memory.
///
/// A worker is pushed by one thread at a time (its own, in the kernel). Two concurrent pushes
/// of one worker would queue it twice; the consumer's walk then reports a
/// [`WalkError::Cycle`]. That is a logic error, not a memory-safety one.
///
/// # Safety
///
/// - If `worker.idle_workers_ptr` holds a non-zero, 8-byte aligned value other than the
///   worker's own node address, that value is the address of a live `AtomicU64` head word
///   (exposed with `expose_provenance`, e.g. by [`IdleWorkerHead::addr`]), which stays alive
///   and is only accessed atomically for the duration of the call.
pub unsafe fn push_worker(worker: &UmcgTask, bound: u32) -> Result<WorkerPush, PushError> {
    // Acquire: pairs with the consumer's Release reset of this field.
    let h = worker.idle_workers_ptr.load(Ordering::Acquire);
    // SAFETY: `h` is the field's value, which the caller's contract covers.
    unsafe { push_worker_onto(worker, h, bound) }
}

/// [`push_worker`] onto `h`, a value the caller has already read from
/// `worker.idle_workers_ptr` (step 1) and checked, e.g. found readable: the field is not read
/// again, so only the address the caller checked is ever dereferenced, even if user space
/// changes the field meanwhile.
///
/// # Safety
///
/// - If `h` is non-zero, 8-byte aligned and not the worker's own node address, it is the
///   address of a live `AtomicU64` head word (exposed with `expose_provenance`), which stays
///   alive and is only accessed atomically for the duration of the call.
pub unsafe fn push_worker_onto(
    worker: &UmcgTask,
    h: u64,
    bound: u32,
) -> Result<WorkerPush, PushError> {
    let node_addr = node_addr_of(worker);
    check_head_addr(h, node_addr)?;
    // SAFETY: `h` is non-zero, aligned and not the worker's node; the caller guarantees such a
    // value is a live, exposed head word for the duration of the call.
    let head = unsafe { atomic_u64_at(h) };
    push_onto(head, h, &worker.idle_workers_ptr, node_addr, bound)
}

/// A v0.3 idle-worker head word, owned by user space.
///
/// Workers point at it ([`IdleWorkerHead::addr`]) while they are not queued; the emulated
/// kernel pushes them ([`IdleWorkerHead::push`] or [`push_worker`]); user space takes them all
/// at once ([`IdleWorkerHead::take_all`]). It must not move while any worker points at it.
#[repr(C)]
#[derive(Debug)]
pub struct IdleWorkerHead {
    word: AtomicU64,
}

impl Default for IdleWorkerHead {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleWorkerHead {
    /// An empty list.
    pub fn new() -> Self {
        IdleWorkerHead {
            word: AtomicU64::new(0),
        }
    }

    /// The address of the head word: the value a worker's `idle_workers_ptr` holds while it is
    /// not queued. Exposes the word's provenance for [`push_worker`].
    pub fn addr(&self) -> u64 {
        (&self.word as *const AtomicU64).expose_provenance() as u64
    }

    /// Whether the list is empty at this instant (Acquire load of the head word).
    pub fn is_empty(&self) -> bool {
        self.word.load(Ordering::Acquire) == 0
    }

    /// The bounded push of [`push_worker`], onto this head: the worker's field must hold
    /// [`IdleWorkerHead::addr`] (else [`PushError::WrongHead`], after the generic checks).
    ///
    /// Safe because it only dereferences this head and the worker; a consumer's
    /// [`IdleWorkerHead::take_all`] carries the obligation that pushed workers stay alive.
    pub fn push(&self, worker: &UmcgTask, bound: u32) -> Result<WorkerPush, PushError> {
        let node_addr = node_addr_of(worker);
        // Acquire: pairs with the consumer's Release reset of this field.
        let h = worker.idle_workers_ptr.load(Ordering::Acquire);
        check_head_addr(h, node_addr)?;
        if h != self.addr() {
            return Err(PushError::WrongHead { found: h });
        }
        push_onto(&self.word, h, &worker.idle_workers_ptr, node_addr, bound)
    }

    /// Take the whole list (`XCHG(H, 0)`, Acquire) and return an iterator that walks it,
    /// resetting each worker's field to [`IdleWorkerHead::addr`] before yielding the worker.
    ///
    /// At most `max_len` workers are yielded; a longer chain (or a cycle) ends with a
    /// [`WalkError`]. Workers not yet yielded when the iterator is dropped stay off the list
    /// with their links intact, so drain the iterator.
    ///
    /// # Safety
    ///
    /// - Every non-zero, aligned link reachable from the head (up to `max_len` nodes) is the
    ///   `idle_workers_ptr` field of a live,
    ///   64-byte aligned [`UmcgTask`] whose provenance was exposed (as [`push_worker`] and
    ///   [`IdleWorkerHead::push`] do).
    /// - Those tasks stay alive, unmoved and only atomically accessed until the iterator has
    ///   yielded them (or has been dropped).
    pub unsafe fn take_all(&self, max_len: usize) -> TakenWorkers<'_> {
        // Acquire: pairs with the Release CAS of every push whose node is in the chain.
        let first = self.word.swap(0, Ordering::Acquire);
        TakenWorkers {
            // SAFETY: the chain is made of live task fields, per this function's contract.
            walk: unsafe { ChainWalk::new(self.addr(), first, max_len, NODE_OFFSET, None) },
            _head: PhantomData,
        }
    }
}

/// The workers taken off an [`IdleWorkerHead`] by [`IdleWorkerHead::take_all`], newest first.
///
/// Yields `Ok(task)` for each worker (whose field is already reset to the head) and at most
/// one `Err`, after which it ends.
#[derive(Debug)]
#[must_use = "workers taken off the list are lost unless the iterator is drained"]
pub struct TakenWorkers<'a> {
    walk: ChainWalk,
    _head: PhantomData<&'a IdleWorkerHead>,
}

impl Iterator for TakenWorkers<'_> {
    type Item = Result<NonNull<UmcgTask>, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.walk
            .next_task()
            .map(|r| r.map(NonNull::with_exposed_provenance))
    }
}

impl core::iter::FusedIterator for TakenWorkers<'_> {}

/// The walk over a taken chain, shared by the v0.3 and v0.9.1 consumers.
///
/// Yields task addresses. `pending`, if set, is a link value that means "not yet written":
/// the walk spins until the node holds something else (v0.9.1's PENDING).
#[derive(Debug)]
pub(crate) struct ChainWalk {
    head_addr: u64,
    next: u64,
    max_len: usize,
    yielded: usize,
    node_offset: usize,
    pending: Option<u64>,
    done: bool,
}

impl ChainWalk {
    /// A walk starting at node `first`, that resets nodes to `head_addr`.
    ///
    /// # Safety
    ///
    /// - Every non-zero, 8-byte aligned node reached from `first` whose task address
    ///   (`node - node_offset`) is non-zero and 64-byte aligned, up to `max_len` nodes, is a
    ///   live `AtomicU64` with exposed provenance, inside a task that stays alive, unmoved and
    ///   only atomically accessed until the walk has moved past it.
    /// - If `pending` is set, any node holding it is eventually overwritten by its producer.
    pub(crate) unsafe fn new(
        head_addr: u64,
        first: u64,
        max_len: usize,
        node_offset: usize,
        pending: Option<u64>,
    ) -> Self {
        ChainWalk {
            head_addr,
            next: first,
            max_len,
            yielded: 0,
            node_offset,
            pending,
            done: false,
        }
    }

    /// The next task address, or the error that ends the walk, or `None` at the end.
    pub(crate) fn next_task(&mut self) -> Option<Result<NonZeroUsize, WalkError>> {
        if self.done {
            return None;
        }
        let node = self.next;
        if node == 0 {
            self.done = true;
            return None;
        }
        let r = self.take_node(node);
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }

    fn take_node(&mut self, node: u64) -> Result<NonZeroUsize, WalkError> {
        if node & WORD_ALIGN_MASK != 0 {
            return Err(WalkError::MisalignedNode(node));
        }
        let task = usize::try_from(node)
            .ok()
            .and_then(|n| n.checked_sub(self.node_offset))
            .filter(|&t| t % UMCG_TASK_ALIGN == 0)
            .and_then(NonZeroUsize::new)
            .ok_or(WalkError::MisalignedTask(node))?;
        if self.yielded == self.max_len {
            return Err(WalkError::TooLong {
                max_len: self.max_len,
            });
        }
        // SAFETY: `node` is non-zero, aligned, inside an aligned task and within the first
        // `max_len` nodes: by the constructor's contract a live task field.
        let field = unsafe { atomic_u64_at(node) };
        // Acquire: pairs with the producer's Release store of the final link (v0.9.1); in v0.3
        // the links are already visible through the Acquire exchange of the head.
        let mut link = field.load(Ordering::Acquire);
        if let Some(pending) = self.pending {
            // The producer is between its exchange and its link store: the next node is not
            // known yet. PENDING is not the end of the list.
            while link == pending {
                spin_loop();
                link = field.load(Ordering::Acquire);
            }
        }
        if link == self.head_addr {
            // Reset earlier in this walk (a cycle), or never queued: do not yield it twice.
            return Err(WalkError::Cycle(node));
        }
        // The dual-use reset: the worker points at the head again before anyone may run or
        // push it. Release: pairs with the Acquire load of the field in the next push.
        field.store(self.head_addr, Ordering::Release);
        self.yielded += 1;
        self.next = link;
        Ok(task)
    }
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;
    use crate::consts::UMCG_IDLE_WORKERS_NODE_OFFSET;

    fn worker(head: &IdleWorkerHead) -> Box<UmcgTask> {
        Box::new(UmcgTask::new_worker(0, head.addr()))
    }

    fn addr(t: &UmcgTask) -> usize {
        (t as *const UmcgTask).addr()
    }

    /// Drain `take_all(max_len)`, returning the yielded task addresses and the error, if any.
    fn drain(head: &IdleWorkerHead, max_len: usize) -> (Vec<usize>, Option<WalkError>) {
        let mut got = Vec::new();
        // SAFETY: every test keeps its tasks alive across the walk; corrupted links are
        // misaligned or point at live tasks.
        for item in unsafe { head.take_all(max_len) } {
            match item {
                Ok(t) => got.push(t.as_ptr().addr()),
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    #[test]
    fn node_offset_is_the_abi_offset() {
        assert_eq!(NODE_OFFSET, UMCG_IDLE_WORKERS_NODE_OFFSET);
        let h = IdleWorkerHead::new();
        let w = worker(&h);
        assert_eq!(node_addr_of(&w), w.idle_workers_node());
    }

    #[test]
    fn push_then_take_all_is_lifo_and_resets_fields() {
        let h = IdleWorkerHead::new();
        assert!(h.is_empty());
        let ws: Vec<_> = (0..3).map(|_| worker(&h)).collect();
        assert_eq!(h.push(&ws[0], 4), Ok(WorkerPush::Pushed { attempts: 1 }));
        // SAFETY: ws[1]'s field names `h`, which is alive.
        let r = unsafe { push_worker(&ws[1], 4) };
        assert_eq!(r, Ok(WorkerPush::Pushed { attempts: 1 }));
        assert_eq!(h.push(&ws[2], 1), Ok(WorkerPush::Pushed { attempts: 1 }));
        assert!(!h.is_empty());
        // Queued: each field holds the link to the previously pushed node, 0 at the end.
        assert_eq!(ws[0].idle_workers_ptr.load(Ordering::Relaxed), 0);
        assert_eq!(
            ws[1].idle_workers_ptr.load(Ordering::Relaxed),
            ws[0].idle_workers_node()
        );
        assert_eq!(h.word.load(Ordering::Relaxed), ws[2].idle_workers_node());

        let (got, err) = drain(&h, 8);
        assert_eq!(err, None);
        assert_eq!(got, vec![addr(&ws[2]), addr(&ws[1]), addr(&ws[0])]);
        assert!(h.is_empty());
        for w in &ws {
            assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), h.addr());
        }
        // Reset means pushable again.
        assert_eq!(h.push(&ws[1], 1), Ok(WorkerPush::Pushed { attempts: 1 }));
        assert_eq!(drain(&h, 8), (vec![addr(&ws[1])], None));
        assert_eq!(drain(&h, 8), (vec![], None));
    }

    #[test]
    fn push_rejects_bad_head_addresses_and_writes_nothing() {
        let h = IdleWorkerHead::new();
        let w = worker(&h);
        let node = w.idle_workers_node();
        for (value, expected) in [
            (0, PushError::NullHead),
            (h.addr() | 1, PushError::TaggedHead(h.addr() | 1)),
            (1, PushError::TaggedHead(1)),
            (h.addr() + 4, PushError::MisalignedHead(h.addr() + 4)),
            (node, PushError::SelfLink(node)),
        ] {
            w.idle_workers_ptr.store(value, Ordering::Relaxed);
            // SAFETY: every value is rejected before it is dereferenced.
            assert_eq!(unsafe { push_worker(&w, 4) }, Err(expected));
            assert_eq!(h.push(&w, 4), Err(expected));
            assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), value);
            assert!(h.is_empty());
        }
        let other = IdleWorkerHead::new();
        w.idle_workers_ptr.store(other.addr(), Ordering::Relaxed);
        assert_eq!(
            h.push(&w, 4),
            Err(PushError::WrongHead {
                found: other.addr()
            })
        );
        assert!(h.is_empty() && other.is_empty());
    }

    #[test]
    fn push_rejects_corrupt_head_values() {
        let h = IdleWorkerHead::new();
        let w = worker(&h);
        h.word.store(0x1003, Ordering::Relaxed);
        assert_eq!(
            h.push(&w, 4),
            Err(PushError::CorruptHeadValue {
                head: h.addr(),
                value: 0x1003
            })
        );
        assert_eq!(h.word.load(Ordering::Relaxed), 0x1003);
        assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), h.addr());

        // Queued, then wrongly reset while still at the top: pushing again would self-link.
        h.word.store(0, Ordering::Relaxed);
        assert!(matches!(h.push(&w, 4), Ok(WorkerPush::Pushed { .. })));
        w.idle_workers_ptr.store(h.addr(), Ordering::Relaxed);
        // SAFETY: the field names `h`, which is alive.
        assert_eq!(unsafe { push_worker(&w, 4) }, Err(PushError::AlreadyAtHead));
        assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), h.addr());
        assert_eq!(h.word.load(Ordering::Relaxed), w.idle_workers_node());
    }

    #[test]
    fn push_worker_onto_uses_the_given_head_not_the_field() {
        let h = IdleWorkerHead::new();
        let w = worker(&h);
        let node = w.idle_workers_node();
        // The field changed after the caller read `h`: the push goes where the caller checked,
        // and the field ends as the link.
        w.idle_workers_ptr
            .store(0xdead_0000_0000_0000, Ordering::Relaxed);
        // SAFETY: `h` is alive; the field's value is never dereferenced.
        let r = unsafe { push_worker_onto(&w, h.addr(), 4) };
        assert!(matches!(r, Ok(WorkerPush::Pushed { attempts: 1 })));
        assert_eq!(h.word.load(Ordering::Relaxed), node);
        assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), 0);
        // Malformed heads are refused before any dereference, the field left alone.
        w.idle_workers_ptr.store(h.addr(), Ordering::Relaxed);
        for (bad, e) in [
            (0, PushError::NullHead),
            (h.addr() | 1, PushError::TaggedHead(h.addr() | 1)),
            (h.addr() + 4, PushError::MisalignedHead(h.addr() + 4)),
            (node, PushError::SelfLink(node)),
        ] {
            // SAFETY: rejected before any dereference.
            assert_eq!(unsafe { push_worker_onto(&w, bad, 4) }, Err(e));
            assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), h.addr());
        }
    }

    #[test]
    fn zero_bound_is_contended_and_restores_the_field() {
        let h = IdleWorkerHead::new();
        let w = worker(&h);
        assert_eq!(h.push(&w, 0), Ok(WorkerPush::Contended));
        assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), h.addr());
        assert!(h.is_empty());
        assert_eq!(h.push(&w, 1), Ok(WorkerPush::Pushed { attempts: 1 }));
    }

    #[test]
    fn contention_is_bounded_and_counted() {
        // Two threads race with a bound of 2: every outcome must be `Pushed` within the bound
        // or `Contended` with the field restored (then retried); nothing is lost.
        let h = std::sync::Arc::new(IdleWorkerHead::new());
        let ws: Vec<_> = (0..64).map(|_| worker(&h)).collect();
        let ws = std::sync::Arc::new(ws);
        let mut handles = Vec::new();
        for part in 0..2 {
            let (h, ws) = (h.clone(), ws.clone());
            handles.push(std::thread::spawn(move || {
                let mut pushed = 0;
                for w in ws.iter().skip(part).step_by(2) {
                    loop {
                        match h.push(w, 2) {
                            Ok(WorkerPush::Pushed { attempts }) => {
                                assert!((1..=2).contains(&attempts));
                                pushed += 1;
                                break;
                            }
                            Ok(WorkerPush::Contended) => {
                                assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), h.addr());
                            }
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                }
                pushed
            }));
        }
        let pushed: usize = handles.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(pushed, 64);
        let (mut got, err) = drain(&h, 64);
        assert_eq!(err, None);
        got.sort_unstable();
        let mut want: Vec<_> = ws.iter().map(|w| addr(w)).collect();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn walk_stops_at_misaligned_link() {
        let h = IdleWorkerHead::new();
        let (a, b) = (worker(&h), worker(&h));
        assert!(h.push(&a, 1).is_ok());
        assert!(h.push(&b, 1).is_ok());
        a.idle_workers_ptr.store(0x1001, Ordering::Relaxed);
        let (got, err) = drain(&h, 8);
        assert_eq!(got, vec![addr(&b), addr(&a)]);
        assert_eq!(err, Some(WalkError::MisalignedNode(0x1001)));
        assert_eq!(a.idle_workers_ptr.load(Ordering::Relaxed), h.addr());
        // A misaligned head value is reported the same way, without a dereference.
        h.word.store(0x2004, Ordering::Relaxed);
        assert_eq!(
            drain(&h, 8),
            (vec![], Some(WalkError::MisalignedNode(0x2004)))
        );
        assert!(h.is_empty());
    }

    #[test]
    fn walk_stops_at_node_of_misaligned_task() {
        let h = IdleWorkerHead::new();
        let a = worker(&h);
        assert!(h.push(&a, 1).is_ok());
        // An aligned word that is not at offset 24 of a 64-aligned task: A's idle_servers_ptr
        // (its "task" would start 8 bytes before A).
        let bogus = (addr(&a) + 16) as u64;
        a.idle_workers_ptr.store(bogus, Ordering::Relaxed);
        assert_eq!(
            drain(&h, 8),
            (vec![addr(&a)], Some(WalkError::MisalignedTask(bogus)))
        );
        // A node whose task would be at address 0.
        h.word.store(NODE_OFFSET as u64, Ordering::Relaxed);
        assert_eq!(
            drain(&h, 8),
            (vec![], Some(WalkError::MisalignedTask(NODE_OFFSET as u64)))
        );
    }

    #[test]
    fn walk_detects_cycles_without_duplicates() {
        let h = IdleWorkerHead::new();
        let (a, b) = (worker(&h), worker(&h));
        assert!(h.push(&a, 1).is_ok());
        assert!(h.push(&b, 1).is_ok());
        // b -> a -> b
        a.idle_workers_ptr
            .store(b.idle_workers_node(), Ordering::Relaxed);
        let (got, err) = drain(&h, 100);
        assert_eq!(got, vec![addr(&b), addr(&a)]);
        assert_eq!(err, Some(WalkError::Cycle(b.idle_workers_node())));
        // Both fields reset, so both are pushable again.
        assert!(h.push(&a, 1).is_ok() && h.push(&b, 1).is_ok());
        assert_eq!(drain(&h, 100).1, None);

        // Self-loop.
        assert!(h.push(&a, 1).is_ok());
        a.idle_workers_ptr
            .store(a.idle_workers_node(), Ordering::Relaxed);
        assert_eq!(
            drain(&h, 100),
            (
                vec![addr(&a)],
                Some(WalkError::Cycle(a.idle_workers_node()))
            )
        );

        // A node that was never queued (its field holds the head address).
        let c = worker(&h);
        h.word.store(c.idle_workers_node(), Ordering::Relaxed);
        assert_eq!(
            drain(&h, 100),
            (vec![], Some(WalkError::Cycle(c.idle_workers_node())))
        );
    }

    #[test]
    fn walk_is_capped_at_max_len() {
        let h = IdleWorkerHead::new();
        let ws: Vec<_> = (0..5).map(|_| worker(&h)).collect();
        for w in &ws {
            assert!(h.push(w, 1).is_ok());
        }
        let (got, err) = drain(&h, 3);
        assert_eq!(got, vec![addr(&ws[4]), addr(&ws[3]), addr(&ws[2])]);
        assert_eq!(err, Some(WalkError::TooLong { max_len: 3 }));
        assert!(h.is_empty());
        // The rest is untouched: ws[1] still links to ws[0].
        assert_eq!(
            ws[1].idle_workers_ptr.load(Ordering::Relaxed),
            ws[0].idle_workers_node()
        );
        for w in &ws[2..] {
            assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), h.addr());
        }
        // max_len 0 on a non-empty list yields nothing; on an empty list ends cleanly.
        assert!(h.push(&ws[4], 1).is_ok());
        assert_eq!(
            drain(&h, 0),
            (vec![], Some(WalkError::TooLong { max_len: 0 }))
        );
        assert_eq!(drain(&h, 0), (vec![], None));
    }

    #[test]
    fn iterator_is_fused_after_an_error() {
        let h = IdleWorkerHead::new();
        // v0.9.1's PENDING (1) is no node for a v0.3 walk.
        h.word.store(1, Ordering::Relaxed);
        // SAFETY: the only link is misaligned and never dereferenced.
        let mut it = unsafe { h.take_all(4) };
        assert_eq!(it.next(), Some(Err(WalkError::MisalignedNode(1))));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }
}
