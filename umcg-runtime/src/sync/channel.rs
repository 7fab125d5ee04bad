//! [`channel`]: an unbounded multi-producer single-consumer channel whose blocked receiver
//! parks through its server.
//!
//! # Queue
//!
//! A linked list of blocks of `BLOCK_CAP` = 31 slots, after the design of crossbeam's list
//! flavour (`crossbeam-channel/src/flavors/list.rs`), simplified for one consumer: one
//! allocation per 31 messages (a node per message cost more than half the cycles of a
//! cross-thread stream in malloc and free). Positions count 32 per block (`LAP`); the last
//! one of each lap is a marker that is never a slot. `tail` = `(position << SHIFT) |
//! RX_PARKED` is shared by the senders; the receiver owns `head` (position, block).
//!
//! 1. Send (inside `no_preempt`): load `tail`, then `tail_block` (in that order: the block
//!    is published before the position that enters it). At a marker another sender is
//!    installing the next block: wait for it. Otherwise CAS `tail` one position on,
//!    clearing `RX_PARKED`. The winner owns that slot. The winner of a block's last slot
//!    installs the next block (allocated before its CAS): `tail_block`, then `tail` past the
//!    marker, then the old block's `next`. Then it writes the message and sets the slot's
//!    `written` flag.
//! 2. Receive: `head == tail` (positions): empty. Else the slot at `head` has been claimed;
//!    not `written` yet: a send is between its CAS and its write (`Pop::Retry`, a few
//!    instructions inside the sender's `no_preempt`): the receiver yields and looks again.
//!    Written: move the message out and step `head`; after a block's last slot, step past
//!    the marker to `next` and free the old block.
//!
//! A block is freed by the receiver once it has read all its slots. No sender touches it
//! afterwards: a sender dereferences a block only after its CAS won a slot in it, and the
//! last thing it does there is setting that slot's `written` flag (the installer writes
//! `next` before its own slot).
//!
//! No lock on either path while no receiver waits: a send is one CAS and two stores, a
//! receive a few loads.
//!
//! # Parking the receiver (`RX_PARKED`, bit 0 of `tail`)
//!
//! 1. The receiver finds the queue empty, stores its wake handle in `rx_wake` (a small std
//!    mutex, inside `no_preempt`), then CASes `tail` from `head` to `head | RX_PARKED`. If
//!    that fails, a send claimed a slot: it looks again. No spin first: a bounded spin
//!    (63 pauses, ~0.7 µs) made no measurable difference to `channel_spsc` (29.7 vs
//!    30.6 µs per 1,000 messages), so the receiver parks at once, as the mutex does.
//! 2. It parks until `tail` has no `RX_PARKED`, looping on spurious returns.
//! 3. A sender's slot CAS clears `RX_PARKED` as it claims the slot: publishing and claiming
//!    the wakeup are one atomic operation, so there is no window for a lost wakeup and the
//!    common send pays no fence. The sender that saw the bit writes its message, then wakes
//!    the handle in `rx_wake` (a clone: the receiver overwrites the slot before each
//!    parking, so a late sender at worst wakes a later wait spuriously).
//!
//! # Disconnection
//!
//! `senders` counts live `Sender`s; the last one to drop clears `RX_PARKED` if it is set and
//! wakes the receiver. That pair is "publish, then check the other side" on two words (the
//! receiver sets the bit then reads `senders`; the last sender decrements `senders` then
//! reads `tail`), so both sides put a `fence(SeqCst)` between their write and their read:
//! at least one of them sees the other. `rx_alive` is cleared when the `Receiver` drops;
//! `send` then fails with the value back (a send racing with the drop may succeed and its
//! value is dropped with the channel, as in std).
//!
//! # Memory ordering
//!
//! - `tail_block.store` (Release) comes before the `tail` step past the marker (Release
//!   `fetch_add`); a sender's `tail` load (Acquire) that sees a position in the new lap
//!   therefore loads the new block (or a newer one, and then its CAS fails).
//! - The slot CAS is AcqRel: it orders the claims of the senders and makes the installer's
//!   stores visible to the next sender of the lap.
//! - `written.store(true, Release)` pairs with the receiver's `load(Acquire)`: the message,
//!   and for a last slot the block's `next`, are visible when the receiver reads them.
//! - The receiver's `RX_PARKED` CAS and the senders' slot CASes are RMWs of one word; the
//!   `rx_wake` slot is ordered by its own mutex.
//! - `senders.fetch_sub` is AcqRel and the receiver's `load` Acquire: a receiver that sees
//!   zero sees every write made before the last sender dropped, so its final pop finds
//!   every message. The two `fence(SeqCst)` are described under Disconnection.

