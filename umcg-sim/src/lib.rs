//! `umcg-sim`: synchronous idle-server handoff (UMCG v0.3's tag-bit list) against fd-based
//! idle wakeup (eventfd + epoll), measured on real threads and in a calibrated model.
//!
//! The question (spec §8.2): when a worker unblocks and needs a server, the v0.3 kernel pops
//! an idle server from a lock-free list in user memory and wakes exactly that thread; Delisle
//! asked why idle servers do not simply sleep on an eventfd. This crate measures both, and
//! the variants in between, on the same workload.
//!
//! - This file: the [`IdleWakeup`] trait and one implementation per [`Mechanism`].
//! - [`harness`]: the real-thread workload (servers pinned round-robin, open-loop Poisson
//!   unblock events raised by worker threads), latency in an HDR histogram, CPU time and
//!   context switches from `getrusage`.
//! - [`baseline`]: raw futex / eventfd / epoll ping-pong and "wake one of K" floors.
//! - [`model`]: the calibrated discrete-event simulation and its calibration file.
//! - [`report`]: tables, CSV, JSON and SVG plots.
//! - [`os`]: clocks, `getrusage`, timer slack and machine facts (libc directly:
//!   `umcg_runtime::sys` has no CPU-time clock nor `getrusage`).
//!
//! # The protocol every mechanism implements
//!
//! Waker (the unblocking worker's thread, where the v0.3 kernel ran its wake hook, §2.5.2):
//! 1. push the event on the run queue (the idle-worker list of the real interface);
//! 2. `fence(SeqCst)`;
//! 3. [`IdleWakeup::wake_one`]: find, claim and wake one idle server (or signal an fd).
//!
//! Server, when the run queue is empty, [`IdleWakeup::idle`]:
//! 1. announce itself idle (state IDLE and push itself on the list, offer itself in the
//!    slot, or nothing for a shared fd);
//! 2. `fence(SeqCst)`, re-check the run queue: work found → take itself back and return;
//! 3. sleep until claimed and woken (or until the fd is readable).
//!
//! The two fences make a lost wakeup impossible: whichever side comes second sees the other
//! (the argument of `umcg_abi::idle_servers`, "Lost wakeups"). The fd mechanisms need no
//! fence: the eventfd counter persists, so a write that lands before the server's
//! `epoll_wait` makes that wait return at once.
//!
//! The `list` mechanism reproduces the kernel's wake hook step for step with the umcg-abi
//! list and the umcg-runtime futex wrapper (pop with the `2 × nr_cpu_ids` bound, exactly
//! IDLE→exactly RUNNING, `FUTEX_WAKE` of the state word), rather than registering tasks with
//! the emulated kernel: the kernel's hooks also take its registry lock and validate list heads
//! on every wake, costs that the real kernel does not have and that would be charged to the
//! list alone; and the kernel offers only two of the six mechanisms.
//!
//! # Memory ordering
//!
//! Server states are `UmcgTask::state` words (or padded `AtomicU32`s for the slot): the
//! waker's IDLE→RUNNING CAS is `AcqRel` and pairs with the server's `Acquire` load after its
//! futex wait returns. The `fence(SeqCst)`s are the store-then-check pairs above. The list and
//! the slot carry their own ordering notes in umcg-abi.

// Under `--cfg umcg_loom` only the mechanisms below are built (for
// `tests/loom_mechanisms.rs`); the harness, baselines and the rest wait on real futexes.
#[cfg(not(umcg_loom))]
pub mod baseline;
#[cfg(not(umcg_loom))]
pub mod harness;
#[cfg(not(umcg_loom))]
pub mod model;
#[cfg(not(umcg_loom))]
pub mod os;
#[cfg(not(umcg_loom))]
pub mod report;
#[cfg(not(umcg_loom))]
pub mod soak;

#[cfg(umcg_loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(umcg_loom))]
use std::sync::{Mutex, MutexGuard};

// The mechanisms' atomics are umcg-abi's: std's, or loom's under `--cfg umcg_loom`, so that
// `tests/loom_mechanisms.rs` model-checks the protocols below as they ship.
use umcg_abi::sync::{AtomicU32, Ordering, fence};

use umcg_abi::idle_servers::{IdleServerList, Pop, Push, Reclaim};
use umcg_abi::v0_9::IdleServerSlot;
use umcg_abi::{StateWord, TaskState, UMCG_TASK_IDLE, UMCG_TASK_RUNNING, UmcgTask};
use umcg_runtime::sys::{self, Epoll, EpollEvent, Errno, EventFd};

