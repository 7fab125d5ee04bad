//! Generation C (v0.7 … v0.9.1; spec §4.1, §4.8, §4.9): `struct umcg_task` with the
//! timestamped `state_ts` word, the single idle-server TID slot, and the wait-free
//! idle-worker push with `UMCG_IDLE_NODE_PENDING`.
//!
//! No system calls: where the kernel reads `CLOCK_MONOTONIC`, the caller passes `now_ns`.
//!
//! # Layout (spec §4.1)
//!
//! | offset | field | type |
//! |---:|---|---|
//! | 0 | `state_ts` | u64 |
//! | 8 | `next_tid` | u32 |
//! | 12 | `flags` | u32 (reserved, 0) |
//! | 16 | `idle_workers_ptr` | u64 |
//! | 24 | `idle_server_tid_ptr` | u64 |
//!
//! 64 bytes, 64-byte aligned, bytes 32..63 padding; asserted at compile time outside loom.
//!
//! # The `state_ts` word
//!
//! | bits | content |
//! |---|---|
//! | 0–5 | state: NONE 0, RUNNING 1, IDLE 2, BLOCKED 3 ([`UMCG_TASK_STATE_MASK`]) |
//! | 6, 7 | [`UMCG_TF_LOCKED`], [`UMCG_TF_PREEMPTED`] |
//! | 8–12 | reserved, must be 0 ([`UMCG_TF_RESERVED_MASK`]) |
//! | 13–17 | user space ([`UMCG_UTF_USER_MASK`]; libumcg uses bits 16 and 17) |
//! | 18–63 | 46-bit timestamp in 16 ns units |
//!
//! Timestamp rule (kernel and libumcg alike): every state change is a CAS of the whole word
//! from the expected old word to `(new_state_bits & UMCG_TASK_STATE_MASK_FULL) | ts << 18`,
//! with `ts = (now_ns >> 4) mod 2^46`; if `ts` equals the old word's timestamp it is
//! incremented by one (mod 2^46), so two consecutive words always differ ([`next_state_ts`]).
//! (`UMCG_TASK_STATE_MASK_FULL` was 0x1fff in v0.7/v0.8; this module implements v0.9.1.)
//!
//! # Idle-worker list (spec §4.8)
//!
//! Head word `H` in user space ([`IdleWorkerHeadV09`]); a worker's `idle_workers_ptr` is `&H`
//! while it is not queued and the link to the next queued node while it is. The link may
//! also be [`UMCG_IDLE_NODE_PENDING`] (1, odd, never an address): "next not yet known".
//!
//! Push of worker W (kernel, or libumcg in user space), wait-free ([`push_worker`]):
//! 1. `h = W.idle_workers_ptr` (a plausible head address: non-zero, 8-aligned, untagged, not
//!    W's own node; else [`PushError`]).
//! 2. `W.idle_workers_ptr = PENDING`.
//! 3. `old = XCHG(*h, &W.idle_workers_ptr)`.
//! 4. `W.idle_workers_ptr = old` (0 if the list was empty).
//!
//! Consume (user space, [`IdleWorkerHeadV09::take_all`]): `first = XCHG(H, 0)`; for each
//! node, **spin while it holds PENDING** (its producer is between steps 3 and 4), then read
//! the link, reset the node to `&H`, yield the worker, follow the link. 0 ends the walk.
//! Bad input ends the walk with a [`WalkError`] exactly as in the v0.3 list
//! ([`crate::idle_workers`]): misaligned link, node of a misaligned task, a node already
//! holding `&H` (a cycle), more than `max_len` nodes.
//!
//! The push cannot look at the head before publishing, so it cannot refuse a corrupted head
//! value or a double push the way the v0.3 CAS loop does; the consumer's walk reports both
//! (a double push of a worker whose field was wrongly reset while queued at the top makes a
//! self-loop, reported as [`WalkError::Cycle`]).
//!
//! Hazard (§4.9): a producer that stops between steps 3 and 4 forever leaves PENDING forever,
//! and the consumer spins forever. The spec accepts that (such a failure is a memory error
//! that kills the process); the consumer's `# Safety` contract excludes it.
//!
//! # Idle-server slot (spec §4.8)
//!
//! One `u32` ([`IdleServerSlot`]) holding the TID of at most one idle server; every worker's
//! `idle_server_tid_ptr` is its address. A server parks with a CAS 0→TID
//! ([`IdleServerSlot::offer`]), the kernel takes it with `XCHG(slot, 0)`
//! ([`IdleServerSlot::take`], [`take_idle_server`]), and a server that stops waiting removes
//! its own TID with a CAS TID→0 ([`IdleServerSlot::withdraw`]).
//!
//! # Memory ordering
//!
//! - Push: step 2 is Relaxed (the node is not reachable yet); the exchange of step 3 is
//!   **AcqRel**. Its Release half publishes PENDING (and the worker's earlier writes) and
//!   pairs with the consumer's **Acquire** `XCHG(H, 0)`, which therefore never reads the
//!   node's stale `&H`. Its Acquire half pairs with the Release half of the previous push's
//!   exchange (the one whose node it returns as `old`).
//! - Step 4 is a **Release** store; it pairs with the consumer's **Acquire** loads of the node
//!   while it spins on PENDING. Together with the Acquire half of step 3 this hands the
//!   previous pusher's PENDING on to the consumer: previous push's step 2 → its exchange
//!   (Release) → this exchange (Acquire) → this step 4 (Release) → the consumer's load that
//!   reads `old` (Acquire) → the consumer's load of `old`'s node, which sees PENDING or the
//!   final link, never a stale `&H`. (The exchanges on `H` also form one release sequence,
//!   which gives the same edge a second way.)
//! - The consumer's reset `*node = &H` is **Release** and pairs with the pusher's **Acquire**
//!   load of `h` in step 1.
//! - State words: successful CAS transitions are AcqRel, failures and loads Acquire (as in
//!   [`crate::task`]).
//! - Slot: `offer`, `take` and `withdraw` are AcqRel read-modify-writes on one word, so they
//!   are totally ordered and each synchronises with the one before it. That alone gives the
//!   lost-wake-up argument of §4.8 without a fence: kernel = push W, then `take`; server =
//!   `offer`, then look at `H`. If the kernel's `take` comes after the `offer` it gets the TID;
//!   if it comes before, the `offer` reads the value the `take` wrote (or a later value of
//!   the same RMW chain, so a release sequence headed by the `take`) and acquires the push,
//!   so the server's look at `H` (Acquire) finds W (or finds it already taken by another
//!   consumer). A server that parked with a plain store instead of `offer` would need a
//!   `fence(SeqCst)` before its re-check. (The loom test `slot_handshake` checks
//!   this.)