use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering, fence};
use std::time::{Duration, Instant};

use crate::kernel::no_preempt;

use super::waiter::{Wake, park_until};

/// Bit 0 of `tail`: the receiver is parked (see the module doc).
const RX_PARKED: usize = 1;
/// Positions are stored shifted past `RX_PARKED`.
const SHIFT: usize = 1;
/// One position, shifted.
const STEP: usize = 1 << SHIFT;
/// Positions per block: `BLOCK_CAP` slots and a marker.
const LAP: usize = 32;
/// Message slots per block.
const BLOCK_CAP: usize = LAP - 1;

/// The offset in its block of the shifted position `index`.
fn offset(index: usize) -> usize {
    (index >> SHIFT) % LAP
}

/// One message slot.
struct Slot<T> {
    msg: UnsafeCell<MaybeUninit<T>>,
    written: AtomicBool,
}

struct Block<T> {
    /// The next block, set by the sender that won this block's last slot.
    next: AtomicPtr<Block<T>>,
    slots: [Slot<T>; BLOCK_CAP],
}

impl<T> Block<T> {
    fn alloc() -> *mut Block<T> {
        // SAFETY: all-zero bytes are a valid `Block`: a null `next`, `written` false and
        // uninitialised messages (`MaybeUninit` in an `UnsafeCell`).
        Box::into_raw(unsafe { Box::<Block<T>>::new_zeroed().assume_init() })
    }
}

/// The result of one look at the queue.
enum Pop<T> {
    Got(T),
    Empty,
    /// The slot at `head` is claimed but not written yet: look again shortly.
    Retry,
}

struct Chan<T> {
    /// Next free position (shifted), with `RX_PARKED`.
    tail: AtomicUsize,
    /// The block of `tail`'s lap.
    tail_block: AtomicPtr<Block<T>>,
    /// The receiver's position (shifted, never a marker) and block; only the receiver (or
    /// the last owner, in `Drop`) touches it.
    head: UnsafeCell<(usize, *mut Block<T>)>,
    senders: AtomicUsize,
    rx_alive: AtomicBool,
    /// How to wake the parked receiver (written by it before each parking).
    rx_wake: std::sync::Mutex<Option<Wake>>,
}

// SAFETY: the channel moves `T`s between threads (hence `T: Send`); a slot's message is
// written by the one sender that won it and read by the receiver after `written`; `head`
// is touched only by the single receiver (`Receiver` is `!Sync`) or the last owner;
// everything else shared is atomic or behind a mutex.
unsafe impl<T: Send> Send for Chan<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send> Sync for Chan<T> {}

impl<T> Chan<T> {
    fn new() -> Self {
        let b = Block::alloc();
        Chan {
            tail: AtomicUsize::new(0),
            tail_block: AtomicPtr::new(b),
            head: UnsafeCell::new((0, b)),
            senders: AtomicUsize::new(1),
            rx_alive: AtomicBool::new(true),
            rx_wake: std::sync::Mutex::new(None),
        }
    }

