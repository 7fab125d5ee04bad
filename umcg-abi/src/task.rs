//! `struct umcg_task`, Generation A (v0.3; v0.2 has the same layout), and a typed view of
//! its `state` word.
//!
//! # Layout (spec §2.1)
//!
//! | offset | field | type |
//! |---:|---|---|
//! | 0 | `state` | u32 |
//! | 4 | `api_version` | u32 |
//! | 8 | `server_tid` | u32 |
//! | 12 | `next_tid` | u32 |
//! | 16 | `idle_servers_ptr` | u64 |
//! | 24 | `idle_workers_ptr` | u64 |
//!
//! 64 bytes, 64-byte aligned; bytes 32..63 are tail padding. Every field is an atomic because
//! the emulated kernel and user space both access it concurrently. The layout is asserted at
//! compile time (outside loom, whose atomics are handles of another size).
//!
//! # The state word
//!
//! Bits 0–7 hold the task state ([`UMCG_TASK_NONE`] … [`UMCG_TASK_BLOCKED`]), bits 8–15 the
//! flags ([`UMCG_TF_LOCKED`], the extension [`UMCG_TF_PREEMPTED`]), bits 16–23 are reserved and
//! bits 24–31 belong to user space. [`StateWord`] reads those parts; the transition methods of
//! [`UmcgTask`] change the state byte with a CAS that keeps every other bit, and report the
//! word they observed when the transition was not possible.
//!
//! # Memory ordering
//!
//! A state transition publishes everything its initiator wrote before it (for example
//! `server_tid` before `W:RUNNING`), and whoever observes the new state must see those writes:
//! successful transitions are `AcqRel` (the Release half pairs with the Acquire loads in
//! [`UmcgTask::load_state`] and with the Acquire half of later transitions), failed ones
//! `Acquire`. Plain field accessors that are part of such a handshake are documented at the
//! call sites that rely on them; they use Acquire loads and Release stores.

use crate::consts::*;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// `struct umcg_task` of UMCG v0.3: shared between user space and the (emulated) kernel.
///
/// Construct with [`UmcgTask::new_server`] or [`UmcgTask::new_worker`], which fill the fields
/// as registration expects them.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct UmcgTask {
    /// Task state (bits 0–7), flags (8–15), reserved (16–23) and user bits (24–31).
    pub state: AtomicU32,
    /// Requested API version; only [`UMCG_API_VERSION`] is accepted.
    pub api_version: AtomicU32,
    /// Worker: the server to wake when it blocks, and its default switch target.
    /// Server: its own TID, written by user space after registration.
    pub server_tid: AtomicU32,
    /// The TID `umcg_wait` switches to (or wakes, with `WAKE_ONLY`); 0 = none.
    pub next_tid: AtomicU32,
    /// Worker: address of the idle-server head word. Server on the idle-server list: the
    /// node (address of the next node's field, bit 0 = deleted).
    pub idle_servers_ptr: AtomicU64,
    /// Worker not queued: address of the idle-worker head word. Queued: the link to the next
    /// queued worker's field.
    pub idle_workers_ptr: AtomicU64,
}

#[cfg(not(umcg_loom))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<UmcgTask>() == 64);
    assert!(align_of::<UmcgTask>() == UMCG_TASK_ALIGN);
    assert!(offset_of!(UmcgTask, state) == 0);
    assert!(offset_of!(UmcgTask, api_version) == 4);
    assert!(offset_of!(UmcgTask, server_tid) == 8);
    assert!(offset_of!(UmcgTask, next_tid) == 12);
    assert!(offset_of!(UmcgTask, idle_servers_ptr) == UMCG_IDLE_SERVERS_NODE_OFFSET);
    assert!(offset_of!(UmcgTask, idle_workers_ptr) == UMCG_IDLE_WORKERS_NODE_OFFSET);
};

/// The task-state part of a state word, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// [`UMCG_TASK_NONE`].
    None,
    /// [`UMCG_TASK_RUNNING`].
    Running,
    /// [`UMCG_TASK_IDLE`].
    Idle,
    /// [`UMCG_TASK_BLOCKED`].
    Blocked,
    /// A low byte that names no state (a contract violation when the kernel sees it).
    Invalid(u8),
}

impl TaskState {
    /// The raw low-byte value of this state.
    pub const fn raw(self) -> u32 {
        match self {
            TaskState::None => UMCG_TASK_NONE,
            TaskState::Running => UMCG_TASK_RUNNING,
            TaskState::Idle => UMCG_TASK_IDLE,
            TaskState::Blocked => UMCG_TASK_BLOCKED,
            TaskState::Invalid(b) => b as u32,
        }
    }
}