/// The idle-wakeup mechanisms compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    /// v0.3: pop from the tag-bit list, CAS IDLE→RUNNING, targeted `FUTEX_WAKE`.
    List,
    /// One shared eventfd, every server in its own epoll with `EPOLLEXCLUSIVE`; the waker
    /// writes the fd on every event (Delisle's proposal).
    EpollExclusive,
    /// The server is chosen from the tag-bit list as in v0.3 and woken through its own
    /// eventfd (what the emulated kernel's `IdleWakeup::EventFd` does).
    EventFdPerServer,
    /// One shared eventfd without `EPOLLEXCLUSIVE`: every idle server wakes (the herd).
    Herd,
    /// v0.9.1: one idle-server slot (XCHG with 0), the other idle servers in a user-space
    /// stack, rotated in by the servers themselves (libumcg).
    Slot,
    /// The unblocking worker claims an idle server from the tag-bit list and runs on at once
    /// in its own thread: no wakeup at all (what a synchronous same-CPU switch would give).
    Adopt,
}

impl Mechanism {
    /// Every mechanism, in table order.
    pub const ALL: [Mechanism; 6] = [
        Mechanism::List,
        Mechanism::EpollExclusive,
        Mechanism::EventFdPerServer,
        Mechanism::Herd,
        Mechanism::Slot,
        Mechanism::Adopt,
    ];

    /// The short name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::List => "list",
            Mechanism::EpollExclusive => "epoll-excl",
            Mechanism::EventFdPerServer => "eventfd-per-server",
            Mechanism::Herd => "herd",
            Mechanism::Slot => "slot",
            Mechanism::Adopt => "adopt",
        }
    }

    /// One line saying what it is.
    pub fn describe(self) -> &'static str {
        match self {
            Mechanism::List => "v0.3 tag-bit list pop + IDLE->RUNNING CAS + targeted FUTEX_WAKE",
            Mechanism::EpollExclusive => {
                "shared eventfd written per event, servers in epoll_wait with EPOLLEXCLUSIVE"
            }
            Mechanism::EventFdPerServer => {
                "tag-bit list pop + CAS, then write the chosen server's own eventfd (epoll)"
            }
            Mechanism::Herd => "shared eventfd, epoll without EPOLLEXCLUSIVE (thundering herd)",
            Mechanism::Slot => "v0.9.1 single idle-server slot (XCHG), user-space stack behind it",
            Mechanism::Adopt => "waker claims an idle server and runs the worker itself, no wake",
        }
    }

    /// Parse a [`Mechanism::name`].
    pub fn from_name(s: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// What [`IdleWakeup::wake_one`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// A specific idle server was claimed and woken.
    Woken,
    /// An fd was signalled; whether anyone sleeps on it is the kernel's business.
    Signalled,
    /// No idle server was visible; the event waits in the run queue.
    NoIdle,
    /// A server was claimed but had already left idle by itself (it found the work).
    Raced,
    /// The mechanism failed (corrupt list, a failed system call); counted, never fatal.
    Failed,
}

/// How [`IdleWakeup::idle`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// The re-check after announcing idle found work (or stop); the server never slept.
    Recheck,
    /// The server slept and was woken (or its fd became readable).
    Woken,
    /// The run is stopping.
    Stopped,
}

/// What the server sees of the workload while idle.
pub trait Work: Sync {
    /// The run queue holds at least one event.
    fn pending(&self) -> bool;
    /// The run is over: leave idle for good.
    fn stopping(&self) -> bool;
}

/// One idle-wakeup mechanism: how an idle server is announced, found, claimed and woken.
pub trait IdleWakeup: Send + Sync {
    /// Which mechanism this is.
    fn mechanism(&self) -> Mechanism;

    /// Server `server` found the run queue empty: announce idle, re-check, sleep (module doc,
    /// server steps 1–3). Returns when there may be work, or when stopping.
    fn idle(&self, server: usize, work: &dyn Work) -> Idle;

    /// An event was pushed and fenced: claim and wake one idle server (module doc, waker
    /// step 3).
    fn wake_one(&self) -> Wake;

    /// `Adopt` only: claim an idle server without waking it; the caller runs the worker.
    fn claim(&self) -> Option<usize> {
        None
    }

    /// `Adopt` only: give back a server taken by [`IdleWakeup::claim`] (it is idle again).
    fn release(&self, _server: usize) {}

    /// `Adopt` only: the CPU of `server`, where a claimer runs the worker.
    fn server_cpu(&self, _server: usize) -> Option<usize> {
        None
    }