    /// Append `value`; returns whether the receiver was parked (the caller must wake it).
    fn push(&self, value: T) -> bool {
        let mut next_block: *mut Block<T> = ptr::null_mut();
        let parked = no_preempt(|| {
            let mut spins = 0u32;
            let mut tail = self.tail.load(Ordering::Acquire);
            loop {
                let off = offset(tail);
                if off == BLOCK_CAP {
                    // Another sender is installing the next block (inside its no_preempt).
                    spins += 1;
                    if spins < 16 {
                        std::hint::spin_loop();
                    } else {
                        crate::yield_now();
                    }
                    tail = self.tail.load(Ordering::Acquire);
                    continue;
                }
                let block = self.tail_block.load(Ordering::Acquire);
                if off + 1 == BLOCK_CAP && next_block.is_null() {
                    next_block = Block::alloc();
                }
                // p=>p+1, RX_PARKED=>0
                match self.tail.compare_exchange_weak(
                    tail,
                    (tail + STEP) & !RX_PARKED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        // SAFETY: the CAS won slot `off` of `block` (the block of `tail`'s
                        // lap, module doc): the receiver frees it only after reading that
                        // slot, which needs our `written` below.
                        let b = unsafe { &*block };
                        if off + 1 == BLOCK_CAP {
                            let nb = std::mem::replace(&mut next_block, ptr::null_mut());
                            self.tail_block.store(nb, Ordering::Release);
                            // Past the marker (no RX_PARKED can be set on a marker position).
                            self.tail.fetch_add(STEP, Ordering::Release);
                            b.next.store(nb, Ordering::Release);
                        }
                        let slot = &b.slots[off];
                        // SAFETY: the slot is ours alone until `written` publishes it.
                        unsafe { (*slot.msg.get()).write(value) };
                        slot.written.store(true, Ordering::Release);
                        return tail & RX_PARKED != 0;
                    }
                    Err(now) => tail = now,
                }
            }
        });
        if !next_block.is_null() {
            // Allocated for a boundary another sender crossed first.
            // SAFETY: from `Block::alloc`, never published.
            drop(unsafe { Box::from_raw(next_block) });
        }
        parked
    }

    /// # Safety
    /// - The caller is the single consumer: the `Receiver` (which is `!Sync`, so one
    ///   thread at a time) or the exclusive owner in `Drop`.
    unsafe fn pop(&self) -> Pop<T> {
        // SAFETY: consumer-only field (caller duty).
        let (head, block) = unsafe { *self.head.get() };
        if head >> SHIFT == self.tail.load(Ordering::Acquire) >> SHIFT {
            return Pop::Empty;
        }
        let off = offset(head);
        debug_assert!(off < BLOCK_CAP, "head on a marker");
        // SAFETY: `block` is `head`'s block, live until this function frees it below.
        let b = unsafe { &*block };
        let slot = &b.slots[off];
        if !slot.written.load(Ordering::Acquire) {
            return Pop::Retry;
        }
        // SAFETY: `written` (Acquire) says the message is initialised; it is read once,
        // as `head` moves past it.
        let v = unsafe { (*slot.msg.get()).assume_init_read() };
        let next_head = if off + 1 == BLOCK_CAP {
            // The installer stored `next` before writing this slot.
            let next = b.next.load(Ordering::Acquire);
            debug_assert!(!next.is_null());
            // SAFETY: every slot of `block` has been read; no sender touches it any more
            // (module doc), and it came from `Block::alloc`.
            drop(unsafe { Box::from_raw(block) });
            (head + 2 * STEP, next)
        } else {
            (head + STEP, block)
        };
        // SAFETY: consumer-only field (caller duty).
        unsafe { *self.head.get() = next_head };
        Pop::Got(v)
    }

    fn wake_receiver(&self) {
        no_preempt(|| {
            let w = self
                .rx_wake
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(w) = w {
                w.wake();
            }
        });
    }
}

