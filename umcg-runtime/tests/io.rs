//! `umcg_runtime::io` and `umcg_runtime::cancel`: wrappers that yield the server only when
//! they would block (proved on one server without preemption, where a wrapper that kept its
//! server would deadlock), TCP and Unix loopback, `EINTR` retry, and bulk cancellation of
//! 1,000 blocked workers with no fd, registration or worker left behind.
//!
//! Tests run one at a time (`SERIAL`): the fd-count checks read `/proc/self/fd` for the
//! whole process. No timing asserts: times are printed; waits are bounded by watchdogs.
#![cfg(not(umcg_loom))]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use umcg_runtime::cancel::{CancelToken, Cancelled};
use umcg_runtime::io::{self, PollFd, PollFlags, Yielding};
use umcg_runtime::sys::signal::{self, Signal};
use umcg_runtime::{Runtime, sys};

/// One test at a time (fd counts are process-wide).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    common::watchdog("io test", Duration::from_secs(240));
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts the process unless dropped within `limit`: "this phase ends promptly".
struct Bound {
    tx: Option<mpsc::Sender<()>>,
    h: Option<thread::JoinHandle<()>>,
}

fn bound(what: &'static str, limit: Duration) -> Bound {
    let (tx, rx) = mpsc::channel::<()>();
    let h = thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("io test: {what} did not finish within {limit:?}; aborting");
            std::process::abort();
        }
    });
    Bound {
        tx: Some(tx),
        h: Some(h),
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
    }
}

/// Poll `cond` until it holds (bounded: fails naming `what`).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "timed out waiting for: {what}"
        );
        thread::sleep(Duration::from_micros(200));
    }
}

/// A runtime with one server and no preemption: a worker that sleeps in the kernel without
/// the block hook holds the only server for ever (a time slice would rescue it by kicking
/// it off the CPU, hiding the bug).
fn one_server() -> Runtime {
    Runtime::builder()
        .servers(1)
        .time_slice(None)
        .build()
        .expect("runtime")
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Whether thread `tid` is asleep in the kernel (`S` in `/proc/self/task/<tid>/stat`).
fn is_sleeping(tid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        == Some("S")
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

#[test]
fn pipe_ping_pong_between_workers_on_one_server() {
    let _s = serial();
    let rt = one_server();
    let (a_rx, b_tx) = std::io::pipe().unwrap(); // b -> a
    let (b_rx, a_tx) = std::io::pipe().unwrap(); // a -> b
    const ROUNDS: u32 = 1000;
    // Each side reads before the other has written at least once per round: every round
    // has a wrapper that would block while the other worker needs the server.
    let b = rt.spawn(move || {
        let mut buf = [0u8; 4];
        for i in 0..ROUNDS {
            assert_eq!(io::read(&b_rx, &mut buf).unwrap(), 4);
            assert_eq!(u32::from_le_bytes(buf), i);
            assert_eq!(io::write(&b_tx, &(i + 1).to_le_bytes()).unwrap(), 4);
        }
    });
    let a = rt.spawn(move || {
        let mut buf = [0u8; 4];
        for i in 0..ROUNDS {
            assert_eq!(io::write(&a_tx, &i.to_le_bytes()).unwrap(), 4);
            assert_eq!(io::read(&a_rx, &mut buf).unwrap(), 4);
            assert_eq!(u32::from_le_bytes(buf), i + 1);
        }
    });
    a.join().unwrap();
    b.join().unwrap();
    rt.shutdown().unwrap();
}

/// The reader is observed asleep (in the wrapper's poll) before the writer exists; on one
/// server the writer then runs only if the wrapper gave the server back.
#[test]
fn blocked_reader_yields_the_only_server_to_the_writer() {
    let _s = serial();
    let rt = one_server();
    let (r, w) = std::io::pipe().unwrap();
    let tid = Arc::new(AtomicU32::new(0));
    let t2 = tid.clone();
    let reader = rt.spawn(move || {
        t2.store(umcg_runtime::current().unwrap().tid(), Ordering::Release);
        let mut buf = [0u8; 5];
        let n = io::read(&r, &mut buf).unwrap();
        buf[..n].to_vec()
    });
    wait_for("the reader to sleep", || {
        let t = tid.load(Ordering::Acquire);
        t != 0 && is_sleeping(t)
    });
    let writer = rt.spawn(move || io::write(&w, b"hello").unwrap());
    assert_eq!(writer.join().unwrap(), 5);
    assert_eq!(reader.join().unwrap(), b"hello");
    rt.shutdown().unwrap();
}

/// 4 MiB through one pipe (64 KiB of buffer): the writer's wrapper blocks on a full pipe,
/// the reader's on an empty one, many times over, on one server.
#[test]
fn bulk_transfer_through_a_pipe_with_std_traits() {
    let _s = serial();
    let rt = one_server();
    let (r, w) = std::io::pipe().unwrap();
    const LEN: usize = 4 << 20;
    let writer = rt.spawn(move || {
        let data: Vec<u8> = (0..LEN).map(pattern).collect();
        let mut w = Yielding::new(w);
        w.write_all(&data).unwrap();
    });
    let reader = rt.spawn(move || {
        let mut r = Yielding::new(r);
        let mut got = vec![0u8; LEN];
        r.read_exact(&mut got).unwrap();
        // Then EOF (the writer's end is dropped when its job ends).
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        (got, rest.len())
    });
    writer.join().unwrap();
    let (got, extra) = reader.join().unwrap();
    assert_eq!(extra, 0);
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i)));
    rt.shutdown().unwrap();
}