/// A snapshot of a `state` word with accessors for its parts.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateWord(pub u32);

impl StateWord {
    /// A word holding `state` and nothing else.
    pub const fn from_state(state: TaskState) -> Self {
        StateWord(state.raw())
    }

    /// The raw 32-bit value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The raw state byte (bits 0–7).
    pub const fn state_bits(self) -> u32 {
        self.0 & UMCG_TF_STATE_MASK
    }

    /// The decoded state byte.
    pub const fn state(self) -> TaskState {
        match self.state_bits() {
            UMCG_TASK_NONE => TaskState::None,
            UMCG_TASK_RUNNING => TaskState::Running,
            UMCG_TASK_IDLE => TaskState::Idle,
            UMCG_TASK_BLOCKED => TaskState::Blocked,
            b => TaskState::Invalid(b as u8),
        }
    }

    /// Flag bits 8–15.
    pub const fn flags(self) -> u32 {
        self.0 & UMCG_TF_FLAGS_MASK
    }

    /// Reserved bits 16–23 (non-zero is a contract violation).
    pub const fn reserved(self) -> u32 {
        self.0 & UMCG_TF_RESERVED_MASK
    }

    /// User-space bits 24–31.
    pub const fn user_bits(self) -> u32 {
        self.0 & UMCG_TF_USER_MASK
    }

    /// Whether [`UMCG_TF_LOCKED`] is set.
    pub const fn is_locked(self) -> bool {
        self.0 & UMCG_TF_LOCKED != 0
    }

    /// Whether [`UMCG_TF_PREEMPTED`] is set.
    pub const fn is_preempted(self) -> bool {
        self.0 & UMCG_TF_PREEMPTED != 0
    }

    /// This word with its state byte replaced by `state`, every other bit kept.
    pub const fn with_state(self, state: TaskState) -> Self {
        StateWord((self.0 & !UMCG_TF_STATE_MASK) | (state.raw() & UMCG_TF_STATE_MASK))
    }

    /// This word with `flags` set.
    pub const fn with_flags(self, flags: u32) -> Self {
        StateWord(self.0 | flags)
    }

    /// This word with `flags` cleared.
    pub const fn without_flags(self, flags: u32) -> Self {
        StateWord(self.0 & !flags)
    }
}

impl core::fmt::Debug for StateWord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.state())?;
        if self.is_locked() {
            f.write_str("|LOCKED")?;
        }
        if self.is_preempted() {
            f.write_str("|PREEMPTED")?;
        }
        let other = self.flags() & !(UMCG_TF_LOCKED | UMCG_TF_PREEMPTED);
        if other != 0 {
            write!(f, "|flags({other:#x})")?;
        }
        if self.reserved() != 0 {
            write!(f, "|reserved({:#x})", self.reserved())?;
        }
        if self.user_bits() != 0 {
            write!(f, "|user({:#x})", self.user_bits())?;
        }
        Ok(())
    }
}

impl UmcgTask {
    /// A task as a server registers it: `state == RUNNING`, `api_version == 1`, everything
    /// else zero.
    pub fn new_server() -> Self {
        Self::with_fields(UMCG_TASK_RUNNING, 0, 0)
    }

    /// A task as a worker registers it: `state == IDLE`, `api_version == 1`, and the addresses
    /// of the idle-server head word (0 = no idle-server list) and of the idle-worker head word.
    pub fn new_worker(idle_servers_head: u64, idle_workers_head: u64) -> Self {
        Self::with_fields(UMCG_TASK_IDLE, idle_servers_head, idle_workers_head)
    }

    /// A zeroed task (state NONE), as before any use.
    pub fn zeroed() -> Self {
        let t = Self::with_fields(UMCG_TASK_NONE, 0, 0);
        t.api_version.store(0, Ordering::Relaxed);
        t
    }

    fn with_fields(state: u32, idle_servers: u64, idle_workers: u64) -> Self {
        UmcgTask {
            state: AtomicU32::new(state),
            api_version: AtomicU32::new(UMCG_API_VERSION),
            server_tid: AtomicU32::new(0),
            next_tid: AtomicU32::new(0),
            idle_servers_ptr: AtomicU64::new(idle_servers),
            idle_workers_ptr: AtomicU64::new(idle_workers),
        }
    }

