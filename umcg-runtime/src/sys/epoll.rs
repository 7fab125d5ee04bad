//! epoll(7): wait for any of several fds (eventfds here) to become readable, with a
//! nanosecond timeout.
//!
//! [`Epoll`] wraps nix's `Epoll` (`epoll_create1(EPOLL_CLOEXEC)`, `epoll_ctl(2)`) and waits
//! with `epoll_pwait2(2)` through `libc::syscall(SYS_epoll_pwait2, ...)`. Registrations are
//! level-triggered `EPOLLIN`, optionally `EPOLLEXCLUSIVE`; each carries a `u64` token that
//! comes back in [`EpollEvent::data`].
//!
//! Sharp edges (epoll(7) "Questions and answers", epoll_ctl(2)):
//! 1. **Close while registered.** The interest list holds the open *file description*, not
//!    the fd number. Closing an fd removes the registration only when it was the last fd
//!    referring to that description; while a `dup`, a forked child's copy or an fd passed
//!    over a socket keeps it open, the closed fd keeps reporting events (with its old
//!    token) and can no longer be deleted by number. Rule: always [`Epoll::delete`] before
//!    closing a registered fd.
//! 2. **fork.** A child inherits the epoll fd, and with it the *same* epoll instance and
//!    interest list as the parent: a child that waits on it steals the parent's events, and
//!    a child's `epoll_ctl` changes the parent's set. Project rule: forked children are never
//!    registered anywhere and never use the parent's epoll (the fd is `CLOEXEC`, so an
//!    `exec`ed child loses it).
//! 3. **Thundering herd.** Without `EPOLLEXCLUSIVE`, one readable event wakes *every* epoll
//!    instance waiting on that fd; all but one find nothing to drain (LIMITS.md: wake cost
//!    grows linearly with the sleepers).
//! 4. **`EPOLLEXCLUSIVE`** (Linux 4.5): when several epoll instances wait on the same fd, an
//!    event wakes *at least one* of those registered exclusively (not exactly one:
//!    non-exclusive waiters are all woken, and a level-triggered fd that stays ready can be
//!    reported to a later caller too). It is allowed only with `EPOLL_CTL_ADD`:
//!    `EPOLL_CTL_MOD` on such a registration fails with `EINVAL`, so to change it delete and
//!    add again (this type offers no `modify`).
//! 5. **Millisecond timeouts.** `epoll_wait(2)`'s timeout is an `int` of milliseconds (nix's
//!    `EpollTimeout` too), so a 200 µs wait rounds to 0 (a poll) or 1 ms. `epoll_pwait2(2)`
//!    (Linux 5.11) takes a `timespec`; glibc wraps it only since 2.35, so the raw syscall is
//!    used. On `ENOSYS` (older kernel) the wait falls back to `epoll_wait` with the timeout
//!    rounded *up* to whole milliseconds, never down to a busy poll.
//! 6. **Signals.** A signal handler that runs during the wait ends it with `EINTR`
//!    (`SA_RESTART` does not apply to epoll waits); [`Epoll::wait`] returns
//!    `Err(Errno::EINTR)` and does not retry.

use core::time::Duration;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
pub use nix::sys::epoll::EpollEvent;
use nix::sys::epoll::{Epoll as NixEpoll, EpollCreateFlags, EpollFlags};

/// Largest `maxevents` the kernel accepts (`EP_MAX_EVENTS`, epoll_wait(2) "EINVAL").
const MAX_EVENTS: usize = (i32::MAX as usize) / size_of::<libc::epoll_event>();

/// An owned epoll instance (closed on drop).
#[derive(Debug)]
pub struct Epoll(NixEpoll);

impl Epoll {
    /// A new epoll instance with an empty interest list. `epoll_create1(EPOLL_CLOEXEC)`;
    /// man epoll_create(2).
    pub fn new() -> Result<Self, Errno> {
        NixEpoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map(Self)
    }

    /// Register `fd` for level-triggered `EPOLLIN`, reported with `token` in
    /// [`EpollEvent::data`]; `exclusive` adds `EPOLLEXCLUSIVE` (module doc, items 3 and 4).
    /// `epoll_ctl(EPOLL_CTL_ADD)`; man epoll_ctl(2). `EEXIST` if `fd` is already registered.
    pub fn add<F: AsFd>(&self, fd: F, token: u64, exclusive: bool) -> Result<(), Errno> {
        let mut flags = EpollFlags::EPOLLIN;
        if exclusive {
            flags |= EpollFlags::EPOLLEXCLUSIVE;
        }
        self.0.add(fd, EpollEvent::new(flags, token))
    }

