//! Blocking I/O for workers: calls that yield the server only when they would block.
//!
//! A worker that makes a plain blocking call (`read` on an empty pipe) keeps its server:
//! nothing else runs there until the call returns. [`crate::blocking`] fixes that by
//! bracketing the call with the block and wake hooks, but costs a round trip through the
//! server even when the call would have returned at once. The wrappers here do both right:
//!
//! 1. Try the call without sleeping: `preadv2`/`pwritev2` with `RWF_NOWAIT` for
//!    [`read()`]/[`write()`] (a page-cache miss counts as "would block", so a disk read yields
//!    too), `MSG_DONTWAIT` for [`recv`]/[`send`], a zero-timeout poll before [`accept`], a
//!    non-blocking `connect` for [`connect`]. For fds without `RWF_NOWAIT` support (eventfd
//!    writes, buffered file writes, some devices) a zero-timeout poll decides.
//! 2. It would block: inside [`crate::blocking`] (the server runs other workers meanwhile),
//!    `ppoll` until the fd is ready, then make the call (for generic fds the plain call, for
//!    sockets the `MSG_DONTWAIT` one; "would block" again, as when another reader took the
//!    data, polls again).
//! 3. `EINTR` is retried everywhere, unless a [`CancelToken`](crate::cancel::CancelToken) in scope was cancelled.
//!
//! The wrappers wait until the call can complete whether or not the fd is `O_NONBLOCK`
//! (they never return `WouldBlock`). Outside a runtime worker they block the thread the same
//! way, without hooks.
//!
//! # Cancellation
//!
//! Inside [`CancelToken::run`](crate::cancel::CancelToken::run), a wrapper that would block also watches the token: a
//! [`CancelToken::cancel`](crate::cancel::CancelToken::cancel) from anywhere makes it return an error for which
//! [`Cancelled::is`] holds (see [`crate::cancel`] for the design and why no cancellation is
//! lost). A call in a cancelled scope fails at once.
//!
//! # API
//!
//! - Raw fds (anything [`AsFd`]: `BorrowedFd`, `&File`, `&PipeReader`, `&TcpStream`,
//!   `&UnixStream`): [`read()`], [`write()`], [`recv`], [`send`], [`accept`], [`connect`],
//!   [`poll`], and [`sleep`].
//! - std types: [`accept_tcp`], [`connect_tcp`], [`accept_unix`], [`connect_unix`], and
//!   [`Yielding`], which implements `Read` and `Write` through these wrappers (for
//!   `read_exact`, `write_all`, `BufReader`...).
//!
//! # Limits
//!
//! - A plain call after readiness can still sleep without the fd being ready (another
//!   thread took the data or the connection first): on a *blocking* fd shared by several
//!   readers or acceptors, [`read()`] on an fd without `RWF_NOWAIT` and [`accept`] then sleep
//!   in the kernel (inside the hooks, so the server is not held, but not cancellable). Make
//!   shared fds `O_NONBLOCK` (then "would block" polls again) or give each its own worker.
//! - [`write()`] uses `write(2)`: on a socket whose peer closed that raises `SIGPIPE` (ignored
//!   by Rust programs by default); [`send`] never does.
//! - A plain call after readiness on a regular file can sleep on the disk (inside the hooks,
//!   not cancellable).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cancel::{self, Armed, Cancelled};
use crate::sys::Errno;
use crate::sys::poll as sp;
pub use crate::sys::poll::{PollFd, PollFlags};

/// What one attempt gave.
enum Attempt<T> {
    Done(io::Result<T>),
    WouldBlock,
}

/// First attempt (step 1) or attempt after the poll said ready (step 2).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    First,
    Ready,
}