/// accept/connect/send/recv on 127.0.0.1, one server: the acceptor waits for clients that
/// can only run if it gave the server back, and the other way round.
#[test]
fn tcp_loopback_accept_connect_send_recv() {
    let _s = serial();
    let rt = one_server();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 50;
    const MSG: usize = 1000;
    let server = rt.spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..CLIENTS {
            let (s, peer) = io::accept_tcp(&listener).unwrap();
            assert_eq!(peer.ip(), Ipv4Addr::LOCALHOST);
            conns.push(umcg_runtime::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut echoed = 0;
                loop {
                    let n = io::recv(&s, &mut buf, 0).unwrap();
                    if n == 0 {
                        return echoed;
                    }
                    let mut off = 0;
                    while off < n {
                        off += io::send(&s, &buf[off..n], 0).unwrap();
                    }
                    echoed += n;
                }
            }));
        }
        conns.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            rt.spawn(move || {
                let s = io::connect_tcp(addr).unwrap();
                for round in 0..ROUNDS {
                    let msg: Vec<u8> = (0..MSG).map(|i| pattern(i + c * 7 + round)).collect();
                    let mut off = 0;
                    while off < MSG {
                        off += io::send(&s, &msg[off..], 0).unwrap();
                    }
                    let mut got = vec![0u8; MSG];
                    let mut off = 0;
                    while off < MSG {
                        let n = io::recv(&s, &mut got[off..], 0).unwrap();
                        assert_ne!(n, 0, "early EOF");
                        off += n;
                    }
                    assert_eq!(got, msg);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(server.join().unwrap(), CLIENTS * ROUNDS * MSG);
    rt.shutdown().unwrap();
}

/// `Yielding<TcpStream>` with `write_all`/`read_exact` (`pwritev2`/`preadv2` with
/// `RWF_NOWAIT` on sockets), and the raw `connect` on a std-created socket.
#[test]
fn tcp_through_std_traits_and_raw_connect() {
    let _s = serial();
    let rt = one_server();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    const LEN: usize = 1 << 20;
    let server = rt.spawn(move || {
        let (s, _) = io::accept_tcp(&listener).unwrap();
        let s = Yielding::new(s);
        let mut got = vec![0u8; LEN];
        (&s).read_exact(&mut got).unwrap();
        (&s).write_all(&got).unwrap();
        // Second connection: made with the raw `connect`.
        let fd = io::accept(&listener).unwrap();
        io::write(&fd, b"raw").unwrap()
    });
    let client = rt.spawn(move || {
        let s = Yielding::new(io::connect_tcp(addr).unwrap());
        let data: Vec<u8> = (0..LEN).map(pattern).collect();
        // Write everything, then read the echo: the 1 MiB exceeds the socket buffers, so
        // the writer blocks until the server reads, on one server.
        (&s).write_all(&data).unwrap();
        let mut got = vec![0u8; LEN];
        (&s).read_exact(&mut got).unwrap();
        assert_eq!(got, data);
        // A blocking socket, connected by the raw wrapper, which leaves it blocking.
        let fd = sys::poll::inet_socket(&addr).unwrap();
        sys::poll::set_nonblocking(fd.as_fd(), false).unwrap();
        io::connect(&fd, &addr).unwrap();
        assert_eq!(sys::poll::set_nonblocking(fd.as_fd(), false), Ok(false));
        let mut buf = [0u8; 3];
        Yielding::new(fd).read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&client.join().unwrap(), b"raw");
    assert_eq!(server.join().unwrap(), 3);
    rt.shutdown().unwrap();
}

/// Unix sockets: a pair through `Yielding`, and a listener with `accept_unix`/`connect_unix`.
#[test]
fn unix_stream_pair_and_listener() {
    let _s = serial();
    let rt = one_server();
    let (x, y) = UnixStream::pair().unwrap();
    let a = rt.spawn(move || {
        let mut buf = [0u8; 4];
        Yielding::new(&x).read_exact(&mut buf).unwrap();
        Yielding::new(&x).write_all(&buf.map(|b| b + 1)).unwrap();
    });
    let b = rt.spawn(move || {
        Yielding::new(&y).write_all(&[1, 2, 3, 4]).unwrap();
        let mut buf = [0u8; 4];
        Yielding::new(&y).read_exact(&mut buf).unwrap();
        buf
    });
    a.join().unwrap();
    assert_eq!(b.join().unwrap(), [2, 3, 4, 5]);

    let path = std::env::temp_dir().join(format!("umcg-io-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let acceptor = rt.spawn(move || {
        let s = io::accept_unix(&listener).unwrap();
        let mut buf = [0u8; 2];
        Yielding::new(&s).read_exact(&mut buf).unwrap();
        buf
    });
    let p2 = path.clone();
    let connector = rt.spawn(move || {
        let s = io::connect_unix(&p2).unwrap();
        io::send(&s, b"ok", 0).unwrap()
    });
    assert_eq!(connector.join().unwrap(), 2);
    assert_eq!(&acceptor.join().unwrap(), b"ok");
    std::fs::remove_file(&path).unwrap();
    rt.shutdown().unwrap();
}

#[test]
fn poll_and_sleep_wrappers() {
    let _s = serial();
    let rt = one_server();
    let (r, w) = std::io::pipe().unwrap();
    let timed_done = Arc::new(AtomicBool::new(false));
    let td = timed_done.clone();
    let h = rt.spawn(move || {
        let mut set = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        // Nothing to read (no writer exists yet): the timeout ends it.
        let timed_out = io::poll(&mut set, Some(Duration::from_millis(2))).unwrap();
        let empty = set[0].revents().is_empty();
        io::sleep(Duration::from_millis(1)).unwrap();
        io::sleep(Duration::ZERO).unwrap();
        td.store(true, Ordering::Release);
        // Then wait without a timeout for the writer, a worker of the same server.
        let ready = io::poll(&mut set, None).unwrap();
        (timed_out, empty, ready, set[0].revents())
    });
    wait_for("the timed poll", || timed_done.load(Ordering::Acquire));
    let w = rt.spawn(move || io::write(&w, b"x").unwrap());
    assert_eq!(w.join().unwrap(), 1);
    let (timed_out, empty, ready, revents) = h.join().unwrap();
    assert_eq!((timed_out, empty, ready), (0, true, 1));
    assert!(revents.contains(PollFlags::POLLIN));
    rt.shutdown().unwrap();
}

/// Outside a runtime the wrappers block the thread (and cancellation works there too).
#[test]
fn plain_threads_block_and_cancel() {
    let _s = serial();
    let (r, w) = std::io::pipe().unwrap();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 3];
        let n = io::read(&r, &mut buf).unwrap();
        (n, buf, r)
    });
    io::write(&w, b"abc").unwrap();
    let (n, buf, r) = reader.join().unwrap();
    assert_eq!((n, &buf), (3, b"abc"));

    let token = CancelToken::new();
    let t = token.clone();
    let reader = thread::spawn(move || t.run(|| io::read(&r, &mut [0u8; 1])));
    wait_for("the thread to wait", || token.waiters() == 1);
    token.cancel();
    let e = reader.join().unwrap().unwrap_err();
    assert!(Cancelled::is(&e), "{e}");
    assert_eq!(token.waiters(), 0);
    drop(w);
}