use core::marker::PhantomData;
use core::mem::offset_of;
use core::ptr::{self, NonNull};

use crate::idle_workers::{ChainWalk, atomic_u64_at, check_head_addr};
pub use crate::idle_workers::{PushError, WalkError};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::task::TaskState;

/// State: not a UMCG task (or unregistered).
pub const UMCG_TASK_NONE: u64 = 0;
/// State: running (a worker with a server, or a server).
pub const UMCG_TASK_RUNNING: u64 = 1;
/// State: waiting to be run.
pub const UMCG_TASK_IDLE: u64 = 2;
/// State: a worker sleeps in the kernel (workers only; also the state a worker registers in).
pub const UMCG_TASK_BLOCKED: u64 = 3;

/// Bits 0–5 of `state_ts`: the state.
pub const UMCG_TASK_STATE_MASK: u64 = 0x3f;
/// Bit 6: worker locked by user space (block and wake detection off).
pub const UMCG_TF_LOCKED: u64 = 0x40;
/// Bit 7: preemption requested (set by user space on a RUNNING worker).
pub const UMCG_TF_PREEMPTED: u64 = 0x80;
/// Bits 6–7: the state flags (name ours; the kernel spells out the two flags).
pub const UMCG_TF_FLAGS_MASK: u64 = UMCG_TF_LOCKED | UMCG_TF_PREEMPTED;
/// Bits 8–12: reserved, must be 0 (name ours).
pub const UMCG_TF_RESERVED_MASK: u64 = 0x1f00;
/// Bits 13–17: free for user space (name ours).
pub const UMCG_UTF_USER_MASK: u64 = 0x3_e000;
/// libumcg user bit 16: an IDLE worker sleeping in `umcg_wait`, not sitting on the idle list.
pub const UMCG_UTF_WORKER_IN_WAIT: u64 = 0x1_0000;
/// libumcg user bit 17: a wake-up arrived while the task was running.
pub const UMCG_UTF_WAKEUP_QUEUED: u64 = 0x2_0000;
/// Bits 0–17: everything but the timestamp (0x1fff in v0.7/v0.8).
pub const UMCG_TASK_STATE_MASK_FULL: u64 = 0x3_ffff;
/// Width of the timestamp in bits 18–63.
pub const UMCG_STATE_TIMESTAMP_BITS: u32 = 46;
/// The timestamp counts `2^4` ns units: `ts = now_ns >> 4`.
pub const UMCG_STATE_TIMESTAMP_GRANULARITY: u32 = 4;
/// Where the timestamp starts: `64 - UMCG_STATE_TIMESTAMP_BITS` (derived, not a kernel name).
pub const UMCG_STATE_TIMESTAMP_SHIFT: u32 = 64 - UMCG_STATE_TIMESTAMP_BITS;
/// The largest timestamp, `2^46 - 1`, as a mask of an unshifted timestamp (derived).
pub const UMCG_STATE_TIMESTAMP_MAX: u64 = (1 << UMCG_STATE_TIMESTAMP_BITS) - 1;

/// Idle-worker node value "next not yet known": a push is between its exchange and its link
/// store. Odd, so never a node address.
pub const UMCG_IDLE_NODE_PENDING: u64 = 1;

/// `umcg_ctl` flag: register the calling thread.
pub const UMCG_CTL_REGISTER: u32 = 0x00001;
/// `umcg_ctl` flag: unregister the calling thread (alone, with `self == NULL`).
pub const UMCG_CTL_UNREGISTER: u32 = 0x00002;
/// `umcg_ctl` flag: together with `REGISTER`, register as a worker.
pub const UMCG_CTL_WORKER: u32 = 0x10000;
/// `umcg_wait` flag: wake `next_tid` and return.
pub const UMCG_WAIT_WAKE_ONLY: u32 = 1;
/// `umcg_wait` flag: wake on the current CPU (only with `WAKE_ONLY`).
pub const UMCG_WAIT_WF_CURRENT_CPU: u32 = 2;

/// Offset of `idle_workers_ptr`: an idle-worker node address minus this is the worker's task.
pub const UMCG_IDLE_WORKERS_NODE_OFFSET: usize = 16;

/// Node offset as the compiler lays it out (equal to the constant outside loom).
const NODE_OFFSET: usize = offset_of!(UmcgTaskV09, idle_workers_ptr);

