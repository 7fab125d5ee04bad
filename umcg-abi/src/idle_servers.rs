//! The v0.3 idle-server list (spec §2.7.1): user space pushes servers, the kernel pops one
//! by *marking* it, user space garbage-collects.
//!
//! # Shape
//!
//! An intrusive singly-linked stack whose nodes are the `idle_servers_ptr` fields of server
//! [`UmcgTask`]s. The head is a separate `u64` word ([`IdleServerList::head_addr`]); workers
//! point at it through their own `idle_servers_ptr`. A node's word holds the address of the
//! next node's field (0 = end). Nodes are 8-byte aligned, so bit 0 of a node address is free:
//! a node is *deleted* (popped) when bit 0 of **its own** link word is set.
//!
//! A node is always in one of four states, told apart by its link word alone:
//!
//! | link word | meaning |
//! |---|---|
//! | `== head_addr` | **reset**: off the list, ready to be pushed (the "dual use" reset value) |
//! | untagged, `!= head_addr` | **live**: on the list (or being pushed, see step P2) |
//! | tagged (bit 0) | **deleted**: popped or removed, maybe still linked, waiting for GC |
//! | anything else | corruption (a tagged head word, a misaligned or foreign node) |
//!
//! # Protocol
//!
//! Push (user space, a server going idle), [`IdleServerList::push`]:
//! 1. P1: the node must be reset (`link == head_addr`); otherwise the caller forgot the
//!    reset (hazard H6) and gets [`PushError::NotReset`].
//! 2. P2: read the head `first`; CAS the node's link from its previous value (`head_addr` on
//!    the first round) to `first`. The CAS, not a store, is what keeps a *stale* popper's
//!    mark: once the link holds a plausible address, a popper that still holds this node's
//!    address from an earlier life may mark it; a store on a retry would erase that mark and
//!    the node would be popped twice. If the CAS fails, the node was claimed during the push:
//!    [`Push::ClaimedWhilePushing`].
//! 3. P3: CAS the head from `first` to the node; on failure go back to P2 with the new head.
//!
//! Pop (the kernel's side, here [`pop_raw`], run by the emulated kernel in the waking thread):
//! 1. K1: `fence(SeqCst)`, then `cur = *head`. A tagged head is corruption.
//! 2. K2: at most `bound` iterations (`2 × nr_cpu_ids` in v0.3; the one that finds the end
//!    counts too, and a restart does not reset the count); then [`Pop::BoundExceeded`]. Each node address is validated before it is dereferenced.
//! 3. K3: `nxt = *cur`. `nxt == head_addr`: the node was collected and reset while we held
//!    its address: restart from the head (this is the re-validation that closes H2).
//!    `nxt` tagged: the node is deleted, go on to `nxt & !1`.
//! 4. K4: CAS `*cur` from `nxt` to `nxt | 1`. Success: `cur` is popped. Failure with a
//!    tagged value: someone else popped it, go on. Failure with an untagged value: the node
//!    was re-pushed with another link; retry it with that link.
//!
//! Collect (user space, [`IdleServerList::gc`]), one collector at a time (a try-lock in the
//! list): walk from the head keeping `prev`; a node whose link is tagged is unlinked by a CAS
//! of `prev`'s link from the node to the node's successor; if `prev` itself turns out
//! tagged (it was popped meanwhile) or a CAS fails, restart from the head.
//!
//! Reclaim ([`IdleServerList::reclaim`]): a server that finds its node deleted takes the
//! collector lock, runs a full collection (after which its marked node is unreachable from
//! the head), and only then resets its link to `head_addr`.
//!
//! # Why H1 (ABA) cannot happen
//!
//! Pop never unlinks; its only write is the mark, a CAS on the popped node's *own* link word
//! from an untagged value. For that CAS to succeed the node's link must hold that untagged
//! value at that instant, which means the node is live (on the list, unmarked) or in step P2
//! of a push. Marking a live node is a correct pop wherever the popper found it; marking a
//! node in P2 is caught by the pusher's CAS (step P2) or leaves the node pushed-and-popped.
//! Either way the node is claimed exactly once per push. Unlinking, where ABA bites a Treiber
//! stack, is done only by the single collector, whose CAS on `prev` expects `cur` and whose
//! `cur` cannot leave and return to that position meanwhile: only the collector unlinks, and
//! a marked link word is frozen until reset (no one CASes a tagged expected value).
//!
//! # Why H2 (GC racing a pop) cannot happen
//!
//! Delisle's race: a popper has read node A's address but not A's link; the collector
//! unlinks A; A is reused; the popper follows A's new link into garbage. Three rules close it:
//! 1. **Nodes outlive every pop that may hold them.** Nodes are only registered server tasks;
//!    their memory is not freed or reused for anything else while a pop may run
//!    ([`IdleServerList::push`]'s safety contract; the emulated kernel enforces it by
//!    validating every node against its registry and by letting a server's unregistration
//!    wait for pops in flight).
//! 2. **A collected node is recognisable.** The reset value is the head address, which is
//!    never a valid link (the head is not a node). A popper that reads it knows the node
//!    left the list under it and restarts from the head (K3) instead of following it.
//!    Between unlink and reset the node's link stays tagged and frozen, so a popper only
//!    walks on to the node's old successor, which is itself a node (rule 1). Chains of such
//!    stale links cannot cycle: each points to a node that was still linked when it was
//!    unlinked, so unlink times strictly increase along the chain.
//! 3. **A popper never returns Empty because of a stale path.** It restarts instead, so the
//!    lost-wakeup argument below holds: nodes pushed before the pop's `fence(SeqCst)` are
//!    found unless they were popped by someone else.
//!
//! # Lost wakeups
//!
//! The kernel: push the worker on the idle-worker list, `fence(SeqCst)`, pop a server. A
//! server going idle: write its state IDLE, push itself here, `fence(SeqCst)`, re-check the
//! idle-worker list, then sleep. The two fences order the two pushes; whichever comes second
//! sees the other: the pop finds the server, or the server finds the worker.
//!
//! # Memory ordering
//!
//! - The node-link CAS in P2 and the head CAS in P3 are `AcqRel`; the Release of P3 publishes
//!   the link written in P2 (and everything the server wrote before pushing, e.g. its IDLE
//!   state) to the Acquire load of the head in K1 and in the collector.
//! - Link loads in K3 and in the collector are Acquire and pair with the Release of P2, of
//!   the collector's unlink CAS, and of the reset store.
//! - The mark CAS in K4 is `AcqRel`: its Acquire makes the popped server's pre-push writes
//!   visible to the popper; its Release orders the popper's earlier writes before the
//!   server observes its node marked (Acquire load in [`IdleServerList::reclaim`]).
//! - `fence(SeqCst)` at K1 is the kernel's barrier of §2.5.2 step 4, the popper's half of the
//!   store-then-check pattern above; [`IdleServerList::push`] does not fence: the server's
//!   protocol issues its own fence between push and re-check.
//! - The collector lock is a test-and-set word: Acquire on take, Release on release.