static USR2: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_usr2(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    USR2.fetch_add(1, Ordering::Relaxed);
}

/// A handler installed without `SA_RESTART` ends the wrapper's `ppoll` with `EINTR` (poll
/// is never restarted anyway): the wrapper retries and returns the data, not `EINTR`.
#[test]
fn eintr_is_retried() {
    let _s = serial();
    // SAFETY: the handler only bumps an atomic; SIGUSR2 is used by nothing else in this
    // binary, and the old action is restored below.
    let old = unsafe { signal::install_handler(Signal::SIGUSR2, count_usr2) }.unwrap();
    let rt = one_server();
    let (r, w) = std::io::pipe().unwrap();
    let tid = Arc::new(AtomicU32::new(0));
    let t2 = tid.clone();
    let reader = rt.spawn(move || {
        t2.store(umcg_runtime::current().unwrap().tid(), Ordering::Release);
        let mut buf = [0u8; 2];
        let n = io::read(&r, &mut buf).unwrap();
        (n, buf)
    });
    let base = USR2.load(Ordering::Relaxed);
    for i in 1..=5 {
        // Asleep in the wrapper's poll (no data is written before the loop ends, so the
        // worker cannot be anywhere else but on its way back into the poll).
        wait_for("the reader to sleep", || {
            let t = tid.load(Ordering::Acquire);
            t != 0 && is_sleeping(t)
        });
        sys::tgkill(tid.load(Ordering::Acquire), Signal::SIGUSR2).unwrap();
        wait_for("the signal to be handled", || {
            USR2.load(Ordering::Relaxed) == base + i
        });
    }
    assert!(!reader.is_finished());
    io::write(&w, b"ok").unwrap();
    assert_eq!(reader.join().unwrap(), (2, *b"ok"));
    rt.shutdown().unwrap();
    // SAFETY: puts back the disposition this binary had.
    unsafe { signal::restore_action(Signal::SIGUSR2, &old) }.unwrap();
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit to read; raising the soft limit up to the hard one
        // needs no privilege.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    lim.rlim_cur
}