fn os_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Make `call`: `EAGAIN` is "would block", `EINTR` retries unless the scope is cancelled.
fn attempt<T>(mut call: impl FnMut() -> Result<T, Errno>) -> Attempt<T> {
    loop {
        match call() {
            Ok(v) => return Attempt::Done(Ok(v)),
            Err(Errno::EAGAIN) => return Attempt::WouldBlock,
            Err(Errno::EINTR) => {
                if let Err(c) = cancel::check() {
                    return Attempt::Done(Err(c.into()));
                }
            }
            Err(e) => return Attempt::Done(Err(os_err(e))),
        }
    }
}

/// A `RWF_NOWAIT` attempt: `None` if the fd does not support the flag.
fn attempt_nowait<T>(call: impl FnMut() -> Result<T, Errno>) -> Option<Attempt<T>> {
    match attempt(call) {
        Attempt::Done(Err(e))
            if matches!(
                e.raw_os_error().map(Errno::from_raw),
                Some(Errno::EOPNOTSUPP | Errno::EINVAL)
            ) =>
        {
            None
        }
        a => Some(a),
    }
}

/// Steps 1–3 for a call on `fd` that waits for `events`.
fn drive<T>(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    mut op: impl FnMut(Phase) -> Attempt<T>,
) -> io::Result<T> {
    cancel::check()?;
    if let Attempt::Done(r) = op(Phase::First) {
        return r;
    }
    let armed = cancel::arm()?;
    crate::blocking(|| {
        loop {
            wait(Some((fd, events)), &armed, None)?;
            if let Attempt::Done(r) = op(Phase::Ready) {
                return r;
            }
        }
    })
}