use core::mem::offset_of;

use crate::sync::{AtomicU32, AtomicU64, Ordering, fence, spin_loop};
use crate::task::UmcgTask;

/// Bit 0 of a link word: the node holding it is deleted.
pub const DELETED: u64 = 1;

/// Offset of the node (`idle_servers_ptr`) in a task. Computed, not the ABI constant 16,
/// because loom's atomics have another size.
const NODE_OFFSET: usize = offset_of!(UmcgTask, idle_servers_ptr);

/// Default cap on the number of links a collection or a scan may follow before it reports
/// [`Corruption::TooLong`] (a cycle, or a list far longer than any set of servers).
pub const DEFAULT_WALK_LIMIT: usize = 1 << 16;

/// What a pop found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pop {
    /// This node was live and is now marked deleted: its server is ours to wake.
    Got(Node),
    /// No live node: every reachable node is deleted, or the list is empty.
    Empty,
    /// `bound` nodes were visited without finding a live one (hazard H4: user-space GC did
    /// not keep up; the v0.3 kernel kills the waking worker).
    BoundExceeded,
    /// The list is corrupt; nothing was changed.
    Corrupt(Corruption),
}

/// Corruption found in shared memory. Never a panic: every walk checks before it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The head word's address is 0.
    NullHead,
    /// The head word's address is not 8-byte aligned.
    MisalignedHead(u64),
    /// The head word itself has bit 0 set (it must never be tagged).
    TaggedHead(u64),
    /// A link names an address that is not the `idle_servers_ptr` field of a 64-byte aligned
    /// task, or that the caller's validator rejected (not a registered server).
    InvalidNode(u64),
    /// A walk followed more links than its limit: a cycle, or an absurdly long list.
    TooLong,
    /// The links from the head run into a cycle; this is the first node of the cycle on the
    /// way from the head (reported by [`find_cycle`], which the emulated kernel runs when a
    /// pop exhausts its bound).
    Cycle(u64),
}

/// The node of a server task: the address of its `idle_servers_ptr` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Node(u64);

impl Node {
    /// The node of `server`.
    pub fn of(server: &UmcgTask) -> Node {
        Node((&server.idle_servers_ptr as *const AtomicU64).expose_provenance() as u64)
    }

    /// The node's address, as stored in link words.
    pub const fn addr(self) -> u64 {
        self.0
    }

    /// Whether `addr` has the shape of a node: non-zero, and the `idle_servers_ptr` field of
    /// a 64-byte aligned task (so `addr % 64 == 16`). Says nothing about what lives there.
    pub fn is_well_formed(addr: u64) -> bool {
        addr != 0
            && addr >= NODE_OFFSET as u64
            && (addr - NODE_OFFSET as u64).is_multiple_of(core::mem::align_of::<UmcgTask>() as u64)
    }

    /// The server task this node belongs to.
    pub fn task(self) -> *const UmcgTask {
        core::ptr::with_exposed_provenance::<UmcgTask>(self.0 as usize - NODE_OFFSET)
    }

    /// The link word.
    ///
    /// # Safety
    /// - The node must be the field of a live [`UmcgTask`] (it was produced from one and the
    ///   task has not been freed).
    unsafe fn word<'a>(self) -> &'a AtomicU64 {
        // SAFETY: the caller guarantees a live task; the field is an AtomicU64 at this address.
        unsafe { &*core::ptr::with_exposed_provenance::<AtomicU64>(self.0 as usize) }
    }
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The node is on the list (it may already have been popped by the time this returns).
    Pushed,
    /// A popper holding the node's address from an earlier life marked it before it was
    /// linked. The push counts as pushed and popped: that popper got [`Pop::Got`] for it and
    /// owns the claim (it wakes the server). The node is deleted and detached; reclaim it.
    ClaimedWhilePushing,
}