/// `struct umcg_task` of UMCG v0.7 … v0.9.1.
///
/// Construct with [`UmcgTaskV09::new_worker`] or [`UmcgTaskV09::new_server`], which fill the
/// fields as registration expects them.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct UmcgTaskV09 {
    /// State, flags, user bits and timestamp (module doc).
    pub state_ts: AtomicU64,
    /// Context-switch / wake target of `umcg_wait`; a RUNNING worker's server.
    pub next_tid: AtomicU32,
    /// Reserved, must be 0.
    pub flags: AtomicU32,
    /// Worker not queued: address of the idle-worker head word. Queued: the link to the next
    /// node (or [`UMCG_IDLE_NODE_PENDING`] during a push).
    pub idle_workers_ptr: AtomicU64,
    /// Worker: address of the idle-server slot ([`IdleServerSlot`]). Unused by servers.
    pub idle_server_tid_ptr: AtomicU64,
}

#[cfg(not(umcg_loom))]
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<UmcgTaskV09>() == 64);
    assert!(align_of::<UmcgTaskV09>() == crate::consts::UMCG_TASK_ALIGN);
    assert!(offset_of!(UmcgTaskV09, state_ts) == 0);
    assert!(offset_of!(UmcgTaskV09, next_tid) == 8);
    assert!(offset_of!(UmcgTaskV09, flags) == 12);
    assert!(offset_of!(UmcgTaskV09, idle_workers_ptr) == UMCG_IDLE_WORKERS_NODE_OFFSET);
    assert!(offset_of!(UmcgTaskV09, idle_server_tid_ptr) == 24);
    assert!(size_of::<IdleServerSlot>() == 4);
    assert!(size_of::<IdleWorkerHeadV09>() == 8);
};

/// `(now_ns >> 4) mod 2^46`: the timestamp of a state change at `now_ns`.
pub const fn ts_from_ns(now_ns: u64) -> u64 {
    (now_ns >> UMCG_STATE_TIMESTAMP_GRANULARITY) & UMCG_STATE_TIMESTAMP_MAX
}

/// The word that replaces `old_word` in a state change to `new_state_bits` at `now_ns`:
/// `new_state_bits` masked to [`UMCG_TASK_STATE_MASK_FULL`], plus the timestamp of `now_ns`,
/// incremented by one (mod 2^46) if it equals `old_word`'s timestamp.
pub const fn next_state_ts(old_word: u64, new_state_bits: u64, now_ns: u64) -> u64 {
    let mut ts = ts_from_ns(now_ns);
    if ts == timestamp_of(old_word) {
        ts = (ts + 1) & UMCG_STATE_TIMESTAMP_MAX;
    }
    (new_state_bits & UMCG_TASK_STATE_MASK_FULL) | (ts << UMCG_STATE_TIMESTAMP_SHIFT)
}

/// The timestamp (bits 18–63) of a `state_ts` word.
pub const fn timestamp_of(word: u64) -> u64 {
    word >> UMCG_STATE_TIMESTAMP_SHIFT
}

/// The raw state (bits 0–5).
pub const fn state_of(word: u64) -> u64 {
    word & UMCG_TASK_STATE_MASK
}

/// The decoded state (bits 0–5).
pub const fn task_state_of(word: u64) -> TaskState {
    match state_of(word) {
        UMCG_TASK_NONE => TaskState::None,
        UMCG_TASK_RUNNING => TaskState::Running,
        UMCG_TASK_IDLE => TaskState::Idle,
        UMCG_TASK_BLOCKED => TaskState::Blocked,
        // At most 0x3f: fits.
        b => TaskState::Invalid(b as u8),
    }
}

/// The flag bits 6–7 ([`UMCG_TF_LOCKED`], [`UMCG_TF_PREEMPTED`]).
pub const fn flags_of(word: u64) -> u64 {
    word & UMCG_TF_FLAGS_MASK
}

/// The reserved bits 8–12 (non-zero is a contract violation).
pub const fn reserved_of(word: u64) -> u64 {
    word & UMCG_TF_RESERVED_MASK
}

/// The user-space bits 13–17.
pub const fn user_bits_of(word: u64) -> u64 {
    word & UMCG_UTF_USER_MASK
}

impl UmcgTaskV09 {
    /// A task as a worker registers it: `state_ts == BLOCKED` (timestamp 0), `next_tid == 0`,
    /// and the addresses of the idle-worker head word and of the idle-server slot.
    pub fn new_worker(idle_workers_head: u64, idle_server_slot: u64) -> Self {
        Self::with_fields(UMCG_TASK_BLOCKED, idle_workers_head, idle_server_slot)
    }

    /// A task as a server registers it: `state_ts == RUNNING`, everything else zero (set
    /// `idle_workers_ptr` afterwards if wanted; libumcg does).
    pub fn new_server() -> Self {
        Self::with_fields(UMCG_TASK_RUNNING, 0, 0)
    }

    /// A zeroed task (state NONE).
    pub fn zeroed() -> Self {
        Self::with_fields(UMCG_TASK_NONE, 0, 0)
    }

    fn with_fields(state: u64, idle_workers: u64, idle_server_slot: u64) -> Self {
        UmcgTaskV09 {
            state_ts: AtomicU64::new(state),
            next_tid: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            idle_workers_ptr: AtomicU64::new(idle_workers),
            idle_server_tid_ptr: AtomicU64::new(idle_server_slot),
        }
    }

    /// The address of this task's `idle_workers_ptr` field, its idle-worker node. Exposes the
    /// provenance of the whole task, so a consumer may turn the node back into the task.
    pub fn idle_workers_node(&self) -> u64 {
        let base = (self as *const UmcgTaskV09).expose_provenance();
        (base + NODE_OFFSET) as u64
    }

    /// Acquire-load of `state_ts`.
    pub fn load_state_ts(&self) -> u64 {
        self.state_ts.load(Ordering::Acquire)
    }

    /// Release-store of the whole word (only for a task no one else can race with, e.g. one
    /// that is being prepared for registration).
    pub fn store_state_ts(&self, word: u64) {
        self.state_ts.store(word, Ordering::Release);
    }