/// Sleep in `ppoll` until `fd` reports one of `events` (or an error or hang-up; `Ok(true)`),
/// `deadline` passes (`Ok(false)`), or a token of `armed` is cancelled (`Err`). Retries
/// `EINTR`. Makes no hook calls: callers run it inside [`crate::blocking`].
fn wait(
    fd: Option<(BorrowedFd<'_>, PollFlags)>,
    armed: &Armed,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let mut set: Vec<PollFd<'_>> = Vec::with_capacity(1 + armed.len());
    set.extend(fd.map(|(fd, ev)| PollFd::new(fd, ev)));
    let first_token = set.len();
    set.extend(armed.fds().map(|e| PollFd::new(e, PollFlags::POLLIN)));
    loop {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match sp::ppoll(&mut set, timeout) {
            Ok(_) => {
                if set[first_token..].iter().any(|p| !p.revents().is_empty()) {
                    return Err(Cancelled.into());
                }
                if set[..first_token].iter().any(|p| !p.revents().is_empty()) {
                    return Ok(true);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Err(Errno::EINTR) => cancel::check()?,
            Err(e) => return Err(os_err(e)),
        }
    }
}

/// Read into `buf` from `fd` (a pipe, socket, file, tty...), waiting until data or EOF is
/// there; returns the count (0 at EOF). In a worker the wait yields the server. `read(2)`.
pub fn read(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    let fd = fd.as_fd();
    drive(fd, PollFlags::POLLIN, |phase| {
        if phase == Phase::First {
            match attempt_nowait(|| sp::read_nowait(fd, buf)) {
                Some(a) => return a,
                None if !sp::ready_now(fd, PollFlags::POLLIN) => return Attempt::WouldBlock,
                None => {}
            }
        }
        attempt(|| sp::read(fd, buf))
    })
}

/// Write `buf` to `fd`, waiting until at least part of it can be written; returns the count
/// (short counts as `write(2)` gives them). In a worker the wait yields the server.
pub fn write(fd: impl AsFd, buf: &[u8]) -> io::Result<usize> {
    let fd = fd.as_fd();
    drive(fd, PollFlags::POLLOUT, |phase| {
        if phase == Phase::First {
            match attempt_nowait(|| sp::write_nowait(fd, buf)) {
                Some(a) => return a,
                None if !sp::ready_now(fd, PollFlags::POLLOUT) => return Attempt::WouldBlock,
                None => {}
            }
        }
        attempt(|| sp::write(fd, buf))
    })
}

/// Receive from socket `fd` into `buf`: `recv(2)` with `flags` (`MSG_*` of libc, usually
/// 0; `MSG_PEEK` works) plus `MSG_DONTWAIT`, waiting until data or EOF is there.
pub fn recv(fd: impl AsFd, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    let fd = fd.as_fd();
    drive(fd, PollFlags::POLLIN, |_| {
        attempt(|| sp::recv_nowait(fd, buf, flags))
    })
}

/// Send `buf` on socket `fd`: `send(2)` with `flags` plus `MSG_DONTWAIT | MSG_NOSIGNAL`,
/// waiting for room; returns the count (may be short). A closed peer gives `EPIPE`, never
/// `SIGPIPE`.
pub fn send(fd: impl AsFd, buf: &[u8], flags: i32) -> io::Result<usize> {
    let fd = fd.as_fd();
    drive(fd, PollFlags::POLLOUT, |_| {
        attempt(|| sp::send_nowait(fd, buf, flags))
    })
}

/// Accept a connection on listening socket `fd`, waiting for one; the new socket is
/// blocking and `CLOEXEC`. `accept4(2)`.
pub fn accept(fd: impl AsFd) -> io::Result<OwnedFd> {
    let fd = fd.as_fd();
    drive(fd, PollFlags::POLLIN, |phase| {
        if phase == Phase::First && !sp::ready_now(fd, PollFlags::POLLIN) {
            return Attempt::WouldBlock;
        }
        attempt(|| sp::accept(fd))
    })
}

/// Connect socket `fd` to `addr`, waiting for the handshake. The socket is made
/// `O_NONBLOCK` for the `connect(2)` call and put back as it was (the flag belongs to the
/// open file description: do not use the socket from another thread meanwhile). On
/// cancellation the socket is left half-connected: drop it.
pub fn connect(fd: impl AsFd, addr: &SocketAddr) -> io::Result<()> {
    let fd = fd.as_fd();
    cancel::check()?;
    let was_nonblocking = sp::set_nonblocking(fd, true).map_err(os_err)?;
    let r = sp::connect_inet(fd, addr);
    if !was_nonblocking {
        sp::set_nonblocking(fd, false).map_err(os_err)?;
    }
    finish_connect(fd, r)
}

/// After a non-blocking `connect`: done, or wait for `POLLOUT` and take `SO_ERROR`.
fn finish_connect(fd: BorrowedFd<'_>, r: Result<(), Errno>) -> io::Result<()> {
    match r {
        Ok(()) => Ok(()),
        // EINTR: the handshake goes on in the kernel, as after EINPROGRESS (connect(2)).
        Err(Errno::EINPROGRESS | Errno::EINTR) => {
            let armed = cancel::arm()?;
            crate::blocking(|| wait(Some((fd, PollFlags::POLLOUT)), &armed, None))?;
            match sp::socket_error(fd).map_err(os_err)? {
                None => Ok(()),
                Some(e) => Err(os_err(e)),
            }
        }
        Err(e) => Err(os_err(e)),
    }
}

/// Wait until one of `fds` is ready or `timeout` passes (`None`: no limit); returns how many
/// have non-empty [`PollFd::revents`] (0: timed out). Tries a zero-timeout poll first.
/// `ppoll(2)`.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    cancel::check()?;
    loop {
        match sp::ppoll(fds, Some(Duration::ZERO)) {
            Ok(n) if n > 0 || timeout == Some(Duration::ZERO) => return Ok(n),
            Ok(_) => break,
            Err(Errno::EINTR) => cancel::check()?,
            Err(e) => return Err(os_err(e)),
        }
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let armed = cancel::arm()?;
    crate::blocking(|| {
        let mut set: Vec<PollFd<'_>> = Vec::with_capacity(fds.len() + armed.len());
        set.extend(fds.iter().copied());
        set.extend(armed.fds().map(|e| PollFd::new(e, PollFlags::POLLIN)));
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match sp::ppoll(&mut set, left) {
                Ok(n) => {
                    let (user, tokens) = set.split_at(fds.len());
                    if tokens.iter().any(|p| !p.revents().is_empty()) {
                        return Err(Cancelled.into());
                    }
                    if n > 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                        for (dst, src) in fds.iter_mut().zip(user) {
                            dst.set_revents(src.revents());
                        }
                        return Ok(n);
                    }
                }
                Err(Errno::EINTR) => cancel::check()?,
                Err(e) => return Err(os_err(e)),
            }
        }
    })
}

/// Sleep for `d` (a `ppoll` with a nanosecond timeout and no fd, or the scope's tokens
/// only); in a worker the server runs others meanwhile. `Err` only when cancelled.
pub fn sleep(d: Duration) -> io::Result<()> {
    cancel::check()?;
    if d.is_zero() {
        return Ok(());
    }
    let deadline = Instant::now() + d;
    let armed = cancel::arm()?;
    crate::blocking(|| wait(None, &armed, Some(deadline))).map(drop)
}

/// [`accept`] on a std listener: the connection and its peer's address.
pub fn accept_tcp(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let s = TcpStream::from(accept(listener)?);
    let peer = s.peer_addr()?;
    Ok((s, peer))
}

/// Connect to `addr` (no name resolution: resolve first, e.g. with `ToSocketAddrs` inside
/// [`crate::blocking`]); the stream is blocking, as std's.
pub fn connect_tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    cancel::check()?;
    let fd = sp::inet_socket(&addr).map_err(os_err)?;
    let r = sp::connect_inet(fd.as_fd(), &addr);
    finish_connect(fd.as_fd(), r)?;
    sp::set_nonblocking(fd.as_fd(), false).map_err(os_err)?;
    Ok(TcpStream::from(fd))
}