/// Why a push was refused. The list is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The node's link is not the reset value: it is still on a list, or was never reset
    /// after being collected (hazard H6). Holds the link found.
    NotReset(u64),
    /// The head word is tagged.
    Corrupt(Corruption),
}

/// What [`IdleServerList::remove`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remove {
    /// The node was live; now it is deleted. The caller must [`IdleServerList::reclaim`] it.
    Removed,
    /// A popper deleted it first: its server has been claimed (it will be or was woken).
    AlreadyDeleted,
    /// The node is reset: it is not on the list.
    NotOnList,
}

/// What [`IdleServerList::reclaim`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reclaim {
    /// The deleted node was collected and reset; it may be pushed again.
    Reset,
    /// The node was already reset (e.g. claimed by [`IdleServerList::pop_all`]).
    AlreadyReset,
    /// The node is live (not deleted): remove it first. Nothing changed.
    Live,
}

/// Statistics of one collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Deleted nodes unlinked.
    pub unlinked: usize,
    /// Times the walk restarted from the head because `prev` was popped or a CAS lost.
    pub restarts: usize,
}

/// Outcome of [`IdleServerList::gc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gc {
    /// A full collection ran.
    Done(GcStats),
    /// Another collector holds the lock; nothing was done.
    Busy,
    /// The walk found corruption or exceeded its limit; links unlinked before that stay
    /// unlinked.
    Corrupt(Corruption, GcStats),
}

/// An idle-server list: the head word the ABI shares, plus the user-space collector lock.
///
/// Workers store [`IdleServerList::head_addr`] in their `idle_servers_ptr`. The list must not
/// move while any task points at it (keep it in a `Box`, an `Arc` or a static).
#[repr(C)]
#[derive(Debug)]
pub struct IdleServerList {
    head: AtomicU64,
    collector: AtomicU32,
}

impl Default for IdleServerList {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleServerList {
    /// An empty list.
    pub fn new() -> Self {
        IdleServerList {
            head: AtomicU64::new(0),
            collector: AtomicU32::new(0),
        }
    }

    /// The address of the head word: the value workers keep in `idle_servers_ptr`, and the
    /// reset value of a node that is off the list.
    pub fn head_addr(&self) -> u64 {
        (&self.head as *const AtomicU64).expose_provenance() as u64
    }