/// 1,000 workers on 2 servers, each blocked reading its own empty pipe inside one token's
/// scope; one `cancel()` ends every read with the cancellation error. Then: no waiter
/// left, the open-fd count back to where it started, and the workers exit down to the pool.
#[test]
fn bulk_cancel_of_1000_blocked_readers() {
    let _s = serial();
    const POOL: usize = 16;
    let limit = raise_nofile_limit();
    // Two fds per pipe, plus headroom for the runtime, the harness and the token.
    let n = 1000.min((limit.saturating_sub(200) / 2) as usize);
    if n < 1000 {
        eprintln!("RLIMIT_NOFILE hard limit {limit}: using {n} pipes instead of 1000");
    }
    assert!(
        n >= 100,
        "RLIMIT_NOFILE hard limit {limit} is too low for this test"
    );
    let rt = Runtime::builder()
        .servers(2)
        .max_pooled_workers(POOL)
        .build()
        .expect("runtime");
    let fds_before = open_fds();
    let token = CancelToken::new();
    let mut writers = Vec::with_capacity(n);
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (r, w) = std::io::pipe().unwrap();
            writers.push(w);
            let t = token.clone();
            rt.spawn(move || t.run(|| io::read(&r, &mut [0u8; 8])))
        })
        .collect();
    {
        let _b = bound("1,000 workers arming", Duration::from_secs(120));
        wait_for("every worker to wait", || token.waiters() == n);
    }
    assert!(rt.live_workers() >= n);
    let t0 = Instant::now();
    token.cancel();
    {
        let _b = bound("cancellation of 1,000 readers", Duration::from_secs(60));
        for h in handles {
            let e = h.join().expect("worker").expect_err("read returned data");
            assert!(Cancelled::is(&e), "{e}");
        }
    }
    eprintln!(
        "bulk cancel: {n} blocked reads ended in {:?} ({:?})",
        t0.elapsed(),
        umcg_runtime::kernel::idle_wakeup()
    );
    assert_eq!(token.waiters(), 0);
    drop(writers);
    drop(token);
    // The readers went with their jobs, the token's eventfd with its last clone.
    assert_eq!(open_fds(), fds_before, "fds leaked");
    let _b = bound("workers leaving", Duration::from_secs(60));
    wait_for("workers beyond the pool to exit", || {
        rt.live_workers() <= POOL
    });
    rt.shutdown().unwrap();
}

