//! Readiness and non-blocking I/O, for the worker-aware wrappers of `crate::io`.
//!
//! The wrappers there try every call without sleeping first and wait for readiness only when
//! the call would block, so each call here is either *non-blocking by construction* or the
//! plain (possibly sleeping) call to make once [`ppoll`] reported the fd ready:
//!
//! | wrapper | system call; man page | never sleeps because |
//! |---|---|---|
//! | [`ppoll`], [`ready_now`] | `ppoll(2)` | `ready_now` passes a zero timeout |
//! | [`read_nowait`], [`write_nowait`] | `preadv2(2)`/`pwritev2(2)` at offset -1 with `RWF_NOWAIT` | the flag (Linux 4.14+; pipes, sockets, page-cache hits) |
//! | [`read()`], [`write()`] | `read(2)`, `write(2)` (nix) | — (call after readiness) |
//! | [`recv_nowait`], [`send_nowait`] | `recv(2)`/`send(2)` with `MSG_DONTWAIT` | the flag |
//! | [`accept`] | `accept4(2)`, `SOCK_CLOEXEC` | — (call after readiness) |
//! | [`inet_socket`], [`unix_socket`], [`connect_inet`], [`connect_unix`], [`socket_error`] | `socket(2)`, `connect(2)`, `getsockopt(SO_ERROR)` | a `SOCK_NONBLOCK` socket |
//! | [`set_nonblocking`] | `fcntl(F_GETFL/F_SETFL, O_NONBLOCK)`; fcntl(2) | — |
//!
//! Conventions as in the rest of `sys`: errors are [`Errno`] (`EAGAIN` means "would block"),
//! `EINTR` is returned to the caller (it decides whether a cancellation ended the wait), and
//! created fds are `CLOEXEC` and owned. nix covers `read`/`write`; the rest use `libc`:
//! nix has no `preadv2`/`pwritev2`, the runtime builds it without its `socket` and `fs`
//! features, and nix's `PollFd` cannot have its `revents` copied back, which [`PollFd`] here
//! can.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
pub use nix::poll::PollFlags;

/// One entry of a [`ppoll`] set: an fd borrowed for `'fd`, the events asked for, and the
/// events returned (`struct pollfd`, which it wraps).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct PollFd<'fd> {
    raw: libc::pollfd,
    _fd: PhantomData<BorrowedFd<'fd>>,
}

impl<'fd> PollFd<'fd> {
    /// Wait for `events` on `fd` (`POLLERR`, `POLLHUP` and `POLLNVAL` are always reported).
    pub fn new(fd: BorrowedFd<'fd>, events: PollFlags) -> Self {
        PollFd {
            raw: libc::pollfd {
                fd: fd.as_raw_fd(),
                events: events.bits(),
                revents: 0,
            },
            _fd: PhantomData,
        }
    }

    /// The fd.
    pub fn fd(&self) -> BorrowedFd<'fd> {
        // SAFETY: `raw.fd` came from a `BorrowedFd<'fd>` (`new`), so it stays open for 'fd.
        unsafe { BorrowedFd::borrow_raw(self.raw.fd) }
    }

    /// The events asked for.
    pub fn events(&self) -> PollFlags {
        PollFlags::from_bits_retain(self.raw.events)
    }

    /// The events the last poll returned (empty before any, or if none).
    pub fn revents(&self) -> PollFlags {
        PollFlags::from_bits_retain(self.raw.revents)
    }

    /// Set the returned events (to copy a result from one set to another).
    pub fn set_revents(&mut self, revents: PollFlags) {
        self.raw.revents = revents.bits();
    }
}

impl std::fmt::Debug for PollFd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollFd")
            .field("fd", &self.raw.fd)
            .field("events", &self.events())
            .field("revents", &self.revents())
            .finish()
    }
}

/// Wait until an fd of `fds` is ready or `timeout` passes (`None`: no limit); returns how
/// many entries have non-empty `revents`. `ppoll(fds, n, timeout, NULL)`; man ppoll(2): the
/// timeout has nanosecond resolution (rounded up to the timer's), unlike `poll`'s
/// milliseconds. Never restarted after a signal handler, whatever `SA_RESTART` says
/// (signal(7)): `EINTR`.
pub fn ppoll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> Result<usize, Errno> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos()),
    });
    let tsp = ts
        .as_ref()
        .map_or(core::ptr::null(), |t| t as *const libc::timespec);
    let n = libc::nfds_t::try_from(fds.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `PollFd` is a transparent `struct pollfd` and `fds` is a valid, writable array
    // of `n` of them; `tsp` is null or points to a timespec that outlives the call; a null
    // sigmask leaves the signal mask alone.
    let r = unsafe { libc::ppoll(fds.as_mut_ptr().cast(), n, tsp, core::ptr::null()) };
    Errno::result(r).map(|r| r as usize)
}