    /// Acquire-load of the raw head word (for diagnostics and tests).
    pub fn head_word(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Store a raw value into the head word (for fault-injection tests only: a tagged or
    /// garbage head must be reported by every walk, never followed blindly).
    #[doc(hidden)]
    pub fn corrupt_head_for_test(&self, value: u64) {
        self.head.store(value, Ordering::Release);
    }

    /// Reset `server`'s node to this list's head address, making it pushable. For a task that
    /// has never been on this list (or has just been created); a node that was on the list
    /// goes through [`IdleServerList::reclaim`] instead.
    pub fn prepare(&self, server: &UmcgTask) {
        server
            .idle_servers_ptr
            .store(self.head_addr(), Ordering::Release);
    }

    /// Push `server` (a server going idle). See the module doc, steps P1–P3.
    ///
    /// # Safety
    /// - `server` stays at this address, alive and used for nothing else, until it has been
    ///   popped or removed, reclaimed, and every pop that may have read its address has
    ///   returned (the emulated kernel guarantees the last point with its registry).
    /// - `server` is not pushed concurrently by another thread.
    pub unsafe fn push(&self, server: &UmcgTask) -> Result<Push, PushError> {
        let head_addr = self.head_addr();
        let node = Node::of(server);
        let word = &server.idle_servers_ptr;
        // P1: the node must be reset.
        let mut link = word.load(Ordering::Acquire);
        if link != head_addr {
            return Err(PushError::NotReset(link));
        }
        let mut first = self.head.load(Ordering::Acquire);
        loop {
            if first & DELETED != 0 {
                return Err(PushError::Corrupt(Corruption::TaggedHead(first)));
            }
            // P2: publish the link by CAS so that a stale popper's mark is never erased.
            if let Err(seen) =
                word.compare_exchange(link, first, Ordering::AcqRel, Ordering::Acquire)
            {
                debug_assert!(seen & DELETED != 0, "only a mark may change a pushing node");
                return Ok(Push::ClaimedWhilePushing);
            }
            link = first;
            // P3: link the node in.
            match self.head.compare_exchange(
                first,
                node.addr(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Push::Pushed),
                Err(seen) => first = seen,
            }
        }
    }

    /// Pop one live server, the way the kernel does (module doc, K1–K4), visiting at most
    /// `bound` nodes. Nodes are validated by shape only; the emulated kernel uses
    /// [`pop_raw`] with its registry as the validator.
    pub fn pop(&self, bound: usize) -> Pop {
        // SAFETY: the head word is ours and live; every node reachable from it was pushed
        // under `push`'s contract, so it is a live task for as long as this pop may hold it.
        unsafe { pop_raw(self.head_addr(), bound, |_| true) }
    }

    /// Mark `server`'s own node deleted (a server leaving the list by itself, e.g. because
    /// its re-check found work). Follow with [`IdleServerList::reclaim`] unless it was
    /// [`Remove::NotOnList`].
    pub fn remove(&self, server: &UmcgTask) -> Remove {
        let head_addr = self.head_addr();
        let word = &server.idle_servers_ptr;
        let mut link = word.load(Ordering::Acquire);
        loop {
            if link == head_addr {
                return Remove::NotOnList;
            }
            if link & DELETED != 0 {
                return Remove::AlreadyDeleted;
            }
            match word.compare_exchange(link, link | DELETED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Remove::Removed,
                Err(seen) => link = seen,
            }
        }
    }

    /// Collect `server`'s deleted node and reset it so it can be pushed again.
    ///
    /// Takes the collector lock (waiting for a running collection to finish), runs a full
    /// collection, after which the node is unreachable from the head, and then stores the
    /// reset value. On corruption the node is left as it is and the error returned.
    pub fn reclaim(&self, server: &UmcgTask) -> Result<Reclaim, Corruption> {
        let head_addr = self.head_addr();
        let word = &server.idle_servers_ptr;
        let link = word.load(Ordering::Acquire);
        if link == head_addr {
            return Ok(Reclaim::AlreadyReset);
        }
        if link & DELETED == 0 {
            return Ok(Reclaim::Live);
        }
        self.lock_collector();
        // SAFETY: we hold the collector lock.
        let result = unsafe { self.collect_locked(DEFAULT_WALK_LIMIT) };
        let out = match result {
            Ok(_) => {
                // Deleted and unlinked: no live link and no future collector walk reaches
                // it; stale poppers that still hold its address will read the reset value
                // and restart (K3).
                word.store(head_addr, Ordering::Release);
                Ok(Reclaim::Reset)
            }
            Err((c, _)) => Err(c),
        };
        self.unlock_collector();
        out
    }

    /// Run one collection if no other collector is running: unlink every deleted node
    /// reachable from the head.
    pub fn gc(&self) -> Gc {
        self.gc_with_limit(DEFAULT_WALK_LIMIT)
    }

    /// [`IdleServerList::gc`] following at most `limit` links (restarts included).
    pub fn gc_with_limit(&self, limit: usize) -> Gc {
        if self
            .collector
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Gc::Busy;
        }
        // SAFETY: we hold the collector lock.
        let out = match unsafe { self.collect_locked(limit) } {
            Ok(stats) => Gc::Done(stats),
            Err((c, stats)) => Gc::Corrupt(c, stats),
        };
        self.unlock_collector();
        out
    }

    /// Detach the whole list and claim every live node on it, calling `f` with each claimed
    /// server after its node has been reset. Nodes that a popper deleted concurrently are not
    /// passed to `f`: their servers were claimed by that popper, and reclaim themselves.
    ///
    /// Returns the number of servers claimed, or the corruption that stopped the walk (the
    /// nodes after it stay detached and unclaimed).
    pub fn pop_all(&self, mut f: impl FnMut(&UmcgTask)) -> Result<usize, Corruption> {
        let head_addr = self.head_addr();
        self.lock_collector();
        let mut cur = self.head.swap(0, Ordering::AcqRel);
        let mut claimed = 0;
        let mut steps = 0;
        let out = loop {
            if cur == 0 {
                break Ok(claimed);
            }
            if steps == DEFAULT_WALK_LIMIT {
                break Err(Corruption::TooLong);
            }
            steps += 1;
            if cur & DELETED != 0 && steps == 1 {
                break Err(Corruption::TaggedHead(cur));
            }
            if !Node::is_well_formed(cur) {
                break Err(Corruption::InvalidNode(cur));
            }
            let node = Node(cur);
            // SAFETY: `node` was reachable from the head; nodes are live tasks (push contract).
            let word = unsafe { node.word() };
            let mut link = word.load(Ordering::Acquire);
            if link == head_addr {
                // Reset during this walk: owners cannot reclaim while we hold the collector
                // lock, so we reset it ourselves earlier: the chain is a cycle.
                break Err(Corruption::TooLong);
            }
            let next = loop {
                if link & DELETED != 0 {
                    // Claimed by a popper; its owner reclaims it.
                    break link & !DELETED;
                }
                match word.compare_exchange(
                    link,
                    link | DELETED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        // Ours: detached (nothing links to it from the head) and marked, so
                        // it can be reset at once.
                        word.store(head_addr, Ordering::Release);
                        claimed += 1;
                        // SAFETY: live task per the push contract.
                        f(unsafe { &*node.task() });
                        break link;
                    }
                    Err(seen) => link = seen,
                }
            };
            cur = next;
        };
        self.unlock_collector();
        out
    }

    /// Whether every node reachable from the head is deleted (true for an empty list).
    pub fn is_empty(&self) -> Result<bool, Corruption> {
        let mut cur = self.head.load(Ordering::Acquire);
        if cur & DELETED != 0 {
            return Err(Corruption::TaggedHead(cur));
        }
        for _ in 0..DEFAULT_WALK_LIMIT {
            if cur == 0 {
                return Ok(true);
            }
            if !Node::is_well_formed(cur) {
                return Err(Corruption::InvalidNode(cur));
            }
            // SAFETY: reachable nodes are live tasks (push contract).
            let link = unsafe { Node(cur).word() }.load(Ordering::Acquire);
            if link == self.head_addr() {
                // Collected under us: the list changed; look again from the head.
                cur = self.head.load(Ordering::Acquire);
                continue;
            }
            if link & DELETED == 0 {
                return Ok(false);
            }
            cur = link & !DELETED;
        }
        Err(Corruption::TooLong)
    }

