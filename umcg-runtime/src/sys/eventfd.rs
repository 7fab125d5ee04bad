//! eventfd(2): a kernel counter behind a file descriptor, the fd-based wakeup that the
//! baselines compare the futex handoff with, and the source an [`super::Epoll`] waits on.
//!
//! Protocol:
//! 1. [`EventFd::signal`] adds 1 to the counter (`write(2)` of a `u64`); a reader or an
//!    epoll waiter on it becomes ready.
//! 2. [`EventFd::drain`] reads the counter and resets it to 0 (no `EFD_SEMAPHORE`), so many
//!    signals before a drain collapse into one wakeup; the value says how many there were.
//!
//! The counter saturates at `u64::MAX - 1`: a write that would pass it fails with `EAGAIN`
//! (non-blocking) or blocks. `signal` handles that as mio's `sys/unix/waker/eventfd.rs`
//! does: drain the counter, then write again.
//!
//! Every eventfd is created `EFD_CLOEXEC`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};

/// An owned eventfd (closed on drop).
#[derive(Debug)]
pub struct EventFd(NixEventFd);

impl EventFd {
    /// A counter at 0 whose `read` fails with `EAGAIN` when empty ([`EventFd::drain`] then
    /// returns 0). `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`; man eventfd(2).
    pub fn new_nonblocking() -> Result<Self, Errno> {
        NixEventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map(Self)
    }

    /// A counter at 0 whose `read` blocks while it is 0 ([`EventFd::drain`] sleeps).
    /// `eventfd(0, EFD_CLOEXEC)`; man eventfd(2).
    pub fn new_blocking() -> Result<Self, Errno> {
        NixEventFd::from_flags(EfdFlags::EFD_CLOEXEC).map(Self)
    }

    /// Add 1 to the counter, waking readers and epoll waiters. `write(fd, &1u64, 8)`; man
    /// eventfd(2), write(2).
    ///
    /// `EAGAIN` means the counter is about to overflow (non-blocking fd): the counter is
    /// drained and the write retried, so the reader still sees a non-zero count. `EINTR` (a
    /// blocking fd that sleeps at the saturation point) is retried.
    pub fn signal(&self) -> Result<(), Errno> {
        loop {
            match self.0.write(1) {
                Ok(n) => {
                    debug_assert_eq!(n, 8, "short eventfd write");
                    return Ok(());
                }
                Err(Errno::EAGAIN) => {
                    self.drain()?;
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Read and reset the counter; returns its value, 0 if it was 0 on a non-blocking fd
    /// (`EAGAIN`). `read(fd, &u64, 8)`; man eventfd(2), read(2).
    ///
    /// On a blocking fd this sleeps while the counter is 0, and a signal handler that runs
    /// meanwhile ends it with `Err(EINTR)`, which is returned.
    pub fn drain(&self) -> Result<u64, Errno> {
        match self.0.read() {
            Ok(v) => Ok(v),
            Err(Errno::EAGAIN) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn signal_then_drain_counts_and_resets() {
        let efd = EventFd::new_nonblocking().unwrap();
        assert_eq!(efd.drain(), Ok(0));
        efd.signal().unwrap();
        efd.signal().unwrap();
        efd.signal().unwrap();
        assert_eq!(efd.drain(), Ok(3));
        assert_eq!(efd.drain(), Ok(0));
    }

    #[test]
    fn blocking_drain_returns_pending_count() {
        let efd = EventFd::new_blocking().unwrap();
        efd.signal().unwrap();
        assert_eq!(efd.drain(), Ok(1));
    }

    #[test]
    fn signal_at_saturation_drains_and_rewrites() {
        let efd = EventFd::new_nonblocking().unwrap();
        // The largest value the counter holds: the next +1 fails with EAGAIN.
        efd.0.write(u64::MAX - 1).unwrap();
        assert_eq!(efd.0.write(1), Err(Errno::EAGAIN));
        efd.signal().unwrap();
        assert_eq!(efd.drain(), Ok(1));
    }

    #[test]
    fn created_cloexec() {
        let efd = EventFd::new_blocking().unwrap();
        // SAFETY: F_GETFD on a live fd we own; no memory is passed.
        let flags = unsafe { libc::fcntl(efd.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0);
    }
}