impl<T> Drop for Chan<T> {
    fn drop(&mut self) {
        let (mut head, mut block) = *self.head.get_mut();
        let tail = *self.tail.get_mut() & !RX_PARKED;
        while head != tail {
            let off = offset(head);
            if off == BLOCK_CAP {
                // SAFETY: `block` is live and owned by the channel; every sender has
                // finished, so its `next` is set.
                let next = *unsafe { &mut *block }.next.get_mut();
                // SAFETY: from `Block::alloc`; nobody references it now.
                drop(unsafe { Box::from_raw(block) });
                block = next;
            } else {
                // SAFETY: positions between head and tail were claimed by senders that have
                // all finished: the message is written and was never read.
                unsafe { (*(*block).slots[off].msg.get()).assume_init_drop() };
            }
            head += STEP;
        }
        // SAFETY: the current block, from `Block::alloc`, owned by the channel.
        drop(unsafe { Box::from_raw(block) });
    }
}

/// Create an unbounded channel: any number of [`Sender`]s (clone it), one [`Receiver`].
///
/// As [`std::sync::mpsc::channel`]; a receiver that waits in a worker parks through its
/// server, in a plain thread with `std::thread::park`. Messages from one sender arrive in
/// the order sent.
///
/// ```
/// let (tx, rx) = umcg_runtime::sync::channel();
/// let tx2 = tx.clone();
/// std::thread::spawn(move || tx2.send(1).unwrap());
/// tx.send(2).unwrap();
/// drop(tx);
/// let mut got: Vec<i32> = rx.iter().collect();
/// got.sort();
/// assert_eq!(got, [1, 2]);
/// ```
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan::new());
    (
        Sender { chan: chan.clone() },
        Receiver {
            chan,
            _not_sync: PhantomData,
        },
    )
}

/// The sending half of a [`channel`]. Clone it for more senders.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Send `value`. Never blocks. Fails, giving the value back, if the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        if !self.chan.rx_alive.load(Ordering::Acquire) {
            return Err(SendError(value));
        }
        if self.chan.push(value) {
            self.chan.wake_receiver();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let c = &*self.chan;
        if c.senders.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // Last sender: wake a parked receiver so it sees the disconnection. SeqCst fence:
        // the decrement must be visible before we look at RX_PARKED (module doc).
        fence(Ordering::SeqCst);
        let t = c.tail.load(Ordering::Relaxed);
        // head|RX_PARKED=>head
        if t & RX_PARKED != 0
            && c.tail
                .compare_exchange(t, t & !RX_PARKED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            c.wake_receiver();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sender { .. }")
    }
}