/// Whether `fd` has one of `events` (or an error, hang-up or is invalid) right now: a
/// [`ppoll`] with a zero timeout. A failed poll (`ENOMEM`) reads as ready, so that the
/// caller makes the call and reports its error; `EINTR` is retried.
pub fn ready_now(fd: BorrowedFd<'_>, events: PollFlags) -> bool {
    let mut set = [PollFd::new(fd, events)];
    loop {
        match ppoll(&mut set, Some(Duration::ZERO)) {
            Ok(n) => return n > 0,
            Err(Errno::EINTR) => {}
            Err(_) => return true,
        }
    }
}

/// Read without sleeping: `preadv2(fd, {buf}, 1, -1, RWF_NOWAIT)` (offset -1: the file
/// position, as `read`); man preadv2(2). `EAGAIN`: no data without waiting (an empty pipe or
/// socket, or file data not in the page cache). `EOPNOTSUPP`: the file does not support
/// `RWF_NOWAIT` (`EINVAL` before Linux 4.14): use [`ready_now`] and [`read`].
pub fn read_nowait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec describing `buf`, writable for its length, alive during the call.
    let r = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
    Errno::result(r).map(|n| n as usize)
}

/// Write without sleeping: `pwritev2(fd, {buf}, 1, -1, RWF_NOWAIT)`; man pwritev2(2). As
/// [`read_nowait`]: `EAGAIN` (a full pipe or socket buffer; may also be a short count),
/// `EOPNOTSUPP` (e.g. eventfds, buffered writes on most file systems).
pub fn write_nowait(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec describing `buf`, readable for its length (pwritev2 only reads it),
    // alive during the call.
    let r = unsafe { libc::pwritev2(fd.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
    Errno::result(r).map(|n| n as usize)
}

/// `read(2)`: sleeps on an empty pipe or socket unless the fd is `O_NONBLOCK` (`EAGAIN`).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    nix::unistd::read(fd, buf)
}

/// `write(2)`: sleeps on a full pipe or socket buffer unless the fd is `O_NONBLOCK`.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno> {
    nix::unistd::write(fd, buf)
}

/// `recv(fd, buf, len, flags | MSG_DONTWAIT)`; man recv(2). `EAGAIN`: nothing to receive.
pub fn recv_nowait(fd: BorrowedFd<'_>, buf: &mut [u8], flags: i32) -> Result<usize, Errno> {
    // SAFETY: `buf` is writable for its length and alive during the call.
    let r = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    Errno::result(r).map(|n| n as usize)
}

/// `send(fd, buf, len, flags | MSG_DONTWAIT | MSG_NOSIGNAL)`; man send(2). `EAGAIN`: no room
/// in the socket buffer. `MSG_NOSIGNAL`: a peer that closed gives `EPIPE`, never `SIGPIPE`
/// (as std's `TcpStream::write`).
pub fn send_nowait(fd: BorrowedFd<'_>, buf: &[u8], flags: i32) -> Result<usize, Errno> {
    // SAFETY: `buf` is readable for its length and alive during the call.
    let r = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    Errno::result(r).map(|n| n as usize)
}