    /// CAS the whole word from exactly `current` to exactly `new` (AcqRel; Acquire on
    /// failure). Returns the observed word on failure.
    pub fn cas_state_ts(&self, current: u64, new: u64) -> Result<u64, u64> {
        self.state_ts
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    /// Timestamped transition of the state from `from` to `to` at `now_ns`, keeping the flag,
    /// reserved and user bits, retrying while only those bits or the timestamp change.
    ///
    /// Returns the new word, or the observed word whose state is not `from`.
    pub fn transition(&self, from: TaskState, to: TaskState, now_ns: u64) -> Result<u64, u64> {
        let from = u64::from(from.raw()) & UMCG_TASK_STATE_MASK;
        let to = u64::from(to.raw()) & UMCG_TASK_STATE_MASK;
        let mut cur = self.load_state_ts();
        loop {
            if state_of(cur) != from {
                return Err(cur);
            }
            let keep = cur & UMCG_TASK_STATE_MASK_FULL & !UMCG_TASK_STATE_MASK;
            let new = next_state_ts(cur, keep | to, now_ns);
            match self.cas_state_ts(cur, new) {
                Ok(_) => return Ok(new),
                Err(seen) => cur = seen,
            }
        }
    }
}

/// The single idle-server slot of v0.9.1: the TID of one idle server, 0 = none.
///
/// Workers' `idle_server_tid_ptr` holds [`IdleServerSlot::addr`]. It must not move while any
/// worker points at it.
#[repr(C)]
#[derive(Debug)]
pub struct IdleServerSlot {
    tid: AtomicU32,
}

impl Default for IdleServerSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleServerSlot {
    /// An empty slot.
    pub fn new() -> Self {
        IdleServerSlot {
            tid: AtomicU32::new(0),
        }
    }

    /// The address of the slot (exposing its provenance), for `idle_server_tid_ptr`.
    pub fn addr(&self) -> u64 {
        (&self.tid as *const AtomicU32).expose_provenance() as u64
    }

    /// The TID in the slot at this instant (Acquire), 0 = none.
    pub fn peek(&self) -> u32 {
        self.tid.load(Ordering::Acquire)
    }