    /// Count the deleted nodes before the first live one (what a pop must skip), up to
    /// `limit`. For tests and diagnostics.
    pub fn leading_deleted(&self, limit: usize) -> Result<usize, Corruption> {
        let mut cur = self.head.load(Ordering::Acquire);
        let mut n = 0;
        while n < limit && cur != 0 {
            if !Node::is_well_formed(cur) {
                return Err(Corruption::InvalidNode(cur));
            }
            // SAFETY: reachable nodes are live tasks (push contract).
            let link = unsafe { Node(cur).word() }.load(Ordering::Acquire);
            if link & DELETED == 0 {
                break;
            }
            n += 1;
            cur = link & !DELETED;
        }
        Ok(n)
    }

    fn lock_collector(&self) {
        while self
            .collector
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spin_loop();
        }
    }

    fn unlock_collector(&self) {
        self.collector.store(0, Ordering::Release);
    }

    /// One full collection.
    ///
    /// # Safety
    /// - The caller holds the collector lock.
    unsafe fn collect_locked(&self, limit: usize) -> Result<GcStats, (Corruption, GcStats)> {
        let mut stats = GcStats::default();
        let mut steps = 0usize;
        'restart: loop {
            // `prev` is the word whose value is `cur`: the head, or a node's link.
            let mut prev: &AtomicU64 = &self.head;
            let mut prev_is_head = true;
            loop {
                if steps == limit {
                    return Err((Corruption::TooLong, stats));
                }
                steps += 1;
                let cur = prev.load(Ordering::Acquire);
                if cur & DELETED != 0 {
                    if prev_is_head {
                        return Err((Corruption::TaggedHead(cur), stats));
                    }
                    // `prev` was popped under us; its link is frozen. Start over.
                    stats.restarts += 1;
                    continue 'restart;
                }
                if cur == 0 {
                    return Ok(stats);
                }
                if !Node::is_well_formed(cur) {
                    return Err((Corruption::InvalidNode(cur), stats));
                }
                // SAFETY: `cur` is reachable from the head; nodes are live tasks.
                let word = unsafe { Node(cur).word() };
                let nxt = word.load(Ordering::Acquire);
                if nxt & DELETED == 0 {
                    if nxt == self.head_addr() {
                        // Only the collector unlinks, and reset follows unlink: a linked
                        // node cannot be reset. Someone pushed a node without the protocol.
                        return Err((Corruption::InvalidNode(cur), stats));
                    }
                    prev = word;
                    prev_is_head = false;
                    continue;
                }
                // `cur` is deleted: its link is frozen; unlink it from `prev`.
                match prev.compare_exchange(
                    cur,
                    nxt & !DELETED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => stats.unlinked += 1,
                    Err(_) => {
                        // A push moved the head, or `prev` was popped: start over.
                        stats.restarts += 1;
                        continue 'restart;
                    }
                }
            }
        }
    }
}

/// The kernel-side pop of §2.7.1 on a raw head address (module doc, K1–K4).
///
/// `bound` is the number of nodes the pop may visit (v0.3: `2 × nr_cpu_ids`). `valid` is
/// asked about every node address (after the shape check) before it is dereferenced; the
/// emulated kernel answers from its registry of servers.
///
/// # Safety
/// - If `head_addr` is non-zero and 8-byte aligned, it is the address of a live `AtomicU64`
///   head word.
/// - Every address that passes the shape check and `valid` is the `idle_servers_ptr` field
///   of a live [`UmcgTask`] that stays alive until this call returns.
pub unsafe fn pop_raw(head_addr: u64, bound: usize, valid: impl Fn(u64) -> bool) -> Pop {
    if head_addr == 0 {
        return Pop::Corrupt(Corruption::NullHead);
    }
    if !head_addr.is_multiple_of(8) {
        return Pop::Corrupt(Corruption::MisalignedHead(head_addr));
    }
    // SAFETY: non-zero and aligned: a live head word per the caller's contract.
    let head = unsafe { &*core::ptr::with_exposed_provenance::<AtomicU64>(head_addr as usize) };
    // K1: the barrier of §2.5.2 step 4 (the worker's push before the server list is read).
    fence(Ordering::SeqCst);
    let mut visited = 0usize;
    'restart: loop {
        let mut cur = head.load(Ordering::Acquire);
        if cur & DELETED != 0 {
            return Pop::Corrupt(Corruption::TaggedHead(cur));
        }
        loop {
            // K2: the bound counts every iteration of the kernel's loop, the one that finds
            // the end included (as in v0.3), and restarts do not reset it.
            if visited == bound {
                return Pop::BoundExceeded;
            }
            visited += 1;
            if cur == 0 {
                return Pop::Empty;
            }
            if !Node::is_well_formed(cur) || cur == head_addr || !valid(cur) {
                return Pop::Corrupt(Corruption::InvalidNode(cur));
            }
            let node = Node(cur);
            // SAFETY: validated node of a live task (caller's contract).
            let word = unsafe { node.word() };
            // K3.
            let mut nxt = word.load(Ordering::Acquire);
            loop {
                if nxt == head_addr {
                    // Collected and reset while we held its address (H2): restart.
                    continue 'restart;
                }
                if nxt & DELETED != 0 {
                    cur = nxt & !DELETED;
                    break;
                }
                // K4: mark it.
                match word.compare_exchange(nxt, nxt | DELETED, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Pop::Got(node),
                    // Tagged: popped by someone else; untagged: re-pushed with a new link,
                    // so try it again; the head address: reset (next round restarts).
                    Err(seen) => nxt = seen,
                }
            }
        }
    }
}