    /// The address of this task's `idle_servers_ptr` field: its node in an idle-server list.
    pub fn idle_servers_node(&self) -> u64 {
        (&self.idle_servers_ptr as *const AtomicU64).expose_provenance() as u64
    }

    /// The address of this task's `idle_workers_ptr` field: its node in an idle-worker list.
    pub fn idle_workers_node(&self) -> u64 {
        (&self.idle_workers_ptr as *const AtomicU64).expose_provenance() as u64
    }

    /// Acquire-load of the state word.
    pub fn load_state(&self) -> StateWord {
        StateWord(self.state.load(Ordering::Acquire))
    }

    /// Release-store of the whole state word (only for the owner of a transition that no one
    /// else can race with, e.g. user space preparing an unregistered task).
    pub fn store_state(&self, word: StateWord) {
        self.state.store(word.0, Ordering::Release);
    }

    /// CAS the whole word from exactly `current` to exactly `new`.
    ///
    /// Returns the observed word on failure. This is the comparison the v0.3 kernel applies
    /// to servers, whose word must be exactly IDLE or RUNNING (hazard H10).
    pub fn cas_word(&self, current: StateWord, new: StateWord) -> Result<StateWord, StateWord> {
        self.state
            .compare_exchange(current.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .map(StateWord)
            .map_err(StateWord)
    }

    /// Change the state byte from `from` to `to`, keeping every other bit, in a single CAS
    /// attempt against `observed` (a word previously loaded).
    ///
    /// Fails with the current word if the word is no longer `observed` or its state is not
    /// `from`. This is the kernel's single-shot CAS (a failure is a contract violation there).
    pub fn transition_once(
        &self,
        observed: StateWord,
        from: TaskState,
        to: TaskState,
    ) -> Result<StateWord, StateWord> {
        if observed.state() != from {
            return Err(observed);
        }
        let new = observed.with_state(to);
        self.cas_word(observed, new)
    }

    /// Change the state byte from `from` to `to`, keeping every other bit, retrying while only
    /// the other bits change concurrently.
    ///
    /// Returns the new word, or the observed word whose state is not `from`.
    pub fn transition(&self, from: TaskState, to: TaskState) -> Result<StateWord, StateWord> {
        let mut cur = self.load_state();
        loop {
            if cur.state() != from {
                return Err(cur);
            }
            let new = cur.with_state(to);
            match self.cas_word(cur, new) {
                Ok(_) => return Ok(new),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Set `flags` on a word whose state is `expected`, keeping the rest; retries while only
    /// other bits change. Returns the new word or the observed word in another state.
    pub fn set_flags_if(&self, expected: TaskState, flags: u32) -> Result<StateWord, StateWord> {
        self.update_if(expected, |w| w.with_flags(flags))
    }

    /// Clear `flags` on a word whose state is `expected`, keeping the rest; retries while only
    /// other bits change. Returns the new word or the observed word in another state.
    pub fn clear_flags_if(&self, expected: TaskState, flags: u32) -> Result<StateWord, StateWord> {
        self.update_if(expected, |w| w.without_flags(flags))
    }

    fn update_if(
        &self,
        expected: TaskState,
        f: impl Fn(StateWord) -> StateWord,
    ) -> Result<StateWord, StateWord> {
        let mut cur = self.load_state();
        loop {
            if cur.state() != expected {
                return Err(cur);
            }
            let new = f(cur);
            match self.cas_word(cur, new) {
                Ok(_) => return Ok(new),
                Err(seen) => cur = seen,
            }
        }
    }
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;

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
        assert_eq!(UMCG_TF_STATE_MASK, 0xff);
        assert_eq!(UMCG_TF_LOCKED, 0x100);
        assert_eq!(UMCG_TF_PREEMPTED, 0x200);
        assert_eq!(
            (UMCG_CTL_REGISTER, UMCG_CTL_UNREGISTER, UMCG_CTL_WORKER),
            (1, 2, 0x10000)
        );
        assert_eq!((UMCG_WAIT_WAKE_ONLY, UMCG_WAIT_WF_CURRENT_CPU), (1, 2));
        assert_eq!(UMCG_API_VERSION, 1);
    }

    #[test]
    fn node_addresses_are_field_addresses() {
        let t = UmcgTask::new_server();
        let base = (&t as *const UmcgTask).expose_provenance() as u64;
        assert_eq!(base % 64, 0);
        assert_eq!(t.idle_servers_node(), base + 16);
        assert_eq!(t.idle_workers_node(), base + 24);
    }

    #[test]
    fn constructors_fill_registration_fields() {
        let s = UmcgTask::new_server();
        assert_eq!(s.load_state().state(), TaskState::Running);
        assert_eq!(s.api_version.load(Ordering::Relaxed), 1);
        let w = UmcgTask::new_worker(0x1000, 0x2000);
        assert_eq!(w.load_state(), StateWord(UMCG_TASK_IDLE));
        assert_eq!(w.idle_servers_ptr.load(Ordering::Relaxed), 0x1000);
        assert_eq!(w.idle_workers_ptr.load(Ordering::Relaxed), 0x2000);
        assert_eq!(UmcgTask::zeroed().load_state().state(), TaskState::None);
    }

    #[test]
    fn state_word_parts() {
        let w = StateWord(UMCG_TASK_BLOCKED | UMCG_TF_LOCKED | 0x0012_0000 | 0xab00_0000);
        assert_eq!(w.state(), TaskState::Blocked);
        assert!(w.is_locked() && !w.is_preempted());
        assert_eq!(w.reserved(), 0x0012_0000);
        assert_eq!(w.user_bits(), 0xab00_0000);
        assert_eq!(StateWord(0x47).state(), TaskState::Invalid(0x47));
        let r = w.with_state(TaskState::Idle);
        assert_eq!(r.bits(), (w.bits() & !0xff) | UMCG_TASK_IDLE);
        assert_eq!(
            format!("{:?}", StateWord(0x0100_0202)),
            "Idle|PREEMPTED|user(0x1000000)"
        );
    }

    #[test]
    fn transitions_keep_other_bits_and_report_observed() {
        let t = UmcgTask::new_server();
        t.store_state(StateWord(
            UMCG_TASK_RUNNING | UMCG_TF_PREEMPTED | 0x7f00_0000,
        ));
        let new = t
            .transition(TaskState::Running, TaskState::Blocked)
            .unwrap();
        assert_eq!(
            new.bits(),
            UMCG_TASK_BLOCKED | UMCG_TF_PREEMPTED | 0x7f00_0000
        );
        assert_eq!(t.load_state(), new);
        // Wrong source state: nothing changes and the observed word comes back.
        assert_eq!(t.transition(TaskState::Running, TaskState::Idle), Err(new));
        assert_eq!(t.load_state(), new);
        // Single-shot CAS against a stale snapshot fails with the current word.
        let stale = StateWord(UMCG_TASK_BLOCKED);
        assert_eq!(
            t.transition_once(stale, TaskState::Blocked, TaskState::Idle),
            Err(new)
        );
        assert!(
            t.transition_once(new, TaskState::Blocked, TaskState::Idle)
                .is_ok()
        );
        // Exact-word CAS (servers, H10): user bits make it fail.
        assert!(
            t.cas_word(StateWord(UMCG_TASK_IDLE), StateWord(UMCG_TASK_RUNNING))
                .is_err()
        );
    }

    #[test]
    fn flag_helpers() {
        let t = UmcgTask::new_worker(0, 8);
        let w = t.set_flags_if(TaskState::Idle, UMCG_TF_LOCKED).unwrap();
        assert!(w.is_locked());
        assert_eq!(
            t.set_flags_if(TaskState::Running, UMCG_TF_PREEMPTED),
            Err(w)
        );
        let w = t.clear_flags_if(TaskState::Idle, UMCG_TF_LOCKED).unwrap();
        assert_eq!(w, StateWord(UMCG_TASK_IDLE));
    }

    #[test]
    fn concurrent_flag_changes_do_not_break_transitions() {
        // A transition retries when only user bits change under it, and never loses them.
        let t = std::sync::Arc::new(UmcgTask::new_server());
        let t2 = t.clone();
        let flipper = std::thread::spawn(move || {
            for i in 0..10_000u32 {
                t2.state.fetch_xor(1 << (24 + (i % 8)), Ordering::AcqRel);
            }
        });
        let mut n = 0;
        for _ in 0..10_000 {
            if t.transition(TaskState::Running, TaskState::Idle).is_ok() {
                n += 1;
                t.transition(TaskState::Idle, TaskState::Running).unwrap();
            }
        }
        flipper.join().unwrap();
        assert_eq!(n, 10_000);
        // 10,000 flips = 1,250 per bit: an even count, so every user bit is back to 0.
        assert_eq!(t.load_state(), StateWord(UMCG_TASK_RUNNING));
    }
}