/// `cancel()` racing with every step of a wrapped read (before the scope, during the
/// check, while arming, in the poll): every read ends with the cancellation error.
#[test]
fn cancel_racing_with_arming_is_never_lost() {
    let _s = serial();
    let rt = Runtime::builder().servers(2).build().expect("runtime");
    let (r, _w) = std::io::pipe().unwrap();
    let r = Arc::new(r);
    let _b = bound("racing cancellations", Duration::from_secs(120));
    for i in 0..500u32 {
        let token = CancelToken::new();
        let (t, r) = (token.clone(), r.clone());
        let started = Arc::new(AtomicBool::new(false));
        let s2 = started.clone();
        let h = rt.spawn(move || {
            s2.store(true, Ordering::Release);
            t.run(|| io::read(&*r, &mut [0u8; 1]))
        });
        // Vary where the cancel lands: right away, or after the worker started plus a spin.
        if i % 2 == 1 {
            while !started.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            for _ in 0..(i * 37 % 5000) {
                std::hint::spin_loop();
            }
        }
        token.cancel();
        let e = h.join().unwrap().unwrap_err();
        assert!(Cancelled::is(&e), "iteration {i}: {e}");
        assert_eq!(token.waiters(), 0);
    }
    rt.shutdown().unwrap();
}

/// One token ends a sleep, an accept and a poll of three workers; a cancelled scope fails
/// a call at once even when it could complete; nested scopes watch every token.
#[test]
fn cancel_sleep_accept_poll_and_scopes() {
    let _s = serial();
    let rt = Runtime::builder().servers(2).build().expect("runtime");
    let token = CancelToken::new();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let (r, w) = std::io::pipe().unwrap();
    let r = Arc::new(r);
    let t = token.clone();
    let sleeper = rt.spawn(move || t.run(|| io::sleep(Duration::from_secs(3600))));
    let t = token.clone();
    let acceptor = rt.spawn(move || t.run(|| io::accept_tcp(&listener).map(drop)));
    let (t, r2) = (token.clone(), r.clone());
    let poller = rt.spawn(move || {
        t.run(|| {
            let mut set = [PollFd::new(r2.as_fd(), PollFlags::POLLIN)];
            io::poll(&mut set, None)
        })
    });
    wait_for("three waiters", || token.waiters() == 3);
    token.cancel();
    for e in [
        sleeper.join().unwrap().unwrap_err(),
        acceptor.join().unwrap().unwrap_err(),
        poller.join().unwrap().unwrap_err(),
    ] {
        assert!(Cancelled::is(&e), "{e}");
    }
    assert_eq!(token.waiters(), 0);

    // Data is ready, but the scope is cancelled: the call fails and the data stays.
    io::write(&w, b"d").unwrap();
    let (t, r2) = (token.clone(), r.clone());
    let e = rt
        .spawn(move || t.run(|| io::read(&*r2, &mut [0u8; 1])))
        .join()
        .unwrap()
        .unwrap_err();
    assert!(Cancelled::is(&e));
    // Nested: the outer token is live, the inner one cancelled.
    let outer = CancelToken::new();
    let (o, t, r2) = (outer.clone(), token.clone(), r.clone());
    let got = rt
        .spawn(move || {
            o.run(|| {
                let inner = t.run(|| io::read(&*r2, &mut [0u8; 1]));
                let mut buf = [0u8; 1];
                let outer = io::read(&*r2, &mut buf).map(|n| (n, buf[0]));
                (inner.is_err_and(|e| Cancelled::is(&e)), outer.unwrap())
            })
        })
        .join()
        .unwrap();
    assert_eq!(got, (true, (1, b'd')));
    rt.shutdown().unwrap();
}