    /// `Adopt` only: the caller, holding `server` (from [`IdleWakeup::claim`]), hands it to
    /// the server's own thread, which serves the run queue and then releases it (the switch
    /// back to the server when the adopting worker blocks again).
    fn serve(&self, _server: usize) {}

    /// `Adopt` only: the claimer of `server` is done with its own event. If work is queued,
    /// the server's thread takes over ([`IdleWakeup::serve`]); else the server is released,
    /// then the releaser's re-check (`release` fences): work that arrived meanwhile goes to
    /// whichever server a new claim gets.
    fn hand_back(&self, mut server: usize, work: &dyn Work) {
        loop {
            if work.pending() {
                self.serve(server);
                return;
            }
            self.release(server);
            if !work.pending() {
                return;
            }
            match self.claim() {
                Some(s) => server = s,
                None => return,
            }
        }
    }

    /// A server that just woke may pass work on to another (the slot's user-space stack).
    fn after_wake(&self, _server: usize, _work: &dyn Work) {}

    /// Wake every sleeping server so it sees the stop flag (called until all have left).
    fn wake_all(&self);
}

/// What [`server_loop`] reports besides the events it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerNote {
    /// The server woke from a sleep in [`IdleWakeup::idle`].
    Woken,
    /// ... and found nothing to run (a herd loser, a stale fd count, a raced claim).
    Futile,
}

/// The server side of the protocol (module doc, server steps 1–3), as the harness runs it
/// and `tests/loom_mechanisms.rs` model-checks it: run queued events while there are any,
/// else go idle through `m`, until `work` is stopping. `run_next(just_woke)` pops and runs
/// one event and says whether there was one (`just_woke`: the server comes straight out of
/// a wakeup). An `adopt` server runs events only while it holds its token (after `idle`
/// returned Woken or Recheck); every other kind may run them at any time.
pub fn server_loop(
    m: &dyn IdleWakeup,
    server: usize,
    work: &dyn Work,
    mut run_next: impl FnMut(bool) -> bool,
    mut note: impl FnMut(ServerNote),
) {
    let mut holds = m.mechanism() != Mechanism::Adopt;
    let mut just_woke = false;
    loop {
        if holds && run_next(just_woke) {
            just_woke = false;
            continue;
        }
        if just_woke {
            note(ServerNote::Futile);
            just_woke = false;
        }
        if work.stopping() {
            break;
        }
        match m.idle(server, work) {
            Idle::Recheck => holds = true,
            Idle::Woken => {
                note(ServerNote::Woken);
                m.after_wake(server, work);
                just_woke = true;
                holds = true;
            }
            Idle::Stopped => break,
        }
    }
}

/// The waker's side of the protocol for one event (module doc, waker steps 1–3), as the
/// harness runs it and `tests/loom_mechanisms.rs` model-checks it. `adopt` first: a claimed
/// server runs the event at once (`run_claimed(server)`), then [`IdleWakeup::hand_back`].
/// Otherwise `push` queues the event, a `SeqCst` fence, [`IdleWakeup::wake_one`], and for
/// `adopt` one more claim (a server released between the failed claim and the push gets the
/// queue). Returns what `wake_one` did, or `None` if the event was claimed and run.
pub fn unblock(
    m: &dyn IdleWakeup,
    work: &dyn Work,
    run_claimed: impl FnOnce(usize),
    push: impl FnOnce(),
) -> Option<Wake> {
    if let Some(server) = m.claim() {
        run_claimed(server);
        m.hand_back(server, work);
        return None;
    }
    push();
    fence(Ordering::SeqCst);
    let w = m.wake_one();
    if m.mechanism() == Mechanism::Adopt
        && let Some(server) = m.claim()
    {
        m.hand_back(server, work);
    }
    Some(w)
}

/// Build the mechanism `m` for `servers` servers, server `i` pinned to
/// `cpus[i % cpus.len()]` (`adopt` prefers a server of the claimer's CPU).
pub fn build(m: Mechanism, servers: usize, cpus: &[usize]) -> Result<Box<dyn IdleWakeup>, Errno> {
    Ok(match m {
        Mechanism::List => Box::new(ListHandoff::new(servers, Channel::Futex, m)?),
        Mechanism::EventFdPerServer => Box::new(ListHandoff::new(servers, Channel::EventFd, m)?),
        Mechanism::Adopt => Box::new(AdoptHandoff::new(servers, cpus)),
        Mechanism::EpollExclusive => Box::new(SharedFd::new(servers, true)?),
        Mechanism::Herd => Box::new(SharedFd::new(servers, false)?),
        Mechanism::Slot => Box::new(SlotHandoff::new(servers)),
    })
}

