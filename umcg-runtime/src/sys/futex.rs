//! futex(2): wait on and wake one 32-bit word. The emulated kernel's only blocking primitive.
//!
//! nix has no futex, so this is one small wrapper over `libc::syscall(SYS_futex, ...)`. Errno
//! discipline after parking_lot's `core/src/thread_parker/linux.rs`: the errnos a call can
//! legitimately return are mapped to [`FutexWait`]; anything else is a bug and trips a
//! `debug_assert!` (release builds report it as a spurious [`FutexWait::Woken`]).
//!
//! Protocol (the futex contract, futex(2) "DESCRIPTION"):
//! 1. The waker changes the word, then calls [`futex_wake`].
//! 2. The waiter checks its predicate on the word, then calls [`futex_wait`] with the value it
//!    saw. The kernel compares the word with that value under the futex hash-bucket lock and
//!    only sleeps if they are still equal, so a store-then-wake cannot fall between the check
//!    and the sleep: the waiter either sees the new value ([`FutexWait::ValueChanged`]) or is
//!    woken by the wake.
//! 3. [`FutexWait::Woken`] may be spurious (a wake meant for an earlier value, a wake on a
//!    recycled address, `FUTEX_WAKE` racing with a timeout): callers re-check the predicate in
//!    a loop.
//!
//! Unlike the parker in std (`library/std/src/sys/sync/thread_parking/futex.rs`), `EINTR` is
//! not swallowed: it is returned as [`FutexWait::Interrupted`], because the emulated
//! `umcg_wait` must report `EINTR` when a signal handler runs while it sleeps. Handlers are
//! installed without `SA_RESTART` ([`super::signal::install_handler`]). With one, the kernel
//! would restart an untimed wait transparently (`-ERESTARTSYS`), but still end a wait with a
//! deadline with `EINTR` (`-ERESTART_RESTARTBLOCK`); futex(2) "ERRORS", signal(7).
//!
//! Memory ordering: the kernel orders the waiter's enqueue-then-compare against the waker's
//! store-then-wake with full barriers (the ordering comment atop the kernel's
//! `kernel/futex/waitwake.c`), but the comparison gives the caller no acquire edge it can
//! name; callers load their predicate themselves with the ordering they need (the waker's
//! `Release` store pairs with the waiter's `Acquire` load of the word). The loom model (`sys/model.rs`) compares with a `Relaxed` load for that reason.
//!
//! All waits use `FUTEX_PRIVATE_FLAG`: the words live in this process's memory and are never
//! shared with another process (a forked child does not take part in the protocol).

use core::time::Duration;

#[cfg(not(umcg_loom))]
use nix::errno::Errno;
#[cfg(not(umcg_loom))]
use umcg_abi::sync::AtomicU32;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Make this process use the kernel's global futex hash instead of its private one.
///
/// Linux 6.16+ gives each process a private futex hash table sized from the number of
/// online CPUs (a handful of buckets on a small machine), not from the number of waiters.
/// With thousands of workers asleep on their state words, every wake then walks a long
/// bucket chain: measured here, a futex ping-pong goes from 2.1 µs to 17 µs per round trip
/// with 10,000 sleeping waiters in the process, and stays flat with the global hash.
/// `prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, 0, 0)`; man prctl(2), kernel
/// `kernel/futex/core.c`. Older kernels answer `EINVAL` (they have only the global hash),
/// which is ignored. Process-wide; the emulator calls it once, at the first registration.
pub fn use_global_futex_hash() {
    const PR_FUTEX_HASH: libc::c_int = 78;
    const PR_FUTEX_HASH_SET_SLOTS: libc::c_ulong = 1;
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let _ = unsafe {
        libc::prctl(
            PR_FUTEX_HASH,
            PR_FUTEX_HASH_SET_SLOTS,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
}

/// Outcome of [`futex_wait`]. Racy by nature: every variant means "re-check the predicate".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FutexWait {
    /// The call returned 0: woken by [`futex_wake`], or spuriously.
    Woken,
    /// `EAGAIN`: the word did not hold `expected` when the kernel compared it.
    ValueChanged,
    /// `EINTR`: a signal handler ran while the thread slept.
    Interrupted,
    /// `ETIMEDOUT`: the [`Deadline`] passed.
    TimedOut,
}

/// An absolute time at which [`futex_wait`] gives up, on one of two clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// `CLOCK_REALTIME`, nanoseconds since the Unix epoch: UMCG's `abs_timeout`
    /// (`FUTEX_WAIT_BITSET | FUTEX_CLOCK_REALTIME`). Follows wall-clock jumps.
    Realtime(u64),
    /// `CLOCK_MONOTONIC`, nanoseconds since boot (not counting suspend): timeouts of the
    /// runtime's own (`FUTEX_WAIT_BITSET`).
    Monotonic(u64),
}

impl Deadline {
    /// `CLOCK_MONOTONIC` now plus `timeout` (saturating).
    pub fn after(timeout: Duration) -> Self {
        let add = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        Deadline::Monotonic(monotonic_now_ns().saturating_add(add))
    }