/// Whether the links from the head word at `head_addr` run into a cycle; if so, the first node
/// of the cycle on the way from the head.
///
/// For a pop that exhausted its bound ([`Pop::BoundExceeded`]): a cycle of deleted nodes and
/// a long run of them (hazard H4, user-space GC did not keep up) both stop the pop, and only
/// this tells them apart. It only reads: Brent's algorithm for the cycle's length, then two
/// walkers that many links apart meet at its first node; each phase follows at most `limit`
/// links. `None` at the end of the list, at a node that is malformed or that `valid` rejects
/// (never dereferenced), at a node that was reset (its link is the head address, K3), at a
/// tagged head, or past `limit`.
///
/// It takes no lock (the kernel's pop takes none either): under concurrent pushes and
/// collections the links it reads may belong to different moments, so the answer is only a
/// diagnosis of a pop that already failed.
///
/// # Safety
/// - As for [`pop_raw`]: a non-zero, 8-byte aligned `head_addr` is a live `AtomicU64` head
///   word, and every address that passes the shape check and `valid` is the
///   `idle_servers_ptr` field of a live [`UmcgTask`] for the duration of the call.
pub unsafe fn find_cycle(head_addr: u64, limit: usize, valid: impl Fn(u64) -> bool) -> Option<u64> {
    if head_addr == 0 || !head_addr.is_multiple_of(8) {
        return None;
    }
    // SAFETY: non-zero and aligned: a live head word per the caller's contract.
    let head = unsafe { &*core::ptr::with_exposed_provenance::<AtomicU64>(head_addr as usize) };
    let next = |cur: u64| -> Option<u64> {
        if cur == 0 || !Node::is_well_formed(cur) || cur == head_addr || !valid(cur) {
            return None;
        }
        // SAFETY: a validated node of a live task (caller's contract).
        let link = unsafe { Node(cur).word() }.load(Ordering::Acquire);
        (link != head_addr).then_some(link & !DELETED)
    };
    let first = head.load(Ordering::Acquire);
    if first & DELETED != 0 {
        return None;
    }
    // Brent: `hare` runs ahead; `tortoise` jumps to it at every power of two. They meet
    // once the power of two reaches the cycle's length `len`.
    let (mut power, mut len) = (1usize, 1usize);
    let mut tortoise = first;
    let mut hare = next(first)?;
    let mut steps = 0;
    while tortoise != hare {
        if steps == limit {
            return None;
        }
        steps += 1;
        if power == len {
            tortoise = hare;
            power *= 2;
            len = 0;
        }
        hare = next(hare)?;
        len += 1;
    }
    // Two walkers `len` links apart meet at the first node of the cycle.
    let (mut a, mut b) = (first, first);
    for _ in 0..len {
        b = next(b)?;
    }
    for _ in 0..=limit {
        if a == b {
            return Some(a);
        }
        a = next(a)?;
        b = next(b)?;
    }
    None
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;

    /// Boxed: each task must keep its address (nodes are field addresses).
    #[allow(clippy::vec_box)]
    fn servers(n: usize) -> Vec<Box<UmcgTask>> {
        (0..n).map(|_| Box::new(UmcgTask::new_server())).collect()
    }

    fn push(list: &IdleServerList, s: &UmcgTask) -> Result<Push, PushError> {
        // SAFETY: tasks are boxed and outlive the list in every test.
        unsafe { list.push(s) }
    }

    fn got(p: Pop) -> Node {
        match p {
            Pop::Got(n) => n,
            other => panic!("expected a node, got {other:?}"),
        }
    }

    #[test]
    fn lifo_push_pop_and_empty() {
        let list = IdleServerList::new();
        let s = servers(3);
        assert_eq!(list.pop(8), Pop::Empty);
        assert_eq!(list.is_empty(), Ok(true));
        for t in &s {
            list.prepare(t);
            assert_eq!(push(&list, t), Ok(Push::Pushed));
        }
        assert_eq!(list.is_empty(), Ok(false));
        for t in s.iter().rev() {
            assert_eq!(got(list.pop(8)), Node::of(t));
        }
        assert_eq!(list.pop(8), Pop::Empty);
        assert_eq!(list.is_empty(), Ok(true));
        // Popped nodes stay linked, marked, until collected.
        assert_eq!(list.leading_deleted(16), Ok(3));
        assert_eq!(
            list.gc(),
            Gc::Done(GcStats {
                unlinked: 3,
                restarts: 0
            })
        );
        assert_eq!(list.head_word(), 0);
    }

    #[test]
    fn pop_never_unlinks_and_skips_marked_nodes() {
        let list = IdleServerList::new();
        let s = servers(2);
        for t in &s {
            list.prepare(t);
            push(&list, t).unwrap();
        }
        let head_before = list.head_word();
        assert_eq!(got(list.pop(8)), Node::of(&s[1]));
        assert_eq!(
            list.head_word(),
            head_before,
            "the kernel side never unlinks"
        );
        assert_eq!(got(list.pop(8)), Node::of(&s[0]));
    }

    #[test]
    fn bound_counts_visited_nodes() {
        let list = IdleServerList::new();
        let s = servers(5);
        for t in &s {
            list.prepare(t);
            push(&list, t).unwrap();
        }
        for _ in 0..4 {
            got(list.pop(8));
        }
        // Four leading deleted nodes: a bound of 4 cannot reach the live fifth.
        assert_eq!(list.pop(4), Pop::BoundExceeded);
        assert_eq!(got(list.pop(5)), Node::of(&s[0]));
        assert_eq!(list.pop(5), Pop::BoundExceeded);
        assert_eq!(list.pop(6), Pop::Empty);
    }

    #[test]
    fn push_requires_reset_node() {
        let list = IdleServerList::new();
        let s = servers(1);
        // Never prepared: link is 0, not the head address.
        assert_eq!(push(&list, &s[0]), Err(PushError::NotReset(0)));
        list.prepare(&s[0]);
        push(&list, &s[0]).unwrap();
        // Pushed twice without a pop: refused (it is live on the list).
        assert!(matches!(push(&list, &s[0]), Err(PushError::NotReset(_))));
        got(list.pop(4));
        // Popped but not reclaimed: refused (H6).
        assert!(matches!(push(&list, &s[0]), Err(PushError::NotReset(l)) if l & 1 == 1));
        assert_eq!(list.reclaim(&s[0]), Ok(Reclaim::Reset));
        assert_eq!(push(&list, &s[0]), Ok(Push::Pushed));
    }

    #[test]
    fn remove_and_reclaim() {
        let list = IdleServerList::new();
        let s = servers(3);
        for t in &s {
            list.prepare(t);
            push(&list, t).unwrap();
        }
        assert_eq!(list.reclaim(&s[1]), Ok(Reclaim::Live));
        assert_eq!(list.remove(&s[1]), Remove::Removed);
        assert_eq!(list.remove(&s[1]), Remove::AlreadyDeleted);
        assert_eq!(list.reclaim(&s[1]), Ok(Reclaim::Reset));
        assert_eq!(list.reclaim(&s[1]), Ok(Reclaim::AlreadyReset));
        assert_eq!(list.remove(&s[1]), Remove::NotOnList);
        // The middle node is gone; the others remain in LIFO order.
        assert_eq!(got(list.pop(8)), Node::of(&s[2]));
        assert_eq!(got(list.pop(8)), Node::of(&s[0]));
        assert_eq!(list.pop(8), Pop::Empty);
    }

    #[test]
    fn pop_all_claims_live_nodes_only_and_resets_them() {
        let list = IdleServerList::new();
        let s = servers(4);
        for t in &s {
            list.prepare(t);
            push(&list, t).unwrap();
        }
        let popped = got(list.pop(8)); // s[3]
        let mut claimed = Vec::new();
        assert_eq!(list.pop_all(|t| claimed.push(Node::of(t))), Ok(3));
        assert_eq!(
            claimed,
            vec![Node::of(&s[2]), Node::of(&s[1]), Node::of(&s[0])]
        );
        assert_eq!(list.head_word(), 0);
        for t in &s[..3] {
            assert_eq!(list.reclaim(t), Ok(Reclaim::AlreadyReset));
        }
        // The popper-claimed node reclaims itself although it is detached.
        assert_eq!(popped, Node::of(&s[3]));
        assert_eq!(list.reclaim(&s[3]), Ok(Reclaim::Reset));
        for t in &s {
            push(&list, t).unwrap();
        }
    }

    #[test]
    fn stale_popper_restarts_on_reset_node() {
        // H2 by hand: the popper's view is frozen at "holds A's address"; A is popped,
        // collected and reset. Reading A's link yields the head address: restart, and the
        // live B behind is still found (a false Empty would lose a wakeup).
        let list = IdleServerList::new();
        let s = servers(2);
        for t in &s {
            list.prepare(t);
            push(&list, t).unwrap();
        }
        let a = Node::of(&s[1]);
        assert_eq!(got(list.pop(8)), a);
        assert_eq!(list.reclaim(&s[1]), Ok(Reclaim::Reset));
        // The stale popper now reads A's link.
        assert_eq!(
            s[1].idle_servers_ptr.load(Ordering::Relaxed),
            list.head_addr()
        );
        // SAFETY: live tasks; a validator that starts the walk at A as a stale popper would.
        let p = unsafe { pop_raw(list.head_addr(), 8, |_| true) };
        assert_eq!(got(p), Node::of(&s[0]));
    }

    #[test]
    fn corruption_is_reported_not_followed() {
        let list = IdleServerList::new();
        let s = servers(1);
        list.prepare(&s[0]);
        push(&list, &s[0]).unwrap();
        let good = list.head_word();
        // Tagged head word.
        list.corrupt_head_for_test(good | 1);
        assert_eq!(list.pop(8), Pop::Corrupt(Corruption::TaggedHead(good | 1)));
        assert!(matches!(
            list.gc(),
            Gc::Corrupt(Corruption::TaggedHead(_), _)
        ));
        assert_eq!(list.is_empty(), Err(Corruption::TaggedHead(good | 1)));
        assert!(matches!(
            push(&list, &s[0]),
            Err(PushError::NotReset(_)) | Err(PushError::Corrupt(_))
        ));
        // A misaligned node address.
        list.corrupt_head_for_test(0x1008);
        assert_eq!(list.pop(8), Pop::Corrupt(Corruption::InvalidNode(0x1008)));
        assert!(matches!(
            list.gc(),
            Gc::Corrupt(Corruption::InvalidNode(0x1008), _)
        ));
        assert_eq!(list.pop_all(|_| {}), Err(Corruption::InvalidNode(0x1008)));
        // A node the validator rejects.
        list.corrupt_head_for_test(good);
        // SAFETY: the head is live; the validator rejects every node before any deref.
        let p = unsafe { pop_raw(list.head_addr(), 8, |_| false) };
        assert_eq!(p, Pop::Corrupt(Corruption::InvalidNode(good)));
        // Null and misaligned head addresses.
        // SAFETY: these addresses are rejected before any dereference.
        unsafe {
            assert_eq!(pop_raw(0, 8, |_| true), Pop::Corrupt(Corruption::NullHead));
            assert_eq!(
                pop_raw(0x1003, 8, |_| true),
                Pop::Corrupt(Corruption::MisalignedHead(0x1003))
            );
        }
    }

    #[test]
    fn cycles_terminate() {
        let list = IdleServerList::new();
        let s = servers(2);
        let (a, b) = (Node::of(&s[0]).addr(), Node::of(&s[1]).addr());
        // A live two-node cycle: pop marks the first node, fine; then an all-marked cycle.
        s[0].idle_servers_ptr.store(b, Ordering::Relaxed);
        s[1].idle_servers_ptr.store(a, Ordering::Relaxed);
        list.corrupt_head_for_test(a);
        got(list.pop(8));
        got(list.pop(8));
        assert_eq!(list.pop(8), Pop::BoundExceeded);
        assert_eq!(list.is_empty(), Err(Corruption::TooLong));
        assert_eq!(list.leading_deleted(100), Ok(100));
        // GC on an all-marked cycle keeps unlinking one node into the head after another:
        // it must stop at its limit, not hang.
        assert!(matches!(
            list.gc_with_limit(1000),
            Gc::Corrupt(Corruption::TooLong, _)
        ));
        // pop_all on a live cycle stops at its limit.
        s[0].idle_servers_ptr.store(b, Ordering::Relaxed);
        s[1].idle_servers_ptr.store(a, Ordering::Relaxed);
        list.corrupt_head_for_test(a);
        let mut n = 0;
        assert_eq!(list.pop_all(|_| n += 1), Err(Corruption::TooLong));
        assert_eq!(n, 2, "each node of the cycle is claimed once");
    }

    #[test]
    fn find_cycle_names_the_first_node_of_a_cycle() {
        let list = IdleServerList::new();
        let s = servers(4);
        let n: Vec<u64> = s.iter().map(|t| Node::of(t).addr()).collect();
        let h = list.head_addr();
        let all = |_| true;
        let find = |limit| {
            // SAFETY: the head is ours; every node is one of the live boxed servers.
            unsafe { find_cycle(h, limit, all) }
        };
        // No cycle: the end, a reset node, an empty list.
        assert_eq!(find(100), None);
        for (t, next) in s.iter().zip([n[1] | DELETED, n[2] | DELETED, 0, 0]) {
            t.idle_servers_ptr.store(next, Ordering::Relaxed);
        }
        list.corrupt_head_for_test(n[0]);
        assert_eq!(find(100), None);
        s[2].idle_servers_ptr.store(h, Ordering::Relaxed);
        assert_eq!(find(100), None);
        // A node linked to itself; a cycle of two; a cycle of three behind a tail of one.
        s[2].idle_servers_ptr
            .store(n[2] | DELETED, Ordering::Relaxed);
        assert_eq!(find(100), Some(n[2]));
        list.corrupt_head_for_test(n[2]);
        assert_eq!(find(100), Some(n[2]));
        s[1].idle_servers_ptr.store(n[0], Ordering::Relaxed);
        list.corrupt_head_for_test(n[0]);
        assert_eq!(find(100), Some(n[0]));
        s[1].idle_servers_ptr.store(n[2], Ordering::Relaxed);
        s[2].idle_servers_ptr
            .store(n[3] | DELETED, Ordering::Relaxed);
        s[3].idle_servers_ptr
            .store(n[1] | DELETED, Ordering::Relaxed);
        assert_eq!(find(100), Some(n[1]));
        // The limit, the validator, and a tagged head end the search.
        assert_eq!(find(1), None);
        // SAFETY: as above.
        assert_eq!(unsafe { find_cycle(h, 100, |a| a != n[3]) }, None);
        list.corrupt_head_for_test(n[0] | DELETED);
        assert_eq!(find(100), None);
        // SAFETY: these head addresses are rejected before any dereference.
        unsafe {
            assert_eq!(find_cycle(0, 100, all), None);
            assert_eq!(find_cycle(h + 4, 100, all), None);
        }
    }

    #[test]
    fn node_shape() {
        let t = UmcgTask::new_server();
        let n = Node::of(&t);
        assert!(Node::is_well_formed(n.addr()));
        assert_eq!(n.task(), &t as *const UmcgTask);
        assert!(!Node::is_well_formed(0));
        assert!(!Node::is_well_formed(8));
        assert!(!Node::is_well_formed(n.addr() + 8));
        assert!(!Node::is_well_formed(n.addr() - 16));
    }
}