const IDLE: StateWord = StateWord(UMCG_TASK_IDLE);
const RUNNING: StateWord = StateWord(UMCG_TASK_RUNNING);

/// An eventfd registered in an epoll instance of its own (the emulated kernel's `IdleFd`).
#[derive(Debug)]
struct FdWaiter {
    efd: EventFd,
    ep: Epoll,
}

impl FdWaiter {
    fn own() -> Result<Self, Errno> {
        let efd = EventFd::new_nonblocking()?;
        let ep = Epoll::new()?;
        ep.add(&efd, 0, false)?;
        Ok(FdWaiter { efd, ep })
    }

    /// Sleep until the fd is readable (a signal already pending returns at once), then drain.
    fn wait(&self) {
        if let Ok(n) = self.efd.drain()
            && n > 0
        {
            return;
        }
        let mut ev = [EpollEvent::empty()];
        let _ = self.ep.wait(&mut ev, None);
        let _ = self.efd.drain();
    }
}

/// How a server chosen from the list sleeps and is woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Futex,
    EventFd,
}

/// `list`, `eventfd-per-server` and `adopt`: servers on the v0.3 tag-bit list.
#[derive(Debug)]
struct ListHandoff {
    mechanism: Mechanism,
    /// Boxed: the head word's address is every node's reset value and must not move.
    list: Box<IdleServerList>,
    /// The servers' tasks; nodes are their `idle_servers_ptr` fields (boxed slice, fixed).
    tasks: Box<[UmcgTask]>,
    fds: Option<Box<[FdWaiter]>>,
    bound: usize,
}

impl ListHandoff {
    fn new(servers: usize, channel: Channel, mechanism: Mechanism) -> Result<Self, Errno> {
        let list = Box::new(IdleServerList::new());
        let tasks: Box<[UmcgTask]> = (0..servers).map(|_| UmcgTask::new_server()).collect();
        for t in tasks.iter() {
            list.prepare(t);
        }
        let fds = match channel {
            Channel::Futex => None,
            Channel::EventFd => Some(
                (0..servers)
                    .map(|_| FdWaiter::own())
                    .collect::<Result<Box<[_]>, _>>()?,
            ),
        };
        // The v0.3 kernel's bound is 2 × nr_cpu_ids leading deleted nodes; with more servers
        // than that (more servers than CPUs, which the CLI warns about) it would kill the
        // waker, so the bound grows with the servers instead.
        let bound = 2 * sys::nr_cpu_ids().max(servers);
        Ok(ListHandoff {
            mechanism,
            list,
            tasks,
            fds,
            bound,
        })
    }

    fn index_of(&self, t: *const UmcgTask) -> Option<usize> {
        let base = self.tasks.as_ptr().addr();
        let off = t.addr().checked_sub(base)?;
        let i = off / size_of::<UmcgTask>();
        (off % size_of::<UmcgTask>() == 0 && i < self.tasks.len()).then_some(i)
    }

    /// Announce `t` idle: reclaim its node if it was popped, IDLE, push, fence.
    ///
    /// A node still live on the list is taken off first. That happens after a stale claim:
    /// a waker popped the node in an earlier idle period, the server left by itself (its
    /// re-check found work), went idle again and pushed the node anew, and only then did
    /// the waker's IDLE→RUNNING land and wake it, with this period's node still linked.
    /// Pushing it again would fail for good (the node is not reset), so the server would
    /// spin; found by `tests/loom_mechanisms.rs`.
    fn announce(&self, t: &UmcgTask) -> bool {
        loop {
            match self.list.reclaim(t) {
                Err(_) => return false,
                Ok(Reclaim::Live) => {
                    // As a leaving server does; a popper that deleted it first finds us
                    // RUNNING and gives up, and our re-check after the push sees its work.
                    let _ = self.list.remove(t);
                }
                Ok(_) => break,
            }
        }
        t.store_state(IDLE); // RUNNING=>IDLE
        // SAFETY: `t` is an element of `self.tasks`, a boxed slice that neither moves nor is
        // freed before `self` is dropped, which happens after every thread using `self` was
        // joined; only the server's own thread (or, for `Adopt`, the one claimer holding the
        // popped node) pushes a given node, never two threads at once.
        let pushed = unsafe { self.list.push(t) };
        fence(Ordering::SeqCst);
        matches!(pushed, Ok(Push::Pushed | Push::ClaimedWhilePushing))
    }