/// The receiving half of a [`channel`]. `Send` but not `Sync` (one consumer).
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> Receiver<T> {
    /// Take the next message, parking while the channel is empty. Fails once every sender
    /// is gone and the channel is empty.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_until(None).map_err(|_| RecvError)
    }

    /// As [`recv`](Receiver::recv), giving up after `timeout`. On a worker the timed sleep
    /// is a blocking call (`std::thread::park_timeout` inside [`blocking`](crate::blocking)):
    /// its server runs other workers meanwhile.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.recv_until(Some(deadline)),
            None => self.recv().map_err(|_| RecvTimeoutError::Disconnected),
        }
    }

    /// Take the next message if there is one now.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        if let Some(v) = self.pop_settled() {
            return Ok(v);
        }
        if self.chan.senders.load(Ordering::Acquire) == 0 {
            return self.pop_settled().ok_or(TryRecvError::Disconnected);
        }
        Err(TryRecvError::Empty)
    }

    /// An iterator of [`recv`](Receiver::recv) results, ending at disconnection.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// An iterator of the messages available now (ends when the channel is empty).
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }

    /// Pop, retrying while a send is half-way; `None` when empty.
    fn pop_settled(&self) -> Option<T> {
        loop {
            // SAFETY: `self` is the single consumer (`Receiver` is `!Sync`).
            match unsafe { self.chan.pop() } {
                Pop::Got(v) => return Some(v),
                Pop::Empty => return None,
                // The sender is inside `no_preempt` between two stores: let it finish.
                Pop::Retry => crate::yield_now(),
            }
        }
    }

    /// The receiver's position (shifted).
    fn head(&self) -> usize {
        // SAFETY: consumer-only field, and `self` is the single consumer.
        unsafe { (*self.chan.head.get()).0 }
    }

    /// head|RX_PARKED=>head, unless a sender already cleared it.
    fn unmark(&self, head: usize) -> bool {
        self.chan
            .tail
            .compare_exchange(head | RX_PARKED, head, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let c = &*self.chan;
        loop {
            if let Some(v) = self.pop_settled() {
                return Ok(v);
            }
            if c.senders.load(Ordering::Acquire) == 0 {
                // Every send finished before its sender dropped: this pop sees them all.
                return self.pop_settled().ok_or(RecvTimeoutError::Disconnected);
            }
            let wake = match deadline {
                Some(_) => Wake::current_timed(),
                None => Wake::current(),
            };
            no_preempt(|| *c.rx_wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake));
            let head = self.head();
            // head=>head|RX_PARKED (fails if a send claimed a slot since the pop).
            if c.tail
                .compare_exchange(head, head | RX_PARKED, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // SeqCst: RX_PARKED must be visible before we read `senders` (module doc).
            fence(Ordering::SeqCst);
            if c.senders.load(Ordering::Relaxed) == 0 {
                // The last sender may have looked before our RX_PARKED: do not wait for it.
                self.unmark(head);
                continue;
            }
            while c.tail.load(Ordering::Acquire) & RX_PARKED != 0 {
                if !park_until(deadline) {
                    if self.unmark(head) {
                        return Err(RecvTimeoutError::Timeout);
                    }
                    break; // A sender cleared it: a message or the disconnection is here.
                }
            }
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.chan.rx_alive.store(false, Ordering::Release);
        // Drop queued messages now (a send racing with this drop leaves its message to the
        // channel's own drop).
        // SAFETY: `self` is the single consumer.
        while let Pop::Got(v) = unsafe { self.chan.pop() } {
            drop(v);
        }
        *self.chan.rx_wake.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Receiver { .. }")
    }
}

impl<'a, T> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;
    fn into_iter(self) -> IntoIter<T> {
        IntoIter { rx: self }
    }
}

/// Blocking iterator over a borrowed [`Receiver`] (see [`Receiver::iter`]).
#[derive(Debug)]
pub struct Iter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// Non-blocking iterator over a borrowed [`Receiver`] (see [`Receiver::try_iter`]).
#[derive(Debug)]
pub struct TryIter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

/// Blocking iterator over an owned [`Receiver`].
#[derive(Debug)]
pub struct IntoIter<T> {
    rx: Receiver<T>,
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// [`Sender::send`] failed: the receiver is gone. Holds the value that was not sent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SendError<T>(pub T);

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError { .. }")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sending on a channel whose receiver is gone")
    }
}

impl<T> std::error::Error for SendError<T> {}

/// [`Receiver::recv`] failed: every sender is gone and the channel is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvError;

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("receiving on an empty channel whose senders are gone")
    }
}

impl std::error::Error for RecvError {}

/// Why [`Receiver::try_recv`] returned no message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing queued now; senders remain.
    Empty,
    /// Nothing queued and every sender is gone.
    Disconnected,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on an empty channel"),
            TryRecvError::Disconnected => RecvError.fmt(f),
        }
    }
}

impl std::error::Error for TryRecvError {}

/// Why [`Receiver::recv_timeout`] returned no message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// The time ran out; senders remain.
    Timeout,
    /// Nothing queued and every sender is gone.
    Disconnected,
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting on a channel"),
            RecvTimeoutError::Disconnected => RecvError.fmt(f),
        }
    }
}

impl std::error::Error for RecvTimeoutError {}