    /// The time left until this deadline on its clock; `None` once it has passed.
    pub fn remaining(self) -> Option<Duration> {
        let (ns, now) = match self {
            Deadline::Realtime(ns) => (ns, realtime_now_ns()),
            Deadline::Monotonic(ns) => (ns, monotonic_now_ns()),
        };
        (ns > now).then(|| Duration::from_nanos(ns - now))
    }

    /// The absolute `timespec` this deadline names on its clock.
    #[cfg_attr(umcg_loom, allow(dead_code))]
    pub(crate) fn timespec(self) -> libc::timespec {
        let (Deadline::Realtime(ns) | Deadline::Monotonic(ns)) = self;
        ns_to_timespec(ns)
    }
}

/// `clock_gettime(CLOCK_REALTIME)` in nanoseconds since the epoch (0 before 1970);
/// clock_gettime(2), served by the vDSO.
pub fn realtime_now_ns() -> u64 {
    clock_now_ns(libc::CLOCK_REALTIME)
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds; clock_gettime(2), served by the vDSO.
pub fn monotonic_now_ns() -> u64 {
    clock_now_ns(libc::CLOCK_MONOTONIC)
}

fn clock_now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    // Both clocks exist on every Linux; the only documented errors are EINVAL/EFAULT.
    debug_assert_eq!(r, 0, "clock_gettime({clock}) failed");
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(NANOS_PER_SEC).saturating_add(nanos)
}

pub(crate) fn ns_to_timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        // u64::MAX / 1e9 < 2^35: always fits an i64.
        tv_sec: (ns / NANOS_PER_SEC) as libc::time_t,
        tv_nsec: (ns % NANOS_PER_SEC) as libc::c_long,
    }
}

/// Sleep while `*word == expected`, until woken, interrupted by a signal handler, or past
/// `deadline` (`None`: no timeout).
///
/// C call: `syscall(SYS_futex, word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG [|
/// FUTEX_CLOCK_REALTIME], expected, &abs_timespec_or_NULL, NULL, FUTEX_BITSET_MATCH_ANY)`;
/// man futex(2). `FUTEX_WAIT_BITSET` with `FUTEX_BITSET_MATCH_ANY` is `FUTEX_WAIT` with an
/// absolute timeout, on `CLOCK_MONOTONIC` unless `FUTEX_CLOCK_REALTIME` is set.
///
/// `EINTR` is returned ([`FutexWait::Interrupted`]), not retried: see the module doc.
#[cfg(not(umcg_loom))]
pub fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<Deadline>) -> FutexWait {
    let mut op = libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG;
    if let Some(Deadline::Realtime(_)) = deadline {
        op |= libc::FUTEX_CLOCK_REALTIME;
    }
    let ts = deadline.map(Deadline::timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(core::ptr::null(), |ts| ts as *const libc::timespec);
    // SAFETY: `word.as_ptr()` points to a live, aligned u32 for the duration of the call (we
    // hold a reference); the kernel only reads it. `ts_ptr` is null (no timeout) or points to
    // `ts`, alive until the call returns. uaddr2 is unused by FUTEX_WAIT_BITSET; val3 is the
    // bitset. The call has no effect on memory we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            expected,
            ts_ptr,
            core::ptr::null::<u32>(),
            libc::FUTEX_BITSET_MATCH_ANY,
        )
    };
    debug_assert!(r == 0 || r == -1, "futex wait returned {r}");
    if r == 0 {
        return FutexWait::Woken;
    }
    match Errno::last() {
        Errno::EAGAIN => FutexWait::ValueChanged,
        Errno::EINTR => FutexWait::Interrupted,
        Errno::ETIMEDOUT if deadline.is_some() => FutexWait::TimedOut,
        e => {
            // EFAULT is impossible with a reference, EINVAL with a normalised timespec,
            // ENOSYS on any kernel since 2.6.25: a bug. Callers re-check and loop.
            debug_assert!(false, "unexpected futex wait errno {e}");
            FutexWait::Woken
        }
    }
}