    /// A server parks: CAS 0→`tid`. False if another server holds the slot, or `tid == 0`
    /// (which means "none" and cannot be offered).
    pub fn offer(&self, tid: u32) -> bool {
        // EMPTY=>tid. AcqRel: see the module's memory-ordering note.
        tid != 0
            && self
                .tid
                .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// The kernel takes the idle server: `XCHG(slot, 0)`; `None` if the slot was empty.
    pub fn take(&self) -> Option<u32> {
        // tid=>EMPTY (or EMPTY=>EMPTY). AcqRel: see the module's memory-ordering note.
        match self.tid.swap(0, Ordering::AcqRel) {
            0 => None,
            tid => Some(tid),
        }
    }

    /// A server that stops waiting removes itself: CAS `tid`→0. False if the slot holds
    /// something else (it was taken, or never held `tid`) or `tid == 0`.
    pub fn withdraw(&self, tid: u32) -> bool {
        // tid=>EMPTY.
        tid != 0
            && self
                .tid
                .compare_exchange(tid, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// Why [`take_idle_server`] could not use a worker's `idle_server_tid_ptr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError {
    /// `idle_server_tid_ptr` is 0 (the kernel kills the worker).
    NullSlot,
    /// `idle_server_tid_ptr` is not 4-byte aligned.
    MisalignedSlot(u64),
}

/// The kernel's `XCHG(*W.idle_server_tid_ptr, 0)` (§4.5 step 7): the idle server's TID, if
/// one was parked.
///
/// # Safety
///
/// - If `worker.idle_server_tid_ptr` holds a non-zero, 4-byte aligned value, it is the
///   address of a live `AtomicU32` slot whose provenance was exposed (as
///   [`IdleServerSlot::addr`] does), alive and only atomically accessed for the call.
pub unsafe fn take_idle_server(worker: &UmcgTaskV09) -> Result<Option<u32>, SlotError> {
    let p = worker.idle_server_tid_ptr.load(Ordering::Acquire);
    if p == 0 {
        return Err(SlotError::NullSlot);
    }
    if p & 3 != 0 {
        return Err(SlotError::MisalignedSlot(p));
    }
    let slot = ptr::with_exposed_provenance::<AtomicU32>(p as usize);
    // SAFETY: `p` is non-zero and aligned; the caller guarantees a live, exposed slot there.
    let slot = unsafe { &*slot };
    // AcqRel: as `IdleServerSlot::take`.
    Ok(match slot.swap(0, Ordering::AcqRel) {
        0 => None,
        tid => Some(tid),
    })
}

/// Steps 2–4 of the push onto `head`. Returns the previous head value.
fn push_pending(head: &AtomicU64, node: &AtomicU64, node_addr: u64) -> u64 {
    // Step 2. Relaxed: the node is unreachable until the exchange publishes it.
    node.store(UMCG_IDLE_NODE_PENDING, Ordering::Relaxed);
    // Step 3. AcqRel: Release publishes PENDING to the consumer's Acquire exchange.
    let old = head.swap(node_addr, Ordering::AcqRel);
    // Step 4. Release: pairs with the consumer's Acquire loads while it spins on PENDING.
    node.store(old, Ordering::Release);
    old
}

/// The wait-free push of `worker` onto the head its `idle_workers_ptr` names (§4.8).
///
/// Returns the previous head value (the link now stored in the worker's node, 0 if the list
/// was empty), or a [`PushError`] for a bad head address in the worker's field (`NullHead`,
/// `TaggedHead` — PENDING included —, `MisalignedHead`, `SelfLink`), in which case nothing
/// was written.
///
/// A worker is pushed by one thread at a time; two concurrent pushes of one worker would
/// corrupt its link (a logic error the walk reports, not a memory-safety one).
///
/// # Safety
///
/// - If `worker.idle_workers_ptr` holds a non-zero, 8-byte aligned value other than the
///   worker's own node address, that value is the address of a live `AtomicU64` head word
///   whose provenance was exposed (as [`IdleWorkerHeadV09::addr`] does), alive and only
///   atomically accessed for the duration of the call.
pub unsafe fn push_worker(worker: &UmcgTaskV09) -> Result<u64, PushError> {
    let node_addr = worker.idle_workers_node();
    // Step 1. Acquire: pairs with the consumer's Release reset of this field.
    let h = worker.idle_workers_ptr.load(Ordering::Acquire);
    check_head_addr(h, node_addr)?;
    // SAFETY: `h` is non-zero, aligned and not the worker's node: by the caller's contract a
    // live, exposed head word for the duration of the call.
    let head = unsafe { atomic_u64_at(h) };
    Ok(push_pending(head, &worker.idle_workers_ptr, node_addr))
}

/// A v0.9.1 idle-worker head word, owned by user space.
///
/// It must not move while any worker points at it.
#[repr(C)]
#[derive(Debug)]
pub struct IdleWorkerHeadV09 {
    word: AtomicU64,
}

impl Default for IdleWorkerHeadV09 {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleWorkerHeadV09 {
    /// An empty list.
    pub fn new() -> Self {
        IdleWorkerHeadV09 {
            word: AtomicU64::new(0),
        }
    }

    /// The address of the head word (exposing its provenance): the value of a worker's
    /// `idle_workers_ptr` while it is not queued.
    pub fn addr(&self) -> u64 {
        (&self.word as *const AtomicU64).expose_provenance() as u64
    }

    /// Whether the list is empty at this instant (Acquire load).
    pub fn is_empty(&self) -> bool {
        self.word.load(Ordering::Acquire) == 0
    }

    /// The wait-free push of [`push_worker`] onto this head; the worker's field must hold
    /// [`IdleWorkerHeadV09::addr`] (else [`PushError::WrongHead`], after the generic checks).
    ///
    /// Safe because it dereferences only this head and the worker; the consumer's
    /// [`IdleWorkerHeadV09::take_all`] carries the obligation that pushed workers stay alive.
    pub fn push(&self, worker: &UmcgTaskV09) -> Result<u64, PushError> {
        let node_addr = worker.idle_workers_node();
        // Step 1. Acquire: pairs with the consumer's Release reset of this field.
        let h = worker.idle_workers_ptr.load(Ordering::Acquire);
        check_head_addr(h, node_addr)?;
        if h != self.addr() {
            return Err(PushError::WrongHead { found: h });
        }
        Ok(push_pending(
            &self.word,
            &worker.idle_workers_ptr,
            node_addr,
        ))
    }

    /// Take the whole list (`XCHG(H, 0)`, Acquire) and return an iterator that walks it:
    /// for each node it spins while the node holds PENDING, then resets the node to
    /// [`IdleWorkerHeadV09::addr`] and yields the worker.
    ///
    /// At most `max_len` workers are yielded; a longer chain (or a cycle) ends with a
    /// [`WalkError`]. Workers not yet yielded when the iterator is dropped stay off the list,
    /// so drain the iterator.
    ///
    /// # Safety
    ///
    /// - Every non-zero, aligned link reachable from the head (up to `max_len` nodes) is the
    ///   `idle_workers_ptr` field of a live, 64-byte aligned [`UmcgTaskV09`] whose
    ///   provenance was exposed (as [`push_worker`] and [`IdleWorkerHeadV09::push`] do).
    /// - Those tasks stay alive, unmoved and only atomically accessed until the iterator has
    ///   yielded them (or has been dropped).
    /// - Every node that holds [`UMCG_IDLE_NODE_PENDING`] is eventually given its link by
    ///   its producer (otherwise the iterator spins forever, hazard §4.9).
    pub unsafe fn take_all(&self, max_len: usize) -> TakenWorkersV09<'_> {
        // Acquire: pairs with the Release half of every push's exchange.
        let first = self.word.swap(0, Ordering::Acquire);
        TakenWorkersV09 {
            // SAFETY: the chain consists of live task fields whose producers finish their
            // pushes, per this function's contract.
            walk: unsafe {
                ChainWalk::new(
                    self.addr(),
                    first,
                    max_len,
                    NODE_OFFSET,
                    Some(UMCG_IDLE_NODE_PENDING),
                )
            },
            _head: PhantomData,
        }
    }
}

/// The workers taken off an [`IdleWorkerHeadV09`] by [`IdleWorkerHeadV09::take_all`], newest
/// first.
///
/// Yields `Ok(task)` for each worker (its field already reset to the head) and at most one
/// `Err`, after which it ends.
#[derive(Debug)]
#[must_use = "workers taken off the list are lost unless the iterator is drained"]
pub struct TakenWorkersV09<'a> {
    walk: ChainWalk,
    _head: PhantomData<&'a IdleWorkerHeadV09>,
}

impl Iterator for TakenWorkersV09<'_> {
    type Item = Result<NonNull<UmcgTaskV09>, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.walk
            .next_task()
            .map(|r| r.map(NonNull::with_exposed_provenance))
    }
}

impl core::iter::FusedIterator for TakenWorkersV09<'_> {}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;

    const TS: u32 = UMCG_STATE_TIMESTAMP_SHIFT;

    fn worker(head: &IdleWorkerHeadV09) -> Box<UmcgTaskV09> {
        Box::new(UmcgTaskV09::new_worker(head.addr(), 0))
    }