    /// Remove `fd` from the interest list; do this before closing it (module doc, item 1).
    /// `epoll_ctl(EPOLL_CTL_DEL)`; man epoll_ctl(2). `ENOENT` if it was not registered.
    pub fn delete<F: AsFd>(&self, fd: F) -> Result<(), Errno> {
        self.0.delete(fd)
    }

    /// Re-apply the registration of `fd` (level-triggered `EPOLLIN`, not exclusive) with
    /// `token`: `epoll_ctl(EPOLL_CTL_MOD)`; man epoll_ctl(2). Also an identity check: the
    /// interest list is keyed by the open file *and* the fd number, so this fails with
    /// `ENOENT` when `fd`'s number now names another file than the one added, `EBADF` when
    /// either number is closed, and `EINVAL` when this epoll's number names a non-epoll file.
    pub fn modify<F: AsFd>(&self, fd: F, token: u64) -> Result<(), Errno> {
        let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, token);
        self.0.modify(fd, &mut ev)
    }

    /// Wait until a registered fd is ready or `timeout` passes (`None`: no timeout); fills
    /// `events` from the front and returns how many were filled (0: timed out).
    ///
    /// `syscall(SYS_epoll_pwait2, epfd, events, maxevents, &timespec_or_NULL, NULL, 0)`;
    /// man epoll_wait(2). The timeout has nanosecond precision (module doc, item 5), measured
    /// on `CLOCK_MONOTONIC`. A signal handler that runs meanwhile ends the wait with
    /// `Err(Errno::EINTR)`; `events` empty is `Err(Errno::EINVAL)`.
    pub fn wait(
        &self,
        events: &mut [EpollEvent],
        timeout: Option<Duration>,
    ) -> Result<usize, Errno> {
        if events.is_empty() {
            return Err(Errno::EINVAL);
        }
        let max = events.len().min(MAX_EVENTS);
        let events = &mut events[..max];
        match self.pwait2(events, timeout) {
            // Kernel before 5.11 (one failed call per wait there; none on the kernels we
            // target).
            Err(Errno::ENOSYS) => self.wait_ms(events, timeout),
            r => r,
        }
    }

    fn pwait2(&self, events: &mut [EpollEvent], timeout: Option<Duration>) -> Result<usize, Errno> {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(d.subsec_nanos()),
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(core::ptr::null(), |ts| ts as *const libc::timespec);
        // `events.len() <= MAX_EVENTS < i32::MAX`, checked by `wait`.
        let maxevents = events.len() as libc::c_int;
        // SAFETY: `EpollEvent` is `repr(transparent)` over `libc::epoll_event`, so `events` is
        // `maxevents` writable epoll_events that the kernel fills; it stays borrowed for the
        // call. `ts_ptr` is null or points to `ts`, alive until the call returns. A null
        // sigmask means no mask change (sigsetsize is then ignored). The epoll fd is ours.
        let r = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.0.0.as_raw_fd(),
                events.as_mut_ptr().cast::<libc::epoll_event>(),
                maxevents,
                ts_ptr,
                core::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = Errno::last();
        // EBADF/EINVAL: the epoll fd's number was closed, or names another file now (user
        // space closed or replaced it); callers handle it.
        debug_assert!(
            matches!(
                e,
                Errno::EINTR | Errno::ENOSYS | Errno::EBADF | Errno::EINVAL
            ),
            "unexpected epoll_pwait2 errno {e}"
        );
        Err(e)
    }

    /// Fallback for kernels without `epoll_pwait2`: `epoll_wait(2)` with the timeout rounded
    /// up to whole milliseconds (capped at `i32::MAX` ms, about 24 days).
    fn wait_ms(
        &self,
        events: &mut [EpollEvent],
        timeout: Option<Duration>,
    ) -> Result<usize, Errno> {
        let ms = match timeout {
            None => -1,
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        let maxevents = events.len() as libc::c_int;
        // SAFETY: as in `pwait2`: `events` is `maxevents` writable epoll_events (transparent
        // wrapper), borrowed for the call; the epoll fd is ours.
        let r = unsafe {
            libc::epoll_wait(
                self.0.0.as_raw_fd(),
                events.as_mut_ptr().cast::<libc::epoll_event>(),
                maxevents,
                ms,
            )
        };
        Errno::result(r).map(|n| n as usize)
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.0.as_fd()
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0.0.as_raw_fd()
    }
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;
    use crate::sys::eventfd::EventFd;
    use crate::sys::futex::{Deadline, FutexWait, futex_wait, futex_wake};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::thread;

    const GENEROUS: Duration = Duration::from_secs(30);

    #[test]
    fn pwait2_short_timeout_returns_no_events() {
        let ep = Epoll::new().unwrap();
        let efd = EventFd::new_nonblocking().unwrap();
        ep.add(&efd, 1, false).unwrap();
        let mut events = [EpollEvent::empty(); 4];
        assert_eq!(
            ep.wait(&mut events, Some(Duration::from_micros(200))),
            Ok(0)
        );
        assert_eq!(ep.wait(&mut events, Some(Duration::ZERO)), Ok(0));
        // The fallback path too.
        assert_eq!(
            ep.wait_ms(&mut events, Some(Duration::from_micros(200))),
            Ok(0)
        );
    }

    #[test]
    fn ready_fd_reported_with_token_until_drained() {
        let ep = Epoll::new().unwrap();
        let efd = EventFd::new_nonblocking().unwrap();
        ep.add(&efd, 0xfeed, false).unwrap();
        assert_eq!(ep.add(&efd, 0xfeed, false), Err(Errno::EEXIST));
        efd.signal().unwrap();
        let mut events = [EpollEvent::empty(); 4];
        assert_eq!(ep.wait(&mut events, Some(GENEROUS)), Ok(1));
        assert_eq!(events[0].data(), 0xfeed);
        assert!(events[0].events().contains(EpollFlags::EPOLLIN));
        // Level-triggered: still ready until drained. A huge timeout saturates, not EINVAL.
        assert_eq!(ep.wait(&mut events, Some(Duration::ZERO)), Ok(1));
        assert_eq!(ep.wait(&mut events, Some(Duration::MAX)), Ok(1));
        assert_eq!(ep.wait_ms(&mut events, Some(Duration::MAX)), Ok(1));
        assert_eq!(efd.drain(), Ok(1));
        assert_eq!(ep.wait(&mut events, Some(Duration::ZERO)), Ok(0));
        ep.delete(&efd).unwrap();
        assert_eq!(ep.delete(&efd), Err(Errno::ENOENT));
        assert_eq!(ep.wait(&mut [], None), Err(Errno::EINVAL));
    }

    /// Two threads, each with its own epoll instance holding the shared eventfd with
    /// `EPOLLEXCLUSIVE`. Each signal must wake at least one of them: a thread leaves after it
    /// drains a non-zero count, the second signal is sent once the first was consumed, and a
    /// lost wakeup makes a waiter time out. (That *only* one wakes cannot be asserted without
    /// timing: a level-triggered waiter arriving before the drain is rightly reported too.)
    #[test]
    fn exclusive_waiters_each_signal_wakes_one() {
        let efd = Arc::new(EventFd::new_nonblocking().unwrap());
        let consumed = Arc::new(AtomicU32::new(0));
        let waiters: Vec<_> = (0..2u64)
            .map(|token| {
                let (efd, consumed) = (Arc::clone(&efd), Arc::clone(&consumed));
                thread::spawn(move || -> Result<u64, String> {
                    let ep = Epoll::new().unwrap();
                    ep.add(&*efd, token, true).unwrap();
                    let mut events = [EpollEvent::empty(); 2];
                    loop {
                        match ep.wait(&mut events, Some(GENEROUS)) {
                            Ok(0) => return Err(format!("waiter {token} timed out")),
                            Ok(n) => assert!(events[..n].iter().all(|e| e.data() == token)),
                            Err(Errno::EINTR) => continue,
                            Err(e) => return Err(format!("epoll_pwait2: {e}")),
                        }
                        let got = efd.drain().unwrap();
                        if got > 0 {
                            consumed.fetch_add(1, Ordering::Release);
                            futex_wake(&consumed, 1);
                            return Ok(got);
                        }
                    }
                })
            })
            .collect();
        let deadline = Deadline::after(GENEROUS);
        for round in 1..=2 {
            efd.signal().unwrap();
            loop {
                let c = consumed.load(Ordering::Acquire);
                if c >= round {
                    break;
                }
                assert_ne!(
                    futex_wait(&consumed, c, Some(deadline)),
                    FutexWait::TimedOut
                );
            }
        }
        let got: Vec<u64> = waiters
            .into_iter()
            .map(|w| w.join().unwrap().unwrap())
            .collect();
        assert_eq!(got, [1, 1]);
    }
}