    /// Take `t` off the list by itself and make it RUNNING; a popper that claimed it first
    /// finds RUNNING and gives up (the kernel's H8 behaviour).
    fn leave(&self, t: &UmcgTask) {
        let _ = self.list.remove(t);
        let _ = t.cas_word(IDLE, RUNNING); // IDLE=>RUNNING
    }

    fn sleep(&self, server: usize, t: &UmcgTask) {
        match &self.fds {
            Some(fds) => fds[server].wait(),
            None => {
                let _ = sys::futex_wait(&t.state, UMCG_TASK_IDLE, None);
            }
        }
    }

    fn pop(&self) -> Result<Option<usize>, ()> {
        match self.list.pop(self.bound) {
            Pop::Got(node) => self.index_of(node.task()).map(Some).ok_or(()),
            Pop::Empty => Ok(None),
            Pop::BoundExceeded | Pop::Corrupt(_) => Err(()),
        }
    }
}

impl IdleWakeup for ListHandoff {
    fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    fn idle(&self, server: usize, work: &dyn Work) -> Idle {
        let t = &self.tasks[server];
        if !self.announce(t) {
            return Idle::Recheck;
        }
        if work.pending() || work.stopping() {
            self.leave(t);
            return Idle::Recheck;
        }
        loop {
            if t.load_state().state() == TaskState::Running {
                return Idle::Woken;
            }
            if work.stopping() {
                self.leave(t);
                return Idle::Stopped;
            }
            self.sleep(server, t);
        }
    }

    fn wake_one(&self) -> Wake {
        match self.pop() {
            Ok(Some(i)) => {
                let t = &self.tasks[i];
                match t.cas_word(IDLE, RUNNING) {
                    // IDLE=>RUNNING, then wake (the kernel's wake_server).
                    Ok(_) => {
                        match &self.fds {
                            Some(fds) => {
                                if fds[i].efd.signal().is_err() {
                                    return Wake::Failed;
                                }
                            }
                            None => {
                                sys::futex_wake(&t.state, 1);
                            }
                        }
                        Wake::Woken
                    }
                    Err(_) => Wake::Raced,
                }
            }
            Ok(None) => Wake::NoIdle,
            Err(()) => Wake::Failed,
        }
    }

    fn wake_all(&self) {
        for (i, t) in self.tasks.iter().enumerate() {
            sys::futex_wake(&t.state, i32::MAX);
            if let Some(fds) = &self.fds {
                let _ = fds[i].efd.signal();
            }
        }
    }
}

/// `adopt`: each server is a token (IDLE = free); the unblocking worker claims one, the one
/// of its own CPU if free, and runs the worker itself (moving to the token's CPU if it had to
/// take another CPU's). When its event is done and work is queued, the worker hands the
/// token to the server's thread ([`IdleWakeup::serve`]), which serves the queue and then
/// releases the token (a real synchronous switch returns to the server when the worker
/// blocks again); otherwise it releases the token itself.
///
/// A token is held by one party at a time: a claiming worker, or its server's thread while
/// `serving[i]` is 1. `serving[i]` is written 1 only by the token's holder handing it over
/// (`Release`, then `FUTEX_WAKE`), read by the server thread (`Acquire`); the thread writes
/// 0 before it releases the token, so a later holder's 1 is never overwritten.
#[derive(Debug)]
struct AdoptHandoff {
    cpus: Box<[usize]>,
    tokens: Box<[Padded]>,
    serving: Box<[Padded]>,
}

impl AdoptHandoff {
    fn new(servers: usize, cpus: &[usize]) -> Self {
        AdoptHandoff {
            cpus: (0..servers)
                .map(|i| cpus.get(i % cpus.len().max(1)).copied().unwrap_or(0))
                .collect(),
            tokens: (0..servers)
                .map(|_| Padded(AtomicU32::new(UMCG_TASK_IDLE)))
                .collect(),
            serving: (0..servers).map(|_| Padded(AtomicU32::new(0))).collect(),
        }
    }