/// [`accept`] on a std Unix listener.
pub fn accept_unix(listener: &UnixListener) -> io::Result<UnixStream> {
    Ok(UnixStream::from(accept(listener)?))
}

/// Connect to the Unix stream socket at `path` (a leading NUL byte: abstract). A full
/// backlog (the one case where a Unix `connect` waits) falls back to a blocking `connect`
/// inside [`crate::blocking`], which is not cancellable.
pub fn connect_unix(path: impl AsRef<Path>) -> io::Result<UnixStream> {
    cancel::check()?;
    let fd = sp::unix_socket().map_err(os_err)?;
    let mut r = sp::connect_unix(fd.as_fd(), path.as_ref());
    if r == Err(Errno::EAGAIN) {
        sp::set_nonblocking(fd.as_fd(), false).map_err(os_err)?;
        r = crate::blocking(|| {
            loop {
                match sp::connect_unix(fd.as_fd(), path.as_ref()) {
                    Err(Errno::EINTR) => {}
                    r => return r,
                }
            }
        });
    }
    r.map_err(os_err)?;
    sp::set_nonblocking(fd.as_fd(), false).map_err(os_err)?;
    Ok(UnixStream::from(fd))
}

/// A std I/O object whose `Read` and `Write` go through [`read()`] and [`write()`], so that
/// `read_exact`, `write_all`, `BufReader`, `io::copy`... yield the server when they would
/// block (and honour a [`CancelToken`](crate::cancel::CancelToken) in scope). `&Yielding<T>` implements them too, so one
/// stream can be read and written through a shared reference.
#[derive(Debug, Default)]
pub struct Yielding<T>(pub T);

impl<T> Yielding<T> {
    /// Wrap `inner`.
    pub fn new(inner: T) -> Self {
        Yielding(inner)
    }
    /// The wrapped object.
    pub fn get_ref(&self) -> &T {
        &self.0
    }
    /// Unwrap.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: AsFd> io::Read for Yielding<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read(&self.0, buf)
    }
}

impl<T: AsFd> io::Write for Yielding<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write(&self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: AsFd> io::Read for &Yielding<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read(&self.0, buf)
    }
}

impl<T: AsFd> io::Write for &Yielding<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write(&self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: AsFd> AsFd for Yielding<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