/// Wake up to `n` threads sleeping in [`futex_wait`] on `word`; returns how many woke.
///
/// C call: `syscall(SYS_futex, word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n, NULL, NULL, 0)`;
/// man futex(2). Pass `n >= 1` (`i32::MAX` wakes all); the kernel wakes one for `n == 0`.
///
/// `EFAULT` is tolerated and reported as 0 woken: the waker may legitimately wake on memory
/// that the woken side has already freed (it saw the store and returned before our call), and
/// the kernel reports `EFAULT` if the page is gone (parking_lot `linux.rs`).
#[cfg(not(umcg_loom))]
pub fn futex_wake(word: &AtomicU32, n: i32) -> usize {
    debug_assert!(n >= 1, "futex_wake(n = {n})");
    // SAFETY: FUTEX_WAKE does not access the word's contents, only hashes its address; the
    // remaining arguments are unused by FUTEX_WAKE. No memory of ours is written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
            core::ptr::null::<libc::timespec>(),
            core::ptr::null::<u32>(),
            0u32,
        )
    };
    if r >= 0 {
        return r as usize;
    }
    debug_assert_eq!(r, -1, "futex wake returned {r}");
    let e = Errno::last();
    debug_assert_eq!(e, Errno::EFAULT, "unexpected futex wake errno {e}");
    0
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;
    use crate::sys::signal::{Signal, install_handler};
    use crate::sys::thread::{gettid, tgkill};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    /// Overall bound for waits that must not time out; a bug fails instead of hanging.
    const GENEROUS: Duration = Duration::from_secs(30);

    #[test]
    fn mismatched_value_returns_value_changed() {
        let word = AtomicU32::new(5);
        assert_eq!(futex_wait(&word, 4, None), FutexWait::ValueChanged);
        let past = Some(Deadline::Monotonic(0));
        assert_eq!(futex_wait(&word, 4, past), FutexWait::ValueChanged);
        // Nobody waits: nothing to wake.
        assert_eq!(futex_wake(&word, 1), 0);
    }

    #[test]
    fn waiter_woken_after_store_sees_value() {
        let word = Arc::new(AtomicU32::new(0));
        let waiter = {
            let word = Arc::clone(&word);
            thread::spawn(move || {
                let deadline = Deadline::after(GENEROUS);
                // Acquire pairs with the waker's Release store.
                while word.load(Ordering::Acquire) == 0 {
                    let r = futex_wait(&word, 0, Some(deadline));
                    assert_ne!(r, FutexWait::TimedOut, "lost wakeup");
                }
                word.load(Ordering::Acquire)
            })
        };
        word.store(7, Ordering::Release);
        futex_wake(&word, i32::MAX);
        assert_eq!(waiter.join().unwrap(), 7);
    }

    #[test]
    fn realtime_deadline_in_the_past_times_out() {
        let word = AtomicU32::new(0);
        let past = realtime_now_ns() - NANOS_PER_SEC;
        assert_eq!(
            futex_wait(&word, 0, Some(Deadline::Realtime(past))),
            FutexWait::TimedOut
        );
        assert_eq!(
            futex_wait(&word, 0, Some(Deadline::Monotonic(1))),
            FutexWait::TimedOut
        );
    }

    #[test]
    fn deadline_conversion() {
        let ts = Deadline::Realtime(3 * NANOS_PER_SEC + 5).timespec();
        assert_eq!((ts.tv_sec, ts.tv_nsec), (3, 5));
        let ts = Deadline::Monotonic(u64::MAX).timespec();
        assert!(ts.tv_sec > 0 && ts.tv_nsec < 1_000_000_000);
        let Deadline::Monotonic(a) = Deadline::after(Duration::MAX) else {
            panic!("after() is monotonic");
        };
        assert_eq!(a, u64::MAX);
    }

    extern "C" fn on_sigusr2(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

    #[test]
    fn signal_handler_without_sa_restart_interrupts_wait() {
        // SAFETY: the handler does nothing, which is async-signal-safe; SIGUSR2 is used by no
        // other code in this test binary.
        unsafe { install_handler(Signal::SIGUSR2, on_sigusr2) }.unwrap();

        // tid published by the waiter (0 = not yet); `done` is set when the waiter returns.
        let tid = Arc::new(AtomicU32::new(0));
        let done = Arc::new(AtomicU32::new(0));
        let interrupted = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (tid, done, interrupted) = (tid.clone(), done.clone(), interrupted.clone());
            thread::spawn(move || {
                let word = AtomicU32::new(0);
                tid.store(gettid(), Ordering::Release);
                futex_wake(&tid, 1);
                let deadline = Deadline::after(GENEROUS);
                loop {
                    match futex_wait(&word, 0, Some(deadline)) {
                        FutexWait::Interrupted => {
                            interrupted.store(true, Ordering::Relaxed);
                            break;
                        }
                        FutexWait::TimedOut => break,
                        // Spurious: wait again.
                        FutexWait::Woken | FutexWait::ValueChanged => {}
                    }
                }
                done.store(1, Ordering::Release);
                futex_wake(&done, 1);
            })
        };
        let deadline = Deadline::after(GENEROUS);
        let target = loop {
            match tid.load(Ordering::Acquire) {
                0 => assert_ne!(futex_wait(&tid, 0, Some(deadline)), FutexWait::TimedOut),
                t => break t,
            }
        };
        // The signal may land while the waiter runs user code (handler runs, no EINTR): keep
        // sending until it reports. The 1 ms futex wait only paces the loop.
        for _ in 0..10_000 {
            if done.load(Ordering::Acquire) == 1 {
                break;
            }
            match tgkill(target, Signal::SIGUSR2) {
                // ESRCH: the waiter returned and exited between our check and the kill.
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => panic!("tgkill: {e}"),
            }
            futex_wait(&done, 0, Some(Deadline::after(Duration::from_millis(1))));
        }
        waiter.join().unwrap();
        assert!(interrupted.load(Ordering::Relaxed), "never saw EINTR");
    }
}