    fn try_claim(&self, i: usize) -> bool {
        // IDLE=>RUNNING.
        self.tokens[i]
            .0
            .compare_exchange(
                UMCG_TASK_IDLE,
                UMCG_TASK_RUNNING,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

impl IdleWakeup for AdoptHandoff {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Adopt
    }

    fn idle(&self, server: usize, work: &dyn Work) -> Idle {
        let w = &self.serving[server].0;
        if w.load(Ordering::Acquire) == 1 {
            // Served the queue dry: give the token back, then the releaser's re-check.
            w.store(0, Ordering::Relaxed);
            self.release(server);
            if work.pending() && self.try_claim(server) {
                w.store(1, Ordering::Relaxed);
                return Idle::Recheck;
            }
        }
        loop {
            if work.stopping() {
                return Idle::Stopped;
            }
            if w.load(Ordering::Acquire) == 1 {
                return Idle::Woken;
            }
            let _ = sys::futex_wait(w, 0, None);
        }
    }

    fn wake_one(&self) -> Wake {
        Wake::NoIdle
    }

    fn claim(&self) -> Option<usize> {
        let cpu = sys::current_cpu();
        let n = self.tokens.len();
        (0..n)
            .filter(|&i| self.cpus[i] == cpu)
            .chain((0..n).filter(|&i| self.cpus[i] != cpu))
            .find(|&i| self.try_claim(i))
    }

    fn release(&self, server: usize) {
        // RUNNING=>IDLE, then the releaser's fence before its re-check of the run queue.
        self.tokens[server]
            .0
            .store(UMCG_TASK_IDLE, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    fn server_cpu(&self, server: usize) -> Option<usize> {
        self.cpus.get(server).copied()
    }

    fn serve(&self, server: usize) {
        if let Some(w) = self.serving.get(server) {
            w.0.store(1, Ordering::Release);
            sys::futex_wake(&w.0, 1);
        }
    }

    fn wake_all(&self) {
        // Free tokens go to their threads (a rescue serves what is queued); every thread
        // wakes to see the stop flag.
        for (i, w) in self.serving.iter().enumerate() {
            if self.try_claim(i) {
                w.0.store(1, Ordering::Release);
            }
            sys::futex_wake(&w.0, i32::MAX);
        }
    }
}

/// `epoll-excl` and `herd`: one eventfd shared by all servers, each in its own epoll.
#[derive(Debug)]
struct SharedFd {
    exclusive: bool,
    efd: EventFd,
    eps: Box<[Epoll]>,
}

impl SharedFd {
    fn new(servers: usize, exclusive: bool) -> Result<Self, Errno> {
        let efd = EventFd::new_nonblocking()?;
        let eps = (0..servers)
            .map(|i| {
                let ep = Epoll::new()?;
                ep.add(&efd, i as u64, exclusive)?;
                Ok(ep)
            })
            .collect::<Result<Box<[_]>, Errno>>()?;
        Ok(SharedFd {
            exclusive,
            efd,
            eps,
        })
    }
}

impl IdleWakeup for SharedFd {
    fn mechanism(&self) -> Mechanism {
        if self.exclusive {
            Mechanism::EpollExclusive
        } else {
            Mechanism::Herd
        }
    }

    fn idle(&self, server: usize, work: &dyn Work) -> Idle {
        // Nothing to announce: the waker writes the fd on every event, and the counter
        // persists until drained, so no fence is needed between check and wait.
        if work.pending() || work.stopping() {
            return Idle::Recheck;
        }
        let mut ev = [EpollEvent::empty()];
        let _ = self.eps[server].wait(&mut ev, None);
        let _ = self.efd.drain();
        if work.stopping() {
            Idle::Stopped
        } else {
            Idle::Woken
        }
    }

    fn wake_one(&self) -> Wake {
        match self.efd.signal() {
            Ok(()) => Wake::Signalled,
            Err(_) => Wake::Failed,
        }
    }

    fn wake_all(&self) {
        let _ = self.efd.signal();
    }
}

/// One cache line per server state word.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU32);

/// `slot` (v0.9.1 §4.8, libumcg §4.10): the kernel sees one idle server; the others wait in
/// a user-space stack. The slot holds a server id + 1 where the kernel had a TID (the
/// kernel's `find_task_by_vpid` becomes an array index).
#[derive(Debug)]
struct SlotHandoff {
    slot: IdleServerSlot,
    states: Box<[Padded]>,
    stack: Mutex<Vec<u32>>,
}

impl SlotHandoff {
    fn new(servers: usize) -> Self {
        SlotHandoff {
            slot: IdleServerSlot::new(),
            states: (0..servers)
                .map(|_| Padded(AtomicU32::new(UMCG_TASK_RUNNING)))
                .collect(),
            stack: Mutex::new(Vec::with_capacity(servers)),
        }
    }

    fn id(server: usize) -> u32 {
        server as u32 + 1
    }

    fn stack(&self) -> MutexGuard<'_, Vec<u32>> {
        self.stack.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take server `server` out of the slot or the stack, whichever holds it, and make it
    /// RUNNING (a concurrent taker that claimed it first finds RUNNING and gives up).
    /// If a waker had taken it from the slot already (its wake then finds RUNNING), the slot
    /// is empty and nobody else will refill it: this server is the woken one the waker
    /// meant, so it rotates as a woken server does. Returns whether it was taken.
    fn leave(&self, server: usize, work: &dyn Work) -> bool {
        let id = Self::id(server);
        let taken = {
            let mut st = self.stack();
            if self.slot.withdraw(id) {
                false
            } else {
                let n = st.len();
                st.retain(|&x| x != id);
                st.len() == n
            }
        };
        let _ = self.states[server].0.compare_exchange(
            UMCG_TASK_IDLE,
            UMCG_TASK_RUNNING,
            Ordering::AcqRel,
            Ordering::Acquire,
        ); // IDLE=>RUNNING
        if taken {
            self.rotate(work);
        }
        taken
    }

    /// libumcg's idle step: CAS the slot 0→own TID; if another server holds it, wait in
    /// user space (the stack). Both under the stack's lock: see `rotate`.
    fn announce(&self, id: u32) {
        let mut stack = self.stack();
        if !self.slot.offer(id) {
            stack.push(id);
        }
    }

    /// What a woken server does (§4.8, libumcg): rotate a user-space idle server into the
    /// empty slot, and if work is queued wake one more from the stack. The pop and the
    /// offer happen under the stack's lock, as an idle server's offer-or-push does: were
    /// they apart, a server could fail its offer (slot full), this rotation could then find
    /// the stack still empty, and the server's push would strand it in the stack behind an
    /// empty slot, asleep while work queues (seen at 70 % load before this lock: one server
    /// did all the work for 300 ms).
    fn rotate(&self, work: &dyn Work) {
        let mut wake = [None, None];
        {
            let mut st = self.stack();
            if let Some(id) = st.pop()
                && !self.slot.offer(id)
            {
                // Slot refilled meanwhile (a server that went idle): either wake this one
                // for queued work, or put it back.
                if work.pending() {
                    wake[0] = Some(id);
                } else {
                    st.push(id);
                }
            }
            if work.pending() {
                wake[1] = st.pop();
            }
        }
        for id in wake.into_iter().flatten() {
            let _ = self.wake_id(id);
        }
    }

    fn wake_id(&self, id: u32) -> Wake {
        let Some(s) = self.states.get(id as usize - 1) else {
            return Wake::Failed;
        };
        // IDLE=>RUNNING, then the targeted wake.
        match s.0.compare_exchange(
            UMCG_TASK_IDLE,
            UMCG_TASK_RUNNING,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                sys::futex_wake(&s.0, 1);
                Wake::Woken
            }
            Err(_) => Wake::Raced,
        }
    }
}

impl IdleWakeup for SlotHandoff {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Slot
    }

    fn idle(&self, server: usize, work: &dyn Work) -> Idle {
        let id = Self::id(server);
        let st = &self.states[server].0;
        st.store(UMCG_TASK_IDLE, Ordering::Release); // RUNNING=>IDLE
        self.announce(id);
        fence(Ordering::SeqCst);
        if work.pending() || work.stopping() {
            self.leave(server, work);
            return Idle::Recheck;
        }
        loop {
            if st.load(Ordering::Acquire) == UMCG_TASK_RUNNING {
                return Idle::Woken;
            }
            if work.stopping() {
                self.leave(server, work);
                return Idle::Stopped;
            }
            let _ = sys::futex_wait(st, UMCG_TASK_IDLE, None);
        }
    }

    fn wake_one(&self) -> Wake {
        // The kernel's XCHG(slot, 0).
        match self.slot.take() {
            Some(id) => self.wake_id(id),
            None => Wake::NoIdle,
        }
    }

    fn after_wake(&self, _server: usize, work: &dyn Work) {
        // libumcg's umcg_get_idle_worker path.
        self.rotate(work);
    }

    fn wake_all(&self) {
        for s in self.states.iter() {
            sys::futex_wake(&s.0, i32::MAX);
        }
    }
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;

    /// No pending work, not stopping.
    struct NoWork;

    impl Work for NoWork {
        fn pending(&self) -> bool {
            false
        }
        fn stopping(&self) -> bool {
            false
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// Server 2 goes idle while server 1 holds the slot.
        Announce,
        /// A waker takes the slot (server 1) and wakes it.
        Take,
        /// Server 1, woken, rotates.
        Rotate,
    }

    #[test]
    fn slot_rotation_never_strands_a_server() {
        // Every order of the protocol's atomic steps (each one XCHG, or one critical section
        // of the stack's lock) in which server 1 rotates after being taken. A server must
        // never sit in the stack behind an empty slot: no waker could reach it, and it
        // would sleep while work queues (before `announce` and `rotate` shared the lock,
        // "offer fails, rotate finds nothing, push" stranded it).
        use Step::*;
        for order in [
            [Announce, Take, Rotate],
            [Take, Announce, Rotate],
            [Take, Rotate, Announce],
        ] {
            let h = SlotHandoff::new(2);
            for st in h.states.iter() {
                st.0.store(UMCG_TASK_IDLE, Ordering::Release);
            }
            h.announce(1);
            for step in order {
                match step {
                    Announce => h.announce(2),
                    Take => assert_eq!(h.wake_one(), Wake::Woken, "{order:?}"),
                    Rotate => h.rotate(&NoWork),
                }
            }
            let stacked = h.stack().clone();
            let held = h.slot.take();
            assert!(
                stacked.is_empty() || held.is_some(),
                "{order:?}: stack {stacked:?} behind an empty slot"
            );
            assert_eq!(
                held,
                Some(2),
                "{order:?}: server 2 reachable through the slot"
            );
        }
    }

    #[test]
    fn a_server_taken_while_leaving_rotates() {
        // Server 1 holds the slot, server 2 waits in the stack. A waker takes server 1 from
        // the slot while server 1, having found work on its re-check, is leaving: the
        // waker's wake races (server 1 is RUNNING), so server 1 itself must rotate server 2
        // into the slot.
        let h = SlotHandoff::new(2);
        for st in h.states.iter() {
            st.0.store(UMCG_TASK_IDLE, Ordering::Release);
        }
        h.announce(1);
        h.announce(2);
        assert_eq!(*h.stack(), vec![2]);
        let taken = h.slot.take();
        assert_eq!(taken, Some(1));
        assert!(h.leave(0, &NoWork), "server 1 was taken from the slot");
        assert_eq!(h.wake_id(1), Wake::Raced);
        assert!(h.stack().is_empty());
        assert_eq!(h.slot.take(), Some(2));
        // A server that leaves from the stack or the slot itself was not taken.
        let h = SlotHandoff::new(2);
        h.announce(1);
        h.announce(2);
        assert!(!h.leave(0, &NoWork) && !h.leave(1, &NoWork));
        assert!(h.stack().is_empty() && h.slot.take().is_none());
    }

    #[test]
    fn names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::from_name("nope"), None);
    }

    struct Flags(bool, bool);
    impl Work for Flags {
        fn pending(&self) -> bool {
            self.0
        }
        fn stopping(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn idle_with_pending_work_does_not_sleep() {
        for m in Mechanism::ALL {
            if m == Mechanism::Adopt {
                continue;
            }
            let mech = build(m, 2, &[0]).unwrap();
            assert_eq!(mech.idle(0, &Flags(true, false)), Idle::Recheck, "{m:?}");
            // Taken back: nobody is visible to a waker.
            if matches!(
                m,
                Mechanism::List | Mechanism::EventFdPerServer | Mechanism::Slot
            ) {
                assert_eq!(mech.wake_one(), Wake::NoIdle, "{m:?}");
            }
        }
    }

    struct Stop(std::sync::atomic::AtomicBool);
    impl Work for Stop {
        fn pending(&self) -> bool {
            false
        }
        fn stopping(&self) -> bool {
            self.0.load(Ordering::Acquire)
        }
    }

    #[test]
    fn adopt_claims_and_releases() {
        let mech = build(Mechanism::Adopt, 1, &[0]).unwrap();
        let stop = Stop(std::sync::atomic::AtomicBool::new(false));
        std::thread::scope(|s| {
            let h = s.spawn(|| mech.idle(0, &stop));
            // Every server is free from the start: its thread only sleeps until the stop.
            assert_eq!(mech.claim(), Some(0));
            assert_eq!(mech.claim(), None);
            mech.release(0);
            assert_eq!(mech.claim(), Some(0));
            stop.0.store(true, Ordering::Release);
            while !h.is_finished() {
                mech.wake_all();
                std::thread::yield_now();
            }
            assert_eq!(h.join().unwrap(), Idle::Stopped);
        });
    }
}