    fn addr(t: &UmcgTaskV09) -> usize {
        (t as *const UmcgTaskV09).addr()
    }

    fn drain(head: &IdleWorkerHeadV09, max_len: usize) -> (Vec<usize>, Option<WalkError>) {
        let mut got = Vec::new();
        // SAFETY: every test keeps its tasks alive across the walk and completes every
        // PENDING node; corrupted links are misaligned or point at live tasks.
        for item in unsafe { head.take_all(max_len) } {
            match item {
                Ok(t) => got.push(t.as_ptr().addr()),
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    fn link(t: &UmcgTaskV09) -> u64 {
        t.idle_workers_ptr.load(Ordering::Relaxed)
    }

    #[test]
    fn constants_have_kernel_values() {
        assert_eq!(
            (
                UMCG_TASK_NONE,
                UMCG_TASK_RUNNING,
                UMCG_TASK_IDLE,
                UMCG_TASK_BLOCKED
            ),
            (0, 1, 2, 3)
        );
        assert_eq!(UMCG_TASK_STATE_MASK, 0x3f);
        assert_eq!((UMCG_TF_LOCKED, UMCG_TF_PREEMPTED), (0x40, 0x80));
        assert_eq!(UMCG_TASK_STATE_MASK_FULL, 0x3ffff);
        assert_eq!(
            (UMCG_STATE_TIMESTAMP_BITS, UMCG_STATE_TIMESTAMP_GRANULARITY),
            (46, 4)
        );
        assert_eq!(
            (UMCG_UTF_WORKER_IN_WAIT, UMCG_UTF_WAKEUP_QUEUED),
            (1 << 16, 1 << 17)
        );
        assert_eq!(UMCG_IDLE_NODE_PENDING, 1);
        assert_eq!(UMCG_TF_RESERVED_MASK, 0b1_1111 << 8);
        assert_eq!(UMCG_UTF_USER_MASK, 0b1_1111 << 13);
        // The parts tile bits 0–17 exactly.
        let parts = [
            UMCG_TASK_STATE_MASK,
            UMCG_TF_FLAGS_MASK,
            UMCG_TF_RESERVED_MASK,
            UMCG_UTF_USER_MASK,
        ];
        assert_eq!(
            parts.iter().fold(0, |a, p| a | p),
            UMCG_TASK_STATE_MASK_FULL
        );
        assert_eq!(parts.iter().map(|p| p.count_ones()).sum::<u32>(), 18);
        assert_eq!(TS, 18);
        assert_eq!(
            (UMCG_CTL_REGISTER, UMCG_CTL_UNREGISTER, UMCG_CTL_WORKER),
            (1, 2, 0x10000)
        );
        assert_eq!((UMCG_WAIT_WAKE_ONLY, UMCG_WAIT_WF_CURRENT_CPU), (1, 2));
    }

    #[test]
    fn field_addresses_match_the_layout() {
        let t = UmcgTaskV09::zeroed();
        let base = addr(&t) as u64;
        assert_eq!(base % 64, 0);
        assert_eq!((&t.next_tid as *const AtomicU32).addr() as u64, base + 8);
        assert_eq!((&t.flags as *const AtomicU32).addr() as u64, base + 12);
        assert_eq!(t.idle_workers_node(), base + 16);
        assert_eq!(
            (&t.idle_server_tid_ptr as *const AtomicU64).addr() as u64,
            base + 24
        );
        let w = UmcgTaskV09::new_worker(0x1000, 0x2004);
        assert_eq!(
            w.load_state_ts() & UMCG_TASK_STATE_MASK_FULL,
            UMCG_TASK_BLOCKED
        );
        assert_eq!(w.idle_server_tid_ptr.load(Ordering::Relaxed), 0x2004);
        assert_eq!(
            task_state_of(UmcgTaskV09::new_server().load_state_ts()),
            TaskState::Running
        );
    }

    #[test]
    fn timestamp_from_ns() {
        assert_eq!(ts_from_ns(0), 0);
        assert_eq!(ts_from_ns(15), 0);
        assert_eq!(ts_from_ns(16), 1);
        assert_eq!(ts_from_ns(1_000_000), 62_500);
        // mod 2^46: 2^50 ns (~13 days) wraps to 0.
        assert_eq!(ts_from_ns(1 << 50), 0);
        assert_eq!(ts_from_ns((1 << 50) + 32), 2);
        assert_eq!(ts_from_ns(u64::MAX), UMCG_STATE_TIMESTAMP_MAX);
    }

    #[test]
    fn next_word_masks_state_and_places_timestamp() {
        let w = next_state_ts(0, u64::MAX, 160);
        assert_eq!(w & UMCG_TASK_STATE_MASK_FULL, UMCG_TASK_STATE_MASK_FULL);
        assert_eq!(timestamp_of(w), 10);
        let w = next_state_ts(0, UMCG_TASK_IDLE | UMCG_TF_LOCKED, 320);
        assert_eq!(w, UMCG_TASK_IDLE | UMCG_TF_LOCKED | (20 << TS));
        assert_eq!(task_state_of(w), TaskState::Idle);
        assert_eq!(flags_of(w), UMCG_TF_LOCKED);
        assert_eq!(timestamp_of(w), 20);
    }

    #[test]
    fn equal_timestamp_is_incremented() {
        let old = UMCG_TASK_RUNNING | (7 << TS);
        // now_ns = 7 * 16 .. 7 * 16 + 15 all give ts 7: incremented to 8.
        for ns in 112..128 {
            assert_eq!(
                next_state_ts(old, UMCG_TASK_BLOCKED, ns),
                UMCG_TASK_BLOCKED | (8 << TS)
            );
        }
        // A different timestamp (earlier or later) is used as is.
        assert_eq!(timestamp_of(next_state_ts(old, 1, 96)), 6);
        assert_eq!(timestamp_of(next_state_ts(old, 1, 128)), 8);
        // The same bits at the same instant still give a different word.
        let a = next_state_ts(old, UMCG_TASK_RUNNING, 112);
        assert_ne!(a, old);
        let b = next_state_ts(a, UMCG_TASK_RUNNING, 112);
        assert_ne!(b, a);
        assert_eq!(timestamp_of(b), 7);
    }

    #[test]
    fn equal_timestamp_wraps_around() {
        let max = UMCG_STATE_TIMESTAMP_MAX;
        let old = UMCG_TASK_IDLE | (max << TS);
        // now_ns whose timestamp is 2^46 - 1: equal, so +1 wraps to 0.
        let ns = max << UMCG_STATE_TIMESTAMP_GRANULARITY;
        assert_eq!(ts_from_ns(ns), max);
        assert_eq!(next_state_ts(old, UMCG_TASK_RUNNING, ns), UMCG_TASK_RUNNING);
        assert_eq!(
            next_state_ts(old, UMCG_TASK_RUNNING, u64::MAX),
            UMCG_TASK_RUNNING
        );
        // Not equal near the top: no wrap.
        assert_eq!(
            timestamp_of(next_state_ts(UMCG_TASK_IDLE, UMCG_TASK_RUNNING, ns)),
            max
        );
    }

    #[test]
    fn rule_guarantees_only_consecutive_words_differ() {
        // Within one 16 ns tick a task can go RUNNING -> IDLE -> RUNNING and get back the
        // very word it started with (an ABA the timestamp does not catch; spec rule as is).
        let w0 = UMCG_TASK_RUNNING | (100 << TS);
        let w1 = next_state_ts(w0, UMCG_TASK_IDLE, 1600);
        let w2 = next_state_ts(w1, UMCG_TASK_RUNNING, 1600);
        assert_eq!(timestamp_of(w1), 101);
        assert_ne!(w0, w1);
        assert_ne!(w1, w2);
        assert_eq!(w2, w0);
    }

    #[test]
    fn accessors() {
        let w =
            UMCG_TASK_BLOCKED | UMCG_TF_PREEMPTED | 0x300 | UMCG_UTF_WAKEUP_QUEUED | (0x1234 << TS);
        assert_eq!(state_of(w), 3);
        assert_eq!(task_state_of(w), TaskState::Blocked);
        assert_eq!(flags_of(w), UMCG_TF_PREEMPTED);
        assert_eq!(reserved_of(w), 0x300);
        assert_eq!(user_bits_of(w), UMCG_UTF_WAKEUP_QUEUED);
        assert_eq!(timestamp_of(w), 0x1234);
        assert_eq!(task_state_of(0x3f), TaskState::Invalid(0x3f));
    }

    #[test]
    fn transition_keeps_bits_and_stamps_time() {
        let t = UmcgTaskV09::new_server();
        let start = UMCG_TASK_RUNNING | UMCG_TF_PREEMPTED | UMCG_UTF_WORKER_IN_WAIT | (5 << TS);
        t.store_state_ts(start);
        let w = t
            .transition(TaskState::Running, TaskState::Blocked, 1600)
            .unwrap();
        assert_eq!(
            w,
            UMCG_TASK_BLOCKED | UMCG_TF_PREEMPTED | UMCG_UTF_WORKER_IN_WAIT | (100 << TS)
        );
        assert_eq!(t.load_state_ts(), w);
        // Wrong source state: the observed word comes back, nothing changes.
        assert_eq!(
            t.transition(TaskState::Running, TaskState::Idle, 3200),
            Err(w)
        );
        assert_eq!(t.load_state_ts(), w);
        // Same instant: the timestamp equals the old one and is bumped, so the word differs.
        let a = t
            .transition(TaskState::Blocked, TaskState::Idle, 1600)
            .unwrap();
        assert_eq!(timestamp_of(a), 101);
        // The rule only compares with the *previous* word: at the same instant again the
        // timestamp (100) differs from 101 and is used as is, so it can go back.
        let b = t
            .transition(TaskState::Idle, TaskState::Idle, 1600)
            .unwrap();
        assert_eq!(timestamp_of(b), 100);
        assert_ne!(b, a);
        // Exact-word CAS against a stale word fails with the current word.
        assert_eq!(t.cas_state_ts(a, 0), Err(b));
    }

    #[test]
    fn slot_offer_take_withdraw() {
        let s = IdleServerSlot::new();
        assert_eq!(s.take(), None);
        assert!(!s.offer(0));
        assert!(s.offer(42));
        assert_eq!(s.peek(), 42);
        assert!(!s.offer(43), "one idle server at a time");
        assert!(!s.withdraw(43));
        assert!(!s.withdraw(0));
        assert_eq!(s.take(), Some(42));
        assert_eq!(s.take(), None);
        assert!(!s.withdraw(42), "already taken by the kernel");
        assert!(s.offer(43));
        assert!(s.withdraw(43));
        assert_eq!(s.peek(), 0);
    }

    #[test]
    fn kernel_take_through_the_worker() {
        let s = IdleServerSlot::new();
        let w = UmcgTaskV09::new_worker(0, s.addr());
        assert!(s.offer(7));
        // SAFETY: the field holds the address of `s`, alive for the call.
        assert_eq!(unsafe { take_idle_server(&w) }, Ok(Some(7)));
        // SAFETY: as above.
        assert_eq!(unsafe { take_idle_server(&w) }, Ok(None));
        w.idle_server_tid_ptr.store(0, Ordering::Relaxed);
        // SAFETY: 0 is rejected before any dereference.
        assert_eq!(unsafe { take_idle_server(&w) }, Err(SlotError::NullSlot));
        w.idle_server_tid_ptr.store(s.addr() + 2, Ordering::Relaxed);
        // SAFETY: misaligned values are rejected before any dereference.
        let r = unsafe { take_idle_server(&w) };
        assert_eq!(r, Err(SlotError::MisalignedSlot(s.addr() + 2)));
    }

    #[test]
    fn push_then_take_all_is_lifo_and_resets_fields() {
        let h = IdleWorkerHeadV09::new();
        let ws: Vec<_> = (0..3).map(|_| worker(&h)).collect();
        assert_eq!(h.push(&ws[0]), Ok(0));
        // SAFETY: the field holds the address of `h`.
        let r = unsafe { push_worker(&ws[1]) };
        assert_eq!(r, Ok(ws[0].idle_workers_node()));
        assert_eq!(h.push(&ws[2]), Ok(ws[1].idle_workers_node()));
        assert_eq!(link(&ws[0]), 0);
        assert_eq!(link(&ws[2]), ws[1].idle_workers_node());
        assert!(!h.is_empty());
        let (got, err) = drain(&h, 8);
        assert_eq!(err, None);
        assert_eq!(got, vec![addr(&ws[2]), addr(&ws[1]), addr(&ws[0])]);
        assert!(h.is_empty());
        for w in &ws {
            assert_eq!(link(w), h.addr());
        }
        assert_eq!(h.push(&ws[0]), Ok(0));
        assert_eq!(drain(&h, 8), (vec![addr(&ws[0])], None));
    }

    #[test]
    fn push_rejects_bad_head_addresses_and_writes_nothing() {
        let h = IdleWorkerHeadV09::new();
        let w = worker(&h);
        let node = w.idle_workers_node();
        for (value, expected) in [
            (0, PushError::NullHead),
            (UMCG_IDLE_NODE_PENDING, PushError::TaggedHead(1)),
            (h.addr() + 2, PushError::MisalignedHead(h.addr() + 2)),
            (node, PushError::SelfLink(node)),
        ] {
            w.idle_workers_ptr.store(value, Ordering::Relaxed);
            // SAFETY: every value is rejected before it is dereferenced.
            assert_eq!(unsafe { push_worker(&w) }, Err(expected));
            assert_eq!(h.push(&w), Err(expected));
            assert_eq!(link(&w), value);
            assert!(h.is_empty());
        }
        let other = IdleWorkerHeadV09::new();
        w.idle_workers_ptr.store(other.addr(), Ordering::Relaxed);
        assert_eq!(
            h.push(&w),
            Err(PushError::WrongHead {
                found: other.addr()
            })
        );
        assert!(h.is_empty() && other.is_empty());
    }

    #[test]
    fn consumer_spins_on_pending_and_never_takes_it_for_the_end() {
        let h = IdleWorkerHeadV09::new();
        let (a, b) = (worker(&h), worker(&h));
        assert!(h.push(&b).is_ok());
        assert!(h.push(&a).is_ok());
        // A's producer is between its exchange and its link store.
        a.idle_workers_ptr
            .store(UMCG_IDLE_NODE_PENDING, Ordering::Relaxed);
        std::thread::scope(|s| {
            let consumer = s.spawn(|| drain(&h, 8));
            // Whenever this lands, the consumer must wait for it and then reach B.
            a.idle_workers_ptr
                .store(b.idle_workers_node(), Ordering::Release);
            assert_eq!(consumer.join().unwrap(), (vec![addr(&a), addr(&b)], None));
        });
        assert_eq!((link(&a), link(&b)), (h.addr(), h.addr()));
    }

    #[test]
    fn walk_reports_bad_chains() {
        let h = IdleWorkerHeadV09::new();
        let ws: Vec<_> = (0..4).map(|_| worker(&h)).collect();
        // Misaligned link (other than PENDING).
        assert!(h.push(&ws[0]).is_ok());
        ws[0].idle_workers_ptr.store(0x1002, Ordering::Relaxed);
        assert_eq!(
            drain(&h, 8),
            (vec![addr(&ws[0])], Some(WalkError::MisalignedNode(0x1002)))
        );
        // A node that is no task's idle_workers_ptr (this is next_tid's word, 8-aligned).
        let bogus = (addr(&ws[1]) + 8) as u64;
        h.word.store(bogus, Ordering::Relaxed);
        assert_eq!(
            drain(&h, 8),
            (vec![], Some(WalkError::MisalignedTask(bogus)))
        );
        // Too long.
        for w in &ws {
            assert!(h.push(w).is_ok());
        }
        assert_eq!(
            drain(&h, 2),
            (
                vec![addr(&ws[3]), addr(&ws[2])],
                Some(WalkError::TooLong { max_len: 2 })
            )
        );
        assert_eq!(link(&ws[1]), ws[0].idle_workers_node(), "rest untouched");
        assert_eq!(drain(&h, 2), (vec![], None));
    }

    #[test]
    fn double_push_after_a_wrong_reset_is_reported_as_a_cycle() {
        let h = IdleWorkerHeadV09::new();
        let a = worker(&h);
        assert!(h.push(&a).is_ok());
        // User space resets A while it is still queued at the top, then it is pushed again:
        // the exchange returns A's own node, and A links to itself.
        a.idle_workers_ptr.store(h.addr(), Ordering::Relaxed);
        assert_eq!(h.push(&a), Ok(a.idle_workers_node()));
        assert_eq!(
            drain(&h, 100),
            (
                vec![addr(&a)],
                Some(WalkError::Cycle(a.idle_workers_node()))
            )
        );
        assert_eq!(link(&a), h.addr());
    }
}