/// `accept4(fd, NULL, NULL, SOCK_CLOEXEC)`; man accept4(2). The new socket is blocking
/// (Linux does not inherit `O_NONBLOCK`). Sleeps if no connection is pending and the
/// listener is blocking; `EAGAIN` if it is `O_NONBLOCK`.
pub fn accept(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    // SAFETY: null address and length pointers are allowed (the peer address is not wanted).
    let r = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    // SAFETY: on success accept4 returns a new fd that nothing else owns.
    Errno::result(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking stream socket of `domain`:
/// `socket(domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)`; man socket(2).
fn socket(domain: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: no pointers.
    let r = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    // SAFETY: on success socket returns a new fd that nothing else owns.
    Errno::result(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking, `CLOEXEC` TCP socket of `addr`'s family (`AF_INET` or `AF_INET6`), for
/// [`connect_inet`]. socket(2).
pub fn inet_socket(addr: &SocketAddr) -> Result<OwnedFd, Errno> {
    socket(match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    })
}

/// A non-blocking, `CLOEXEC` Unix stream socket, for [`connect_unix`]. socket(2), unix(7).
pub fn unix_socket() -> Result<OwnedFd, Errno> {
    socket(libc::AF_UNIX)
}

/// `connect(fd, addr)` for an IPv4 or IPv6 address; man connect(2). On a non-blocking
/// socket: `EINPROGRESS` (wait for `POLLOUT`, then [`socket_error`]).
pub fn connect_inet(fd: BorrowedFd<'_>, addr: &SocketAddr) -> Result<(), Errno> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
            unsafe { core::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sin) };
            core::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { core::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6) };
            core::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `ss` holds a valid address of `len` bytes, alive during the call.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const ss).cast(),
            len as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

/// `connect(fd, {AF_UNIX, path})`; man connect(2), unix(7). A path starting with a NUL byte
/// names an abstract socket. `ENAMETOOLONG` if it does not fit `sun_path`. On a non-blocking
/// socket `EAGAIN` means the listener's backlog is full (nothing is in progress: retry).
pub fn connect_unix(fd: BorrowedFd<'_>, path: &Path) -> Result<(), Errno> {
    // SAFETY: all-zero bytes are a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    let abstract_name = bytes.first() == Some(&0);
    // A pathname needs its terminating NUL; an abstract name is counted exactly.
    if bytes.len() + usize::from(!abstract_name) > sun.sun_path.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for (d, &s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    let len = core::mem::offset_of!(libc::sockaddr_un, sun_path)
        + bytes.len()
        + usize::from(!abstract_name);
    // SAFETY: `sun` holds a valid address of `len` bytes, alive during the call.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const sun).cast(),
            len as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

/// Take the socket's pending error: `getsockopt(fd, SOL_SOCKET, SO_ERROR)`; man
/// getsockopt(2), socket(7). `Ok(None)`: no error (a non-blocking connect succeeded).
pub fn socket_error(fd: BorrowedFd<'_>) -> Result<Option<Errno>, Errno> {
    let mut err: libc::c_int = 0;
    let mut len = core::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes of the sizes passed.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &mut len,
        )
    };
    Errno::result(r)?;
    Ok((err != 0).then(|| Errno::from_raw(err)))
}

/// Set or clear `O_NONBLOCK` on the open file description of `fd` (shared by its dups);
/// returns whether it was set before. `fcntl(F_GETFL)` then, if it changes,
/// `fcntl(F_SETFL)`; man fcntl(2).
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> Result<bool, Errno> {
    // SAFETY: F_GETFL takes no pointer.
    let flags = Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let was = flags & libc::O_NONBLOCK != 0;
    if was != on {
        let new = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: F_SETFL takes an int, no pointer.
        Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, new) })?;
    }
    Ok(was)
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn nowait_read_on_a_pipe_says_eagain_then_reads() {
        let (r, mut w) = std::io::pipe().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(read_nowait(r.as_fd(), &mut buf), Err(Errno::EAGAIN));
        assert!(!ready_now(r.as_fd(), PollFlags::POLLIN));
        w.write_all(b"abc").unwrap();
        assert!(ready_now(r.as_fd(), PollFlags::POLLIN));
        assert_eq!(read_nowait(r.as_fd(), &mut buf), Ok(3));
        assert_eq!(&buf[..3], b"abc");
        drop(w);
        // EOF is not "would block".
        assert_eq!(read_nowait(r.as_fd(), &mut buf), Ok(0));
    }

    #[test]
    fn ppoll_times_out_and_reports_revents() {
        let (r, mut w) = std::io::pipe().unwrap();
        let mut set = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        assert_eq!(ppoll(&mut set, Some(Duration::from_micros(100))), Ok(0));
        assert!(set[0].revents().is_empty());
        w.write_all(b"x").unwrap();
        assert_eq!(ppoll(&mut set, None), Ok(1));
        assert!(set[0].revents().contains(PollFlags::POLLIN));
        assert_eq!(set[0].fd().as_raw_fd(), r.as_fd().as_raw_fd());
    }

    #[test]
    fn nonblocking_flag_round_trip() {
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(set_nonblocking(r.as_fd(), true), Ok(false));
        assert_eq!(set_nonblocking(r.as_fd(), true), Ok(true));
        let mut buf = [0u8; 1];
        assert_eq!(read(r.as_fd(), &mut buf), Err(Errno::EAGAIN));
        assert_eq!(set_nonblocking(r.as_fd(), false), Ok(true));
    }

    #[test]
    fn unix_path_too_long() {
        let s = unix_socket().unwrap();
        let long = "x".repeat(200);
        assert_eq!(
            connect_unix(s.as_fd(), Path::new(&long)),
            Err(Errno::ENAMETOOLONG)
        );
    }
}