/// A closed socket address: the connect wrapper reports the error of the handshake.
#[test]
fn connect_errors_are_reported() {
    let _s = serial();
    let rt = one_server();
    // Bind then drop: nobody listens on the port now.
    let addr: SocketAddr = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let e = rt
        .spawn(move || io::connect_tcp(addr).map(drop))
        .join()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    rt.shutdown().unwrap();
}

static USR1: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_usr1(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    USR1.fetch_add(1, Ordering::Relaxed);
}

/// Regression test (hazard H5 in `umcg_runtime::blocking`, not in `io`): a signal
/// whose handler has no `SA_RESTART` (here SIGUSR1) that lands while a worker waits in the
/// wake hook (unblocked, IDLE, queued, its only server busy) ends the hook early, and
/// `blocking` returns to user code while the worker is still IDLE and queued: it runs
/// alongside the worker that holds the only server, and a server later "runs" it again
/// (if it exited meanwhile: `server wait failed: ESRCH`, the server thread panics).
/// Fixed in `kernel::blocking`, which now waits on after an interrupted hook until a server
/// runs the worker (a bare `block_end` keeps v0.3's H5 behaviour for C callers).
#[test]
fn signal_in_the_wake_hook_must_not_end_blocking_early() {
    let _s = serial();
    // SAFETY: the handler only bumps an atomic; SIGUSR1 is used by nothing else in this binary.
    let old = unsafe { signal::install_handler(Signal::SIGUSR1, count_usr1) }.unwrap();
    let rt = Runtime::builder()
        .servers(1)
        .time_slice(None)
        .max_pooled_workers(4)
        .build()
        .unwrap();
    let gate = Arc::new(AtomicU32::new(0));
    let tid = Arc::new(AtomicU32::new(0));
    let past_gate = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (g, t, p, d) = (gate.clone(), tid.clone(), past_gate.clone(), done.clone());
    let blocker = rt.spawn(move || {
        t.store(umcg_runtime::current().unwrap().tid(), Ordering::Release);
        umcg_runtime::blocking(|| {
            while g.load(Ordering::Acquire) == 0 {
                sys::futex_wait(&g, 0, None);
            }
            p.store(true, Ordering::Release);
        });
        d.store(true, Ordering::Release);
    });
    wait_for("the blocker to sleep", || {
        let t = tid.load(Ordering::Acquire);
        t != 0 && is_sleeping(t)
    });
    let spinning = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (sp, st, d2) = (spinning.clone(), stop.clone(), done.clone());
    // Holds the only server (no preemption) until told to stop.
    let spinner = rt.spawn(move || {
        sp.store(true, Ordering::Release);
        let mut saw_blocker_run = false;
        while !st.load(Ordering::Acquire) {
            saw_blocker_run |= d2.load(Ordering::Acquire);
        }
        saw_blocker_run
    });
    wait_for("the spinner to run", || spinning.load(Ordering::Acquire));
    gate.store(1, Ordering::Release);
    sys::futex_wake(&gate, i32::MAX);
    let t = tid.load(Ordering::Acquire);
    // Past the gate and asleep again: in the wake hook, waiting for the busy server.
    wait_for("the blocker in the wake hook", || {
        past_gate.load(Ordering::Acquire) && is_sleeping(t)
    });
    let base = USR1.load(Ordering::Relaxed);
    sys::tgkill(t, Signal::SIGUSR1).unwrap();
    // Handled, then either asleep again in the hook (correct) or released (the bug).
    wait_for("the signal to be handled", || {
        USR1.load(Ordering::Relaxed) > base && (done.load(Ordering::Acquire) || is_sleeping(t))
    });
    let ran_alongside = done.load(Ordering::Acquire);
    stop.store(true, Ordering::Release);
    assert!(
        !ran_alongside,
        "`blocking` returned while its worker was IDLE and queued (H5): it ran alongside the worker that held the only server"
    );
    assert!(!spinner.join().unwrap());
    blocker.join().unwrap();
    rt.shutdown().unwrap();
    // SAFETY: puts back the disposition this binary had.
    unsafe { signal::restore_action(Signal::SIGUSR1, &old) }.unwrap();
}
