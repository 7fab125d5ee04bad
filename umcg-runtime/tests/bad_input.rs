//! Bad input to the emulated kernel (issue 6, reliability), through the Rust API: every errno
//! row of spec §2.3 (`umcg_ctl`) and §2.4 (`umcg_wait`) as a table, and corrupted user-space
//! lists handed to every kernel path that reads them. `tests/c/bad_input.c` does the same
//! through the C ABI; `RELIABILITY.md` ("Bad input") lists the matrix.
//!
//! # The errno matrix
//!
//! [`rows`] holds one row per input: its id, the spec step it exercises, the context it runs
//! in (an unregistered thread, a registered server, or a worker that a server runs), the call,
//! and the exact outcome the spec gives (an errno, 0, or `+1` for an unsupported
//! `api_version`). One thread per context runs its rows in order; after each row the runner
//! checks that the context is intact (still registered, state back to RUNNING) and restores
//! the fields the row changed. All rows run; the test fails listing every row that did not
//! match.
//!
//! # Corrupted lists
//!
//! [`cases`] break what a worker's wake hook reads: the idle-server list (a cycle, a garbage,
//! unmapped or unregistered node, a tagged head), the worker's own `idle_servers_ptr` and
//! `idle_workers_ptr` (null, unmapped, misaligned, tagged, a stale node address), and the
//! idle-worker head word. Each case is driven through every kernel path that walks the lists:
//! a worker's registration, the wake hook after a block ([`kernel::block_end`]), and the wake
//! hook run from a waiting worker's `umcg_wait` (a `WAKE_ONLY` aimed at it). Under
//! `OnViolation::ReturnError` each must come back as the typed violation (`EFAULT` from
//! `umcg_wait`, which has no other way to report it); under the default policy each must abort
//! the process with the violation on stderr (checked in child processes by
//! `corrupt_lists_abort_by_default`). A bad `server_tid` is the block hook's input and has
//! its own table.
//!
//! # Never a hang, never a crash
//!
//! Every context runs on a thread of its own under a watchdog ([`watched`]): a row or case
//! that does not report back within [`WATCHDOG`] fails the test, naming itself, instead of
//! hanging it. Bad addresses are chosen so that a dereference would crash the test process
//! (unmapped, `PROT_NONE`, non-canonical): the emulator must reject them before touching
//! them. The same binary runs in eventfd idle-wakeup mode with `UMCG_IDLE_WAKEUP=eventfd`.
#![cfg(not(umcg_loom))]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex, Once, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use umcg_abi::idle_servers::{self, Corruption};
use umcg_abi::idle_workers::PushError;
use umcg_abi::*;
use umcg_runtime::kernel::{self, Ctl, UmcgError, Violation, ViolationKind};
use umcg_runtime::sys::{self, Errno, signal::Signal};

// ------------------------------------------------------------------------------------------
// Outcomes and calls

/// What a call returned, in the terms the spec uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// 0.
    Done,
    /// A positive return: the highest supported `api_version`.
    Version(u32),
    /// -1 with this errno.
    Errno(Errno),
    /// A contract violation (the kernel's SIGSEGV), under `OnViolation::ReturnError`.
    Violation(ViolationKind),
}

fn out_err(e: UmcgError) -> Out {
    match e {
        UmcgError::Errno(e) => Out::Errno(e),
        UmcgError::Violation(v) => Out::Violation(v.kind),
    }
}

fn out_ctl(r: Result<Ctl, UmcgError>) -> Out {
    match r {
        Ok(Ctl::Done) => Out::Done,
        Ok(Ctl::UnsupportedApiVersion(v)) => Out::Version(v),
        Err(e) => out_err(e),
    }
}

fn out_unit(r: Result<(), UmcgError>) -> Out {
    r.map_or_else(out_err, |()| Out::Done)
}

const EINVAL: Out = Out::Errno(Errno::EINVAL);
const EFAULT: Out = Out::Errno(Errno::EFAULT);
const ESRCH: Out = Out::Errno(Errno::ESRCH);

/// `umcg_ctl(flags, t)`.
fn ctl(flags: u32, t: *const UmcgTask) -> Out {
    // SAFETY: callers pass null, addresses that the checks must reject before any
    // dereference (the emulator probes them through the kernel), or tasks that outlive their
    // registration (every runner unregisters before the task is dropped, or leaks it).
    out_ctl(unsafe { kernel::umcg_ctl(flags, t.cast_mut()) })
}

fn unregister() -> Out {
    ctl(UMCG_CTL_UNREGISTER, std::ptr::null())
}

fn wait(flags: u32, abs_timeout: u64) -> Out {
    out_unit(kernel::umcg_wait(flags, abs_timeout))
}

/// A task pointer at `addr` (which may be anything).
fn at(addr: u64) -> *const UmcgTask {
    std::ptr::with_exposed_provenance(addr as usize)
}

fn ptr(t: &UmcgTask) -> *const UmcgTask {
    t
}

fn addr_of(t: &UmcgTask) -> u64 {
    (t as *const UmcgTask).expose_provenance() as u64
}

fn registered() -> bool {
    kernel::current_tid() != 0
}

fn abs_after(d: Duration) -> u64 {
    sys::futex::realtime_now_ns() + d.as_nanos() as u64
}

/// Run `f` on a fresh thread; fail naming `what` (and the step `at` names, if set) if it does
/// not finish within [`WATCHDOG`]. A stuck thread is left behind: the test fails, it does not
/// hang.
fn watched<T: Send + 'static>(
    what: &str,
    at: &Arc<Mutex<String>>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(v) => {
            h.join().unwrap();
            v
        }
        Err(RecvTimeoutError::Timeout) => panic!(
            "{what}: no result within {WATCHDOG:?} (hang) at {}",
            at.lock().unwrap()
        ),
        Err(RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("the thread sent nothing and did not panic"),
        },
    }
}

// ------------------------------------------------------------------------------------------
// Fixtures

/// Addresses that are not readable: `hole` was mapped and is not any more (munmap); its two
/// neighbours are `PROT_NONE`. The three pages are placed low ([`BAD_PAGES_HINT`]), far below
/// where `mmap(NULL, ...)` puts anything (top-down from below the stacks, into the highest gap
/// that fits): a one-page hole among the mmap area's pages did get filled, under
/// AddressSanitizer, whose runtime maps single pages, so the "unmapped" address was readable.
struct BadPages {
    hole: u64,
    prot_none: u64,
}

fn bad_pages() -> &'static BadPages {
    static PAGES: OnceLock<BadPages> = OnceLock::new();
    PAGES.get_or_init(|| {
        let page = 4096;
        // SAFETY: a fresh anonymous private mapping; without MAP_FIXED the address is a hint
        // only, so no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::with_exposed_provenance_mut(BAD_PAGES_HINT),
                3 * page,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let hole = base.wrapping_byte_add(page);
        // SAFETY: the middle page of our own mapping; nothing references it.
        assert_eq!(unsafe { libc::munmap(hole, page) }, 0);
        BadPages {
            hole: hole.expose_provenance() as u64,
            prot_none: base.expose_provenance() as u64,
        }
    })
}

/// Where [`bad_pages`] asks for its pages (a hint): 256 MiB, below PIE executables and their
/// heap (`0x55...`), above `vm.mmap_min_addr`, and application memory (not shadow) under
/// AddressSanitizer on x86-64.
const BAD_PAGES_HINT: usize = 0x1000_0000;
/// Never mapped: above the 57-bit user address space, so non-canonical on every x86-64.
const NONCANONICAL: u64 = 0xdead_0000_0000_0000;
/// Never mapped: the kernel half.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
/// Aligned to 8 but not node-shaped (`% 64 != 16`) and not mapped.
const GARBAGE: u64 = 0x0000_1234_5678_9ab8;
/// No thread has it (above `PID_MAX_LIMIT`).
const NO_SUCH_TID: u32 = 0x7fff_fff0;

/// `n` raw registered servers, RUNNING, parked in user space until dropped. Registered
/// without writing `server_tid` (so their tasks also pass the registration checks of another
/// thread: only the "already registered" rule refuses them). Their idle-server nodes are
/// reset to `head` (the list's reset value).
struct ParkedServers {
    tids: Vec<u32>,
    tasks: Vec<usize>,
    release: Arc<Barrier>,
    threads: Vec<JoinHandle<()>>,
}

impl ParkedServers {
    fn new(n: usize, head: u64) -> Self {
        let release = Arc::new(Barrier::new(n + 1));
        let (tx, rx) = mpsc::channel();
        let threads = (0..n)
            .map(|_| {
                let (tx, release) = (tx.clone(), release.clone());
                thread::spawn(move || {
                    let task = Box::new(UmcgTask::new_server());
                    task.idle_servers_ptr.store(head, Ordering::Release);
                    assert_eq!(ctl(UMCG_CTL_REGISTER, &*task), Out::Done);
                    tx.send((sys::gettid(), addr_of(&task) as usize)).unwrap();
                    release.wait();
                    assert_eq!(unregister(), Out::Done);
                    drop(task);
                })
            })
            .collect();
        let (tids, tasks) = (0..n)
            .map(|_| rx.recv_timeout(WATCHDOG).expect("a parked server"))
            .unzip();
        ParkedServers {
            tids,
            tasks,
            release,
            threads,
        }
    }

    fn task(&self, i: usize) -> &UmcgTask {
        // SAFETY: the server thread keeps its task alive (and registered) until `drop`.
        unsafe { &*std::ptr::with_exposed_provenance::<UmcgTask>(self.tasks[i]) }
    }

    fn node(&self, i: usize) -> u64 {
        self.task(i).idle_servers_node()
    }
}

impl Drop for ParkedServers {
    fn drop(&mut self) {
        self.release.wait();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A registered worker parked in `umcg_wait` (it yielded to its server, which keeps it): its
/// idle-worker node is a registered worker's node. It has a group and a server of its own.
struct ParkedWorker {
    node: u64,
    release: mpsc::Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl ParkedWorker {
    fn new() -> Self {
        let g = Group::new();
        let (node_tx, node_rx) = mpsc::channel();
        let (release, rel_rx) = mpsc::channel::<()>();
        let g2 = g.clone();
        let worker = thread::spawn(move || {
            let w = Worker::register(&g2);
            node_tx.send(w.task().idle_workers_node()).unwrap();
            w.yield_to_server();
            w.exit();
        });
        let server = thread::spawn(move || {
            let s = Server::register(&g);
            announce(&s);
            s.wait_for_workers(Instant::now() + WATCHDOG);
            let w = g.pop_runnable().unwrap();
            assert_eq!(s.run(w).unwrap().state(), TaskState::Idle);
            let _ = rel_rx.recv();
            assert!(s.run(w).unwrap().is_locked());
        });
        let node = node_rx.recv_timeout(WATCHDOG).expect("the parked worker");
        ParkedWorker {
            node,
            release,
            threads: vec![worker, server],
        }
    }
}

impl Drop for ParkedWorker {
    fn drop(&mut self) {
        let _ = self.release.send(());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Threads that rows name: one that exited, one alive that never registers, and a parked
/// raw server.
struct Threads {
    dead: u32,
    bystander: u32,
    server: ParkedServers,
    stop_bystander: mpsc::Sender<()>,
    bystander_thread: Option<JoinHandle<()>>,
}

impl Threads {
    fn new() -> Self {
        let dead = thread::spawn(sys::gettid).join().unwrap();
        let (tid_tx, tid_rx) = mpsc::channel();
        let (stop_bystander, stop_rx) = mpsc::channel::<()>();
        let bystander_thread = thread::spawn(move || {
            tid_tx.send(sys::gettid()).unwrap();
            let _ = stop_rx.recv();
        });
        let bystander = tid_rx.recv().unwrap();
        Threads {
            dead,
            bystander,
            server: ParkedServers::new(1, 0),
            stop_bystander,
            bystander_thread: Some(bystander_thread),
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        let _ = self.stop_bystander.send(());
        if let Some(t) = self.bystander_thread.take() {
            let _ = t.join();
        }
    }
}

/// A group that nothing ever runs: the lists of worker-shaped tasks whose registration must
/// fail before the wake hook (should one get that far, it queues on this group and hangs,
/// which the watchdog reports).
fn dummy_group() -> &'static Group {
    static G: OnceLock<Arc<Group>> = OnceLock::new();
    G.get_or_init(Group::new)
}

/// Keep `t` for the rest of the process (a thread the watchdog gave up on may still use it),
/// reachable from a static: LeakSanitizer (`ci/asan.sh`) reports a bare `Box::leak` whose
/// pointer no live memory holds any more as a leak.
fn keep(t: Box<UmcgTask>) -> &'static UmcgTask {
    static KEPT: Mutex<Vec<&'static UmcgTask>> = Mutex::new(Vec::new());
    let t: &'static UmcgTask = Box::leak(t);
    KEPT.lock().unwrap().push(t);
    t
}

fn server_task() -> Box<UmcgTask> {
    Box::new(UmcgTask::new_server())
}

fn worker_task() -> Box<UmcgTask> {
    dummy_group().new_worker_task()
}

// ------------------------------------------------------------------------------------------
// The errno matrix

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctx {
    /// A thread that is not registered.
    Unregistered,
    /// A thread registered as a server (RUNNING, `server_tid` = its TID).
    Server,
    /// A worker, RUNNING under a server that waits for it in `umcg_wait`.
    Worker,
}

/// What a row sees.
struct Env<'a> {
    /// Unregistered: a valid, unregistered server-shaped task the row may edit. Server and
    /// Worker: the caller's registered task.
    me: &'a UmcgTask,
    /// A valid, unregistered worker-shaped task (lists of [`dummy_group`]) the row may edit.
    w: &'a UmcgTask,
    /// The caller's TID.
    tid: u32,
    th: &'a Threads,
}

struct Row {
    id: &'static str,
    /// The spec step (or extension) the row checks.
    spec: &'static str,
    ctx: Ctx,
    call: fn(&Env<'_>) -> Out,
    want: Out,
}

fn set_state(t: &UmcgTask, s: u32) {
    t.store_state(StateWord(s));
}

/// The errno matrix (module doc).
fn rows() -> Vec<Row> {
    use Ctx::*;
    use Out::*;
    vec![
        // ---- umcg_ctl(UNREGISTER), §2.3 unregister step 1 --------------------------------
        Row {
            id: "ctl.unregister.not_registered",
            spec: "§2.3 unregister 1",
            ctx: Unregistered,
            call: |_| unregister(),
            want: EINVAL,
        },
        Row {
            id: "ctl.unregister.not_registered_with_self",
            spec: "§2.3 unregister 1",
            ctx: Unregistered,
            call: |e| ctl(UMCG_CTL_UNREGISTER, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.unregister.with_self",
            spec: "§2.3 unregister 1",
            ctx: Server,
            call: |e| ctl(UMCG_CTL_UNREGISTER, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.unregister.with_worker_flag",
            spec: "§2.3 unregister 1 (flags == UNREGISTER exactly)",
            ctx: Server,
            call: |_| ctl(UMCG_CTL_UNREGISTER | UMCG_CTL_WORKER, std::ptr::null()),
            want: EINVAL,
        },
        Row {
            id: "ctl.unregister.with_register_flag",
            spec: "§2.3 unregister 1, register 1",
            ctx: Server,
            call: |_| ctl(UMCG_CTL_UNREGISTER | UMCG_CTL_REGISTER, std::ptr::null()),
            want: EINVAL,
        },
        Row {
            id: "ctl.unregister.all_flag_bits",
            spec: "§2.3 register 1",
            ctx: Server,
            call: |_| ctl(u32::MAX, std::ptr::null()),
            want: EINVAL,
        },
        Row {
            id: "ctl.unregister.worker_with_self",
            spec: "§2.3 unregister 1",
            ctx: Worker,
            call: |e| ctl(UMCG_CTL_UNREGISTER, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.unregister.worker_with_worker_flag",
            spec: "§2.3 unregister 1 (UNREGISTER|WORKER is a later generation's spelling)",
            ctx: Worker,
            call: |_| ctl(UMCG_CTL_UNREGISTER | UMCG_CTL_WORKER, std::ptr::null()),
            want: EINVAL,
        },
        Row {
            id: "ctl.unregister.twice",
            spec: "§2.3 unregister 1",
            ctx: Server,
            call: |e| {
                assert_eq!(unregister(), Done, "the first unregistration");
                let second = unregister();
                assert_eq!(wait(0, 0), EINVAL, "umcg_wait after unregistering");
                // Register again for the rows that follow.
                e.me.server_tid.store(0, Ordering::Relaxed);
                assert_eq!(ctl(UMCG_CTL_REGISTER, e.me), Done);
                second
            },
            want: EINVAL,
        },
        // ---- umcg_ctl(REGISTER...): flags, §2.3 register step 1 -------------------------------
        Row {
            id: "ctl.flags.zero",
            spec: "§2.3 register 1",
            ctx: Unregistered,
            call: |e| ctl(0, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.flags.worker_without_register",
            spec: "§2.3 register 1",
            ctx: Unregistered,
            call: |e| ctl(UMCG_CTL_WORKER, e.w),
            want: EINVAL,
        },
        Row {
            id: "ctl.flags.unknown_bit_0x40",
            spec: "§2.3 register 1",
            ctx: Unregistered,
            call: |e| ctl(UMCG_CTL_REGISTER | 0x40, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.flags.unknown_bit_31",
            spec: "§2.3 register 1",
            ctx: Unregistered,
            call: |e| ctl(UMCG_CTL_REGISTER | 1 << 31, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.flags.worker_and_unknown_bit",
            spec: "§2.3 register 1",
            ctx: Unregistered,
            call: |e| ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER | 0x100, e.w),
            want: EINVAL,
        },
        Row {
            id: "ctl.flags.register_and_unregister",
            spec: "§2.3 register 1",
            ctx: Unregistered,
            call: |e| ctl(UMCG_CTL_REGISTER | UMCG_CTL_UNREGISTER, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.flags.all_bits",
            spec: "§2.3 register 1",
            ctx: Unregistered,
            call: |e| ctl(u32::MAX, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.flags.checked_before_self",
            spec: "§2.3 register 1 before 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER | 0x40, std::ptr::null()),
            want: EINVAL,
        },
        // ---- double registration, §2.3 register step 2 ------------------------------------
        Row {
            id: "ctl.register_again.same_task",
            spec: "§2.3 register 2",
            ctx: Server,
            call: |e| ctl(UMCG_CTL_REGISTER, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.register_again.other_task",
            spec: "§2.3 register 2",
            ctx: Server,
            call: |_| ctl(UMCG_CTL_REGISTER, &*server_task()),
            want: EINVAL,
        },
        Row {
            id: "ctl.register_again.as_worker",
            spec: "§2.3 register 2",
            ctx: Server,
            call: |e| ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w),
            want: EINVAL,
        },
        Row {
            id: "ctl.register_again.null_self",
            spec: "§2.3 register 2 before 3",
            ctx: Server,
            call: |_| ctl(UMCG_CTL_REGISTER, std::ptr::null()),
            want: EINVAL,
        },
        Row {
            id: "ctl.register_again.unmapped_self",
            spec: "§2.3 register 2 before 3",
            ctx: Server,
            call: |_| ctl(UMCG_CTL_REGISTER, at(bad_pages().hole)),
            want: EINVAL,
        },
        Row {
            id: "ctl.register_again.worker_as_worker",
            spec: "§2.3 register 2",
            ctx: Worker,
            call: |e| ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.me),
            want: EINVAL,
        },
        Row {
            id: "ctl.register_again.worker_as_server",
            spec: "§2.3 register 2",
            ctx: Worker,
            call: |_| ctl(UMCG_CTL_REGISTER, &*server_task()),
            want: EINVAL,
        },
        Row {
            id: "ctl.register_again.worker_null_self",
            spec: "§2.3 register 2 before 3",
            ctx: Worker,
            call: |_| ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, std::ptr::null()),
            want: EINVAL,
        },
        Row {
            id: "ctl.register.task_of_another_thread",
            spec: "extension: a task registered by another thread (v0.3 did not check)",
            ctx: Unregistered,
            call: |e| ctl(UMCG_CTL_REGISTER, e.th.server.task(0)),
            want: EINVAL,
        },
        // ---- self: §2.3 register step 3 ----------------------------------------------------
        Row {
            id: "ctl.self.null",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER, std::ptr::null()),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.null_worker",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, std::ptr::null()),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.misaligned_1",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |e| ctl(UMCG_CTL_REGISTER, ptr(e.me).wrapping_byte_add(1)),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.misaligned_8",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |e| ctl(UMCG_CTL_REGISTER, ptr(e.me).wrapping_byte_add(8)),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.misaligned_32_worker",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |e| {
                ctl(
                    UMCG_CTL_REGISTER | UMCG_CTL_WORKER,
                    ptr(e.w).wrapping_byte_add(32),
                )
            },
            want: EFAULT,
        },
        Row {
            id: "ctl.self.unmapped",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER, at(bad_pages().hole)),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.unmapped_worker",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, at(bad_pages().hole)),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.prot_none",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER, at(bad_pages().prot_none)),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.noncanonical",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER, at(NONCANONICAL)),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.kernel_half",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, at(KERNEL_HALF)),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.low_address",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER, at(0x40)),
            want: EFAULT,
        },
        Row {
            id: "ctl.self.last_64_bytes",
            spec: "§2.3 register 3",
            ctx: Unregistered,
            call: |_| ctl(UMCG_CTL_REGISTER, at(!63)),
            want: EFAULT,
        },
        // ---- api_version: §2.3 register step 4 --------------------------------------------
        Row {
            id: "ctl.api_version.0",
            spec: "§2.3 register 4",
            ctx: Unregistered,
            call: |e| {
                e.me.api_version.store(0, Ordering::Relaxed);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: Version(1),
        },
        Row {
            id: "ctl.api_version.2",
            spec: "§2.3 register 4",
            ctx: Unregistered,
            call: |e| {
                e.me.api_version.store(2, Ordering::Relaxed);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: Version(1),
        },
        Row {
            id: "ctl.api_version.max_worker",
            spec: "§2.3 register 4",
            ctx: Unregistered,
            call: |e| {
                e.w.api_version.store(u32::MAX, Ordering::Relaxed);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: Version(1),
        },
        Row {
            id: "ctl.api_version.checked_before_tids",
            spec: "§2.3 register 4 before 5",
            ctx: Unregistered,
            call: |e| {
                e.me.api_version.store(2, Ordering::Relaxed);
                e.me.next_tid.store(5, Ordering::Relaxed);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: Version(1),
        },
        // ---- server_tid / next_tid: §2.3 register step 5 ---------------------------------
        Row {
            id: "ctl.server_tid.server",
            spec: "§2.3 register 5",
            ctx: Unregistered,
            call: |e| {
                e.me.server_tid.store(e.tid, Ordering::Relaxed);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.server_tid.worker",
            spec: "§2.3 register 5",
            ctx: Unregistered,
            call: |e| {
                e.w.server_tid.store(e.th.server.tids[0], Ordering::Relaxed);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.next_tid.server",
            spec: "§2.3 register 5",
            ctx: Unregistered,
            call: |e| {
                e.me.next_tid.store(1, Ordering::Relaxed);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.next_tid.worker",
            spec: "§2.3 register 5",
            ctx: Unregistered,
            call: |e| {
                e.w.next_tid.store(u32::MAX, Ordering::Relaxed);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: EINVAL,
        },
        // ---- state: §2.3 register steps 6-7 (the whole word) ------------------------------
        Row {
            id: "ctl.state.server_idle",
            spec: "§2.3 register 7",
            ctx: Unregistered,
            call: |e| {
                set_state(e.me, UMCG_TASK_IDLE);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.server_blocked",
            spec: "§2.3 register 7",
            ctx: Unregistered,
            call: |e| {
                set_state(e.me, UMCG_TASK_BLOCKED);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.server_none",
            spec: "§2.3 register 7",
            ctx: Unregistered,
            call: |e| {
                set_state(e.me, UMCG_TASK_NONE);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.server_running_locked",
            spec: "§2.3 register 7",
            ctx: Unregistered,
            call: |e| {
                set_state(e.me, UMCG_TASK_RUNNING | UMCG_TF_LOCKED);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.server_running_reserved_bit",
            spec: "§2.3 register 7",
            ctx: Unregistered,
            call: |e| {
                set_state(e.me, UMCG_TASK_RUNNING | 1 << 16);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.server_running_user_bit",
            spec: "§2.3 register 7 (H10)",
            ctx: Unregistered,
            call: |e| {
                set_state(e.me, UMCG_TASK_RUNNING | 1 << 24);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.server_nonsense",
            spec: "§2.3 register 7",
            ctx: Unregistered,
            call: |e| {
                set_state(e.me, 0xdead_beef);
                ctl(UMCG_CTL_REGISTER, e.me)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.worker_running",
            spec: "§2.3 register 6",
            ctx: Unregistered,
            call: |e| {
                set_state(e.w, UMCG_TASK_RUNNING);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.worker_blocked",
            spec: "§2.3 register 6 (v0.3: IDLE; BLOCKED is v0.5+)",
            ctx: Unregistered,
            call: |e| {
                set_state(e.w, UMCG_TASK_BLOCKED);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.worker_none",
            spec: "§2.3 register 6",
            ctx: Unregistered,
            call: |e| {
                set_state(e.w, UMCG_TASK_NONE);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.worker_idle_locked",
            spec: "§2.3 register 6",
            ctx: Unregistered,
            call: |e| {
                set_state(e.w, UMCG_TASK_IDLE | UMCG_TF_LOCKED);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.worker_idle_preempted",
            spec: "§2.3 register 6",
            ctx: Unregistered,
            call: |e| {
                set_state(e.w, UMCG_TASK_IDLE | UMCG_TF_PREEMPTED);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.worker_idle_user_bit",
            spec: "§2.3 register 6 (the whole word)",
            ctx: Unregistered,
            call: |e| {
                set_state(e.w, UMCG_TASK_IDLE | 1 << 24);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: EINVAL,
        },
        Row {
            id: "ctl.state.worker_idle_reserved_bit",
            spec: "§2.3 register 6",
            ctx: Unregistered,
            call: |e| {
                set_state(e.w, UMCG_TASK_IDLE | 1 << 20);
                ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, e.w)
            },
            want: EINVAL,
        },
        // ---- umcg_wait: §2.4 step 1, not registered ---------------------------------------
        Row {
            id: "wait.unregistered",
            spec: "§2.4 step 1",
            ctx: Unregistered,
            call: |_| wait(0, 0),
            want: EINVAL,
        },
        Row {
            id: "wait.unregistered.wake_only",
            spec: "§2.4 step 1",
            ctx: Unregistered,
            call: |_| wait(UMCG_WAIT_WAKE_ONLY, 0),
            want: EINVAL,
        },
        Row {
            id: "wait.unregistered.nonsense",
            spec: "§2.4 step 1",
            ctx: Unregistered,
            call: |_| wait(u32::MAX, u64::MAX),
            want: EINVAL,
        },
        // ---- WAKE_ONLY: §2.4 step 3 ----------------------------------------------------------
        Row {
            id: "wait.wake_only.next_tid_0",
            spec: "§2.4 step 3",
            ctx: Server,
            call: |_| wait(UMCG_WAIT_WAKE_ONLY, 0),
            want: EINVAL,
        },
        Row {
            id: "wait.wake_only.timeout",
            spec: "§2.4 step 3",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.tid, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 1)
            },
            want: EINVAL,
        },
        Row {
            id: "wait.wake_only.unknown_flag_4",
            spec: "§2.4 step 3",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.tid, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY | 4, 0)
            },
            want: EINVAL,
        },
        Row {
            id: "wait.wake_only.unknown_flag_31",
            spec: "§2.4 step 3",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.tid, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY | UMCG_WAIT_WF_CURRENT_CPU | 1 << 31, 0)
            },
            want: EINVAL,
        },
        Row {
            id: "wait.wake_only.all_flags",
            spec: "§2.4 step 3",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.tid, Ordering::Relaxed);
                wait(u32::MAX, 0)
            },
            want: EINVAL,
        },
        Row {
            id: "wait.wake_only.no_such_thread",
            spec: "§2.4 step 3",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(NO_SUCH_TID, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.wake_only.exited_thread",
            spec: "§2.4 step 3",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.th.dead, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.wake_only.unregistered_thread",
            spec: "§2.4 step 3",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.th.bystander, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.wake_only.self",
            spec: "§2.4 step 3 (a registered task: woken, harmless)",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.tid, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 0)
            },
            want: Done,
        },
        Row {
            id: "wait.wake_only.a_server",
            spec: "§2.4 step 3 (a registered task)",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.th.server.tids[0], Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 0)
            },
            want: Done,
        },
        Row {
            id: "wait.wake_only.wf_current_cpu",
            spec: "§2.4 step 3",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.th.server.tids[0], Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY | UMCG_WAIT_WF_CURRENT_CPU, 0)
            },
            want: Done,
        },
        Row {
            id: "wait.wake_only.worker_next_tid_0",
            spec: "§2.4 step 3",
            ctx: Worker,
            call: |_| wait(UMCG_WAIT_WAKE_ONLY, 0),
            want: EINVAL,
        },
        Row {
            id: "wait.wake_only.worker_no_such_thread",
            spec: "§2.4 step 3",
            ctx: Worker,
            call: |e| {
                e.me.next_tid.store(NO_SUCH_TID, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.wake_only.worker_exited_thread",
            spec: "§2.4 step 3",
            ctx: Worker,
            call: |e| {
                e.me.next_tid.store(e.th.dead, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.wake_only.worker_unregistered_thread",
            spec: "§2.4 step 3",
            ctx: Worker,
            call: |e| {
                e.me.next_tid.store(e.th.bystander, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.wake_only.worker_to_its_server",
            spec: "§2.4 step 3 (the server, asleep, re-checks its state)",
            ctx: Worker,
            call: |e| {
                let stid = e.me.server_tid.load(Ordering::Relaxed);
                e.me.next_tid.store(stid, Ordering::Relaxed);
                wait(UMCG_WAIT_WAKE_ONLY, 0)
            },
            want: Done,
        },
        // ---- flags without WAKE_ONLY: §2.4 step 4 (not validated) ------------------------
        Row {
            id: "wait.flags.not_validated",
            spec: "§2.4 step 4",
            ctx: Server,
            call: |_| wait(!UMCG_WAIT_WAKE_ONLY, 0),
            want: Done,
        },
        Row {
            id: "wait.flags.wf_current_cpu_alone",
            spec: "§2.4 step 4",
            ctx: Server,
            call: |_| wait(UMCG_WAIT_WF_CURRENT_CPU, 0),
            want: Done,
        },
        // ---- context switch: §2.4 step 5 ---------------------------------------------------
        Row {
            id: "wait.switch.no_such_thread",
            spec: "§2.4 step 5",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(NO_SUCH_TID, Ordering::Relaxed);
                wait(0, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.switch.exited_thread",
            spec: "§2.4 step 5",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.th.dead, Ordering::Relaxed);
                wait(0, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.switch.unregistered_thread",
            spec: "§2.4 step 5 (not checked for being a UMCG task)",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.th.bystander, Ordering::Relaxed);
                wait(0, 0)
            },
            want: Done,
        },
        Row {
            id: "wait.switch.self",
            spec: "§2.4 step 5 (RUNNING: returns at once)",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.tid, Ordering::Relaxed);
                wait(0, 0)
            },
            want: Done,
        },
        Row {
            id: "wait.switch.a_server",
            spec: "§2.4 step 5",
            ctx: Server,
            call: |e| {
                e.me.next_tid.store(e.th.server.tids[0], Ordering::Relaxed);
                wait(0, 0)
            },
            want: Done,
        },
        Row {
            id: "wait.switch.worker_no_such_thread",
            spec: "§2.4 step 5",
            ctx: Worker,
            call: |e| {
                e.me.next_tid.store(NO_SUCH_TID, Ordering::Relaxed);
                wait(0, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.switch.worker_exited_thread",
            spec: "§2.4 step 5",
            ctx: Worker,
            call: |e| {
                e.me.next_tid.store(e.th.dead, Ordering::Relaxed);
                wait(0, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.switch.worker_server_tid_exited",
            spec: "§2.4 steps 4-5 (next_tid 0: server_tid)",
            ctx: Worker,
            call: |e| {
                e.me.server_tid.store(e.th.dead, Ordering::Relaxed);
                wait(0, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.switch.worker_server_tid_no_such_thread",
            spec: "§2.4 steps 4-5",
            ctx: Worker,
            call: |e| {
                e.me.server_tid.store(NO_SUCH_TID, Ordering::Relaxed);
                wait(0, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.switch.worker_server_tid_unregistered",
            spec: "extension (no registered server to wait on: ESRCH; kernel doc, \"A server that leaves\")",
            ctx: Worker,
            call: |e| {
                e.me.server_tid.store(e.th.bystander, Ordering::Relaxed);
                wait(0, 0)
            },
            want: ESRCH,
        },
        Row {
            id: "wait.switch.worker_unregistered_thread",
            spec: "§2.4 step 5 (RUNNING with a server: returns at once)",
            ctx: Worker,
            call: |e| {
                e.me.next_tid.store(e.th.bystander, Ordering::Relaxed);
                wait(0, 0)
            },
            want: Done,
        },
        Row {
            id: "wait.switch.worker_self",
            spec: "§2.4 step 5",
            ctx: Worker,
            call: |e| {
                e.me.next_tid.store(e.tid, Ordering::Relaxed);
                wait(0, 0)
            },
            want: Done,
        },
        // ---- idle loop: §2.4 step 6 -----------------------------------------------------------
        Row {
            id: "wait.idle.timeout_in_the_past",
            spec: "extension (v0.4+ timeout; v0.3: EOPNOTSUPP)",
            ctx: Server,
            call: |e| {
                set_state(e.me, UMCG_TASK_IDLE);
                let r = wait(0, 1);
                assert_eq!(e.me.load_state(), StateWord(UMCG_TASK_IDLE));
                r
            },
            want: Out::Errno(sys::Errno::ETIMEDOUT),
        },
        Row {
            id: "wait.idle.switch_to_self_times_out",
            spec: "extension (v0.4+ timeout; v0.3: EOPNOTSUPP)",
            ctx: Server,
            call: |e| {
                set_state(e.me, UMCG_TASK_IDLE);
                e.me.next_tid.store(e.tid, Ordering::Relaxed);
                wait(0, abs_after(Duration::from_millis(1)))
            },
            want: Out::Errno(sys::Errno::ETIMEDOUT),
        },
        Row {
            id: "wait.idle.signal",
            spec: "§2.4 step 6",
            ctx: Server,
            call: wait_interrupted,
            want: Out::Errno(sys::Errno::EINTR),
        },
        // ---- hooks and kick (extensions) -----------------------------------------------------
        Row {
            id: "hooks.unregistered_noop",
            spec: "§2.5 (workers only)",
            ctx: Unregistered,
            call: |_| out_unit(kernel::block_begin().and_then(|()| kernel::block_end())),
            want: Done,
        },
        Row {
            id: "hooks.server_noop",
            spec: "§2.5 (workers only)",
            ctx: Server,
            call: |e| {
                let r = out_unit(kernel::block_begin().and_then(|()| kernel::block_end()));
                assert_eq!(e.me.load_state(), StateWord(UMCG_TASK_RUNNING));
                r
            },
            want: Done,
        },
        Row {
            id: "kick.flags",
            spec: "extension: umcg_kick",
            ctx: Worker,
            call: |e| out_unit(kernel::umcg_kick(1, e.tid)),
            want: EINVAL,
        },
        Row {
            id: "kick.a_server",
            spec: "extension: umcg_kick",
            ctx: Server,
            call: |e| out_unit(kernel::umcg_kick(0, e.tid)),
            want: EINVAL,
        },
        Row {
            id: "kick.exited_thread",
            spec: "extension: umcg_kick",
            ctx: Unregistered,
            call: |e| out_unit(kernel::umcg_kick(0, e.th.dead)),
            want: ESRCH,
        },
        Row {
            id: "kick.unregistered_thread",
            spec: "extension: umcg_kick",
            ctx: Unregistered,
            call: |e| out_unit(kernel::umcg_kick(0, e.th.bystander)),
            want: ESRCH,
        },
    ]
}

/// §2.4 step 6: a signal handler that runs while a server sleeps ends the wait with `EINTR`,
/// the state unchanged. The signal is sent again every few milliseconds until the wait
/// returns, so one that lands before the sleep starts does not matter.
fn wait_interrupted(e: &Env<'_>) -> Out {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        // SAFETY: the handler does nothing (async-signal-safe); SIGUSR1 is used by nothing
        // else in this test binary.
        unsafe { sys::signal::install_handler(Signal::SIGUSR1, noop) }.unwrap();
    });
    set_state(e.me, UMCG_TASK_IDLE);
    let done = Arc::new(AtomicBool::new(false));
    let tid = e.tid;
    let signaller = {
        let done = done.clone();
        thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let _ = sys::tgkill(tid, Signal::SIGUSR1);
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let r = wait(0, abs_after(WATCHDOG));
    done.store(true, Ordering::Release);
    signaller.join().unwrap();
    assert_eq!(
        e.me.load_state(),
        StateWord(UMCG_TASK_IDLE),
        "EINTR keeps IDLE"
    );
    r
}

/// Run `ctx`'s rows in order; returns the mismatches.
/// `ctx_task`: the context's registered task (None: unregistered). `server_tid`: the value its
/// `server_tid` is restored to after each row.
fn run_rows(
    ctx: Ctx,
    ctx_task: Option<&UmcgTask>,
    th: &Threads,
    at: &Arc<Mutex<String>>,
    server_tid: u32,
) -> Vec<String> {
    let mut bad = Vec::new();
    let tid = sys::gettid();
    for row in rows().into_iter().filter(|r| r.ctx == ctx) {
        *at.lock().unwrap() = row.id.to_owned();
        let me_box = server_task();
        let w = worker_task();
        let me: &UmcgTask = ctx_task.unwrap_or(&me_box);
        let got = (row.call)(&Env { me, w: &w, tid, th });
        let line = format!(
            "{:<48} {:<52} want {:?}, got {:?}",
            row.id, row.spec, row.want, got
        );
        println!("{line}");
        if got != row.want {
            bad.push(line);
        }
        // The context must be intact; restore what rows change.
        match ctx {
            Ctx::Unregistered => {
                if registered() {
                    bad.push(format!("{}: left the thread registered", row.id));
                    assert_eq!(unregister(), Out::Done);
                }
            }
            Ctx::Server | Ctx::Worker => {
                if kernel::current_tid() != tid {
                    panic!("{}: the context is no longer registered", row.id);
                }
                me.next_tid.store(0, Ordering::Release);
                me.server_tid.store(server_tid, Ordering::Release);
                if ctx == Ctx::Server {
                    set_state(me, UMCG_TASK_RUNNING);
                } else if me.load_state() != StateWord(UMCG_TASK_RUNNING) {
                    panic!("{}: the worker is {:?}", row.id, me.load_state());
                }
            }
        }
    }
    bad
}

fn check_rows(ctx: Ctx) {
    init();
    let th = Arc::new(Threads::new());
    let at = Arc::new(Mutex::new(String::from("setup")));
    let bad = match ctx {
        Ctx::Unregistered => {
            let (th, at2) = (th.clone(), at.clone());
            watched("unregistered rows", &at, move || {
                run_rows(Ctx::Unregistered, None, &th, &at2, 0)
            })
        }
        Ctx::Server => {
            let (th, at2) = (th.clone(), at.clone());
            watched("server rows", &at, move || {
                let task = server_task();
                assert_eq!(ctl(UMCG_CTL_REGISTER, &*task), Out::Done);
                let tid = sys::gettid();
                task.server_tid.store(tid, Ordering::Release);
                let bad = run_rows(Ctx::Server, Some(&task), &th, &at2, tid);
                assert_eq!(unregister(), Out::Done);
                drop(task);
                bad
            })
        }
        Ctx::Worker => {
            let group = Group::new();
            let g = group.clone();
            let server = thread::spawn(move || {
                let s = Server::register(&g);
                announce(&s);
                s.wait_for_workers(Instant::now() + WATCHDOG);
                let w = g.pop_runnable().unwrap();
                // The worker runs every row, then exits.
                assert!(s.run(w).unwrap().is_locked());
            });
            let (th, at2) = (th.clone(), at.clone());
            let bad = watched("worker rows", &at, move || {
                let w = Worker::register(&group);
                let stid = w.task().server_tid.load(Ordering::Acquire);
                let mut bad = run_rows(Ctx::Worker, Some(w.task()), &th, &at2, stid);
                w.exit();
                // Unregistering twice, as a worker.
                *at2.lock().unwrap() = "ctl.unregister.worker_twice".to_owned();
                let second = unregister();
                println!("ctl.unregister.worker_twice: got {second:?}");
                if second != EINVAL {
                    bad.push(format!("ctl.unregister.worker_twice: got {second:?}"));
                }
                bad
            });
            server.join().unwrap();
            bad
        }
    };
    assert!(bad.is_empty(), "rows that failed:\n{}", bad.join("\n"));
}

#[test]
fn errno_matrix_unregistered() {
    check_rows(Ctx::Unregistered);
}

#[test]
fn errno_matrix_server() {
    check_rows(Ctx::Server);
}

#[test]
fn errno_matrix_worker() {
    check_rows(Ctx::Worker);
}

/// Every row's id is unique, and every context has rows (a typo in `ctx` would drop one).
#[test]
fn errno_matrix_is_well_formed() {
    let rows = rows();
    let mut ids: Vec<_> = rows.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate row ids");
    for ctx in [Ctx::Unregistered, Ctx::Server, Ctx::Worker] {
        assert!(rows.iter().any(|r| r.ctx == ctx), "{ctx:?} has no rows");
    }
}

// ------------------------------------------------------------------------------------------
// Corrupted lists

/// What the corruption cases break and restore.
struct Scene {
    group: Arc<Group>,
    /// Two registered servers, RUNNING and parked: valid, registered idle-server nodes.
    servers: ParkedServers,
    /// Valid memory with a task's shape, never registered.
    stray: Box<UmcgTask>,
    /// A spare idle-worker head word.
    own_head: Box<AtomicU64>,
    /// A registered worker (parked in `umcg_wait`): its node is a registered worker's node.
    worker: ParkedWorker,
    /// Threads for the `server_tid` cases.
    threads: Threads,
}

impl Scene {
    fn new() -> Arc<Scene> {
        let group = Group::new();
        let servers = ParkedServers::new(2, group.idle_servers.head_addr());
        Arc::new(Scene {
            group,
            servers,
            stray: server_task(),
            own_head: Box::new(AtomicU64::new(0)),
            worker: ParkedWorker::new(),
            threads: Threads::new(),
        })
    }

    /// `&H` of the idle-server list (the reset value of its nodes).
    fn h(&self) -> u64 {
        self.group.idle_servers.head_addr()
    }

    /// `&H` of the idle-worker list.
    fn hw(&self) -> u64 {
        self.group.idle_workers.addr()
    }

    fn set_head(&self, v: u64) {
        self.group.idle_servers.corrupt_head_for_test(v);
    }

    fn set_link(&self, server: usize, v: u64) {
        self.servers
            .task(server)
            .idle_servers_ptr
            .store(v, Ordering::Release);
    }

    fn own_head_addr(&self) -> u64 {
        (&*self.own_head as *const AtomicU64).expose_provenance() as u64
    }

    /// Undo every case: lists empty, nodes reset, `w`'s fields pointing at the heads. A worker
    /// that was queued before its pop failed is taken off the list first (which resets its
    /// field; restoring the field first would break the chain).
    fn restore(&self, w: &UmcgTask) {
        self.set_head(0);
        self.set_link(0, self.h());
        self.set_link(1, self.h());
        self.own_head.store(0, Ordering::Release);
        self.group.drain_idle_workers();
        self.group.runq.lock().unwrap().clear();
        w.idle_servers_ptr.store(self.h(), Ordering::Release);
        w.idle_workers_ptr.store(self.hw(), Ordering::Release);
    }
}

/// The kernel paths that read the lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// `umcg_ctl(REGISTER|WORKER)`: the wake hook, synchronously (§2.3 step 6).
    Register,
    /// `block_begin`, then the corruption, then `block_end` (§2.5.2 after §2.5.1).
    Unblock,
    /// A worker waiting in `umcg_wait` (it yielded) woken by `WAKE_ONLY` (§2.6 "IDLE → IDLE
    /// (+ queued)"): the wake hook from the idle loop, which reports violations as `EFAULT`.
    Wait,
}

struct Case {
    id: &'static str,
    /// Corrupt what `w`'s wake hook will read; return the violation it must report.
    corrupt: fn(&Scene, &UmcgTask) -> ViolationKind,
}

fn servers_corrupt(c: Corruption) -> ViolationKind {
    ViolationKind::IdleServersCorrupt(c)
}

fn workers_corrupt(e: PushError) -> ViolationKind {
    ViolationKind::IdleWorkersCorrupt(e)
}

/// The corruption cases (module doc).
fn cases() -> Vec<Case> {
    use ViolationKind::*;
    const DEL: u64 = idle_servers::DELETED;
    vec![
        // ---- the idle-server list (popped by the wake hook, §2.7.1) ----------------------
        Case {
            id: "servers.cycle_of_two_deleted_nodes",
            corrupt: |sc, _| {
                sc.set_head(sc.servers.node(0));
                sc.set_link(0, sc.servers.node(1) | DEL);
                sc.set_link(1, sc.servers.node(0) | DEL);
                servers_corrupt(Corruption::Cycle(sc.servers.node(0)))
            },
        },
        Case {
            id: "servers.deleted_node_linked_to_itself",
            corrupt: |sc, _| {
                sc.set_head(sc.servers.node(0));
                sc.set_link(0, sc.servers.node(0) | DEL);
                servers_corrupt(Corruption::Cycle(sc.servers.node(0)))
            },
        },
        Case {
            id: "servers.cycle_behind_a_deleted_node",
            corrupt: |sc, _| {
                sc.set_head(sc.servers.node(0));
                sc.set_link(0, sc.servers.node(1) | DEL);
                sc.set_link(1, sc.servers.node(1) | DEL);
                servers_corrupt(Corruption::Cycle(sc.servers.node(1)))
            },
        },
        Case {
            id: "servers.head_garbage",
            corrupt: |sc, _| {
                sc.set_head(GARBAGE);
                servers_corrupt(Corruption::InvalidNode(GARBAGE))
            },
        },
        Case {
            id: "servers.head_misaligned",
            corrupt: |sc, _| {
                let n = sc.servers.node(0) + 4;
                sc.set_head(n);
                servers_corrupt(Corruption::InvalidNode(n))
            },
        },
        Case {
            id: "servers.head_noncanonical_node",
            corrupt: |sc, _| {
                sc.set_head(NONCANONICAL + 16);
                servers_corrupt(Corruption::InvalidNode(NONCANONICAL + 16))
            },
        },
        Case {
            id: "servers.head_unmapped_node",
            corrupt: |sc, _| {
                let n = bad_pages().hole + 16;
                sc.set_head(n);
                servers_corrupt(Corruption::InvalidNode(n))
            },
        },
        Case {
            id: "servers.head_prot_none_node",
            corrupt: |sc, _| {
                let n = bad_pages().prot_none + 16;
                sc.set_head(n);
                servers_corrupt(Corruption::InvalidNode(n))
            },
        },
        Case {
            id: "servers.head_unregistered_task",
            corrupt: |sc, _| {
                let n = sc.stray.idle_servers_node();
                sc.set_head(n);
                servers_corrupt(Corruption::InvalidNode(n))
            },
        },
        Case {
            id: "servers.head_a_workers_node",
            corrupt: |sc, w| {
                let n = w.idle_servers_node();
                sc.set_head(n);
                servers_corrupt(Corruption::InvalidNode(n))
            },
        },
        Case {
            id: "servers.head_points_at_itself",
            corrupt: |sc, _| {
                sc.set_head(sc.h());
                servers_corrupt(Corruption::InvalidNode(sc.h()))
            },
        },
        Case {
            id: "servers.head_tagged",
            corrupt: |sc, _| {
                let v = sc.servers.node(0) | DEL;
                sc.set_head(v);
                servers_corrupt(Corruption::TaggedHead(v))
            },
        },
        Case {
            id: "servers.link_garbage",
            corrupt: |sc, _| {
                sc.set_head(sc.servers.node(0));
                sc.set_link(0, GARBAGE | DEL);
                servers_corrupt(Corruption::InvalidNode(GARBAGE))
            },
        },
        Case {
            id: "servers.link_unmapped_node",
            corrupt: |sc, _| {
                let n = bad_pages().hole + 16;
                sc.set_head(sc.servers.node(0));
                sc.set_link(0, n | DEL);
                servers_corrupt(Corruption::InvalidNode(n))
            },
        },
        Case {
            id: "servers.link_unregistered_task",
            corrupt: |sc, _| {
                let n = sc.stray.idle_servers_node();
                sc.set_head(sc.servers.node(0));
                sc.set_link(0, n | DEL);
                servers_corrupt(Corruption::InvalidNode(n))
            },
        },
        // ---- the worker's idle_servers_ptr (the idle-server head address) ----------------
        Case {
            id: "worker.idle_servers_ptr_unmapped",
            corrupt: |_, w| {
                let a = bad_pages().hole;
                w.idle_servers_ptr.store(a, Ordering::Release);
                UnmappedListHead(a)
            },
        },
        Case {
            id: "worker.idle_servers_ptr_noncanonical",
            corrupt: |_, w| {
                w.idle_servers_ptr.store(NONCANONICAL, Ordering::Release);
                UnmappedListHead(NONCANONICAL)
            },
        },
        Case {
            id: "worker.idle_servers_ptr_misaligned",
            corrupt: |sc, w| {
                w.idle_servers_ptr.store(sc.h() + 4, Ordering::Release);
                servers_corrupt(Corruption::MisalignedHead(sc.h() + 4))
            },
        },
        Case {
            id: "worker.idle_servers_ptr_tagged",
            corrupt: |sc, w| {
                w.idle_servers_ptr.store(sc.h() | 1, Ordering::Release);
                servers_corrupt(Corruption::MisalignedHead(sc.h() | 1))
            },
        },
        Case {
            id: "worker.idle_servers_ptr_a_servers_node",
            corrupt: |sc, w| {
                let n = sc.servers.node(0);
                w.idle_servers_ptr.store(n, Ordering::Release);
                ListHeadIsNode(n)
            },
        },
        // ---- the worker's idle_workers_ptr (the idle-worker head address, §2.7.2) ---------
        Case {
            id: "worker.idle_workers_ptr_null",
            corrupt: |_, w| {
                w.idle_workers_ptr.store(0, Ordering::Release);
                IdleWorkersPtrNull
            },
        },
        Case {
            id: "worker.idle_workers_ptr_unmapped",
            corrupt: |_, w| {
                let a = bad_pages().hole;
                w.idle_workers_ptr.store(a, Ordering::Release);
                UnmappedListHead(a)
            },
        },
        Case {
            id: "worker.idle_workers_ptr_kernel_half",
            corrupt: |_, w| {
                w.idle_workers_ptr.store(KERNEL_HALF, Ordering::Release);
                UnmappedListHead(KERNEL_HALF)
            },
        },
        Case {
            id: "worker.idle_workers_ptr_misaligned",
            corrupt: |sc, w| {
                w.idle_workers_ptr.store(sc.hw() + 4, Ordering::Release);
                workers_corrupt(PushError::MisalignedHead(sc.hw() + 4))
            },
        },
        Case {
            id: "worker.idle_workers_ptr_tagged",
            corrupt: |sc, w| {
                w.idle_workers_ptr.store(sc.hw() | 1, Ordering::Release);
                workers_corrupt(PushError::TaggedHead(sc.hw() | 1))
            },
        },
        Case {
            id: "worker.idle_workers_ptr_own_node",
            corrupt: |_, w| {
                let n = w.idle_workers_node();
                w.idle_workers_ptr.store(n, Ordering::Release);
                workers_corrupt(PushError::SelfLink(n))
            },
        },
        Case {
            id: "worker.idle_workers_ptr_another_workers_node",
            corrupt: |sc, w| {
                w.idle_workers_ptr.store(sc.worker.node, Ordering::Release);
                ListHeadIsNode(sc.worker.node)
            },
        },
        Case {
            id: "worker.idle_workers_ptr_a_servers_node",
            corrupt: |sc, w| {
                let n = sc.servers.node(1);
                w.idle_workers_ptr.store(n, Ordering::Release);
                ListHeadIsNode(n)
            },
        },
        // ---- the idle-worker head word ------------------------------------------------------
        Case {
            id: "workers.head_word_misaligned",
            corrupt: |sc, w| {
                sc.own_head.store(0x1003, Ordering::Release);
                w.idle_workers_ptr
                    .store(sc.own_head_addr(), Ordering::Release);
                workers_corrupt(PushError::CorruptHeadValue {
                    head: sc.own_head_addr(),
                    value: 0x1003,
                })
            },
        },
        Case {
            id: "workers.head_word_tagged",
            corrupt: |sc, w| {
                let v = sc.worker.node | 1;
                sc.own_head.store(v, Ordering::Release);
                w.idle_workers_ptr
                    .store(sc.own_head_addr(), Ordering::Release);
                workers_corrupt(PushError::CorruptHeadValue {
                    head: sc.own_head_addr(),
                    value: v,
                })
            },
        },
        Case {
            id: "workers.head_word_is_the_worker",
            corrupt: |sc, w| {
                sc.own_head.store(w.idle_workers_node(), Ordering::Release);
                w.idle_workers_ptr
                    .store(sc.own_head_addr(), Ordering::Release);
                workers_corrupt(PushError::AlreadyAtHead)
            },
        },
    ]
}

/// Drive `case` through `path`; returns (got, want).
fn drive(sc: &Arc<Scene>, s: Option<&Server>, case: &Case, path: Path) -> (Out, Out) {
    let what = format!("{} via {path:?}", case.id);
    let at = Arc::new(Mutex::new(what.clone()));
    match path {
        Path::Register => {
            let w = keep(sc.group.new_worker_task());
            let want = Out::Violation((case.corrupt)(sc, w));
            let got = watched(&what, &at, move || {
                let r = ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, w);
                // The kernel would have killed the thread; the emulator left it registered.
                if registered() {
                    assert_eq!(unregister(), Out::Done);
                }
                r
            });
            sc.restore(w);
            (got, want)
        }
        Path::Unblock | Path::Wait => {
            let s = s.expect("a server");
            let g = sc.group.clone();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let (res_tx, res_rx) = mpsc::channel();
            let worker = thread::spawn(move || {
                let w = Worker::register(&g);
                let r = if path == Path::Unblock {
                    kernel::block_begin().unwrap();
                    go_rx.recv().unwrap();
                    out_unit(kernel::block_end())
                } else {
                    out_unit(w.yield_with_timeout(0))
                };
                let _ = res_tx.send(r);
                if registered() {
                    assert_eq!(unregister(), Out::Done);
                }
            });
            s.wait_for_workers(Instant::now() + WATCHDOG);
            let w = sc.group.pop_runnable().unwrap();
            let want = if path == Path::Unblock {
                assert_eq!(s.run(w).unwrap(), StateWord(UMCG_TASK_BLOCKED));
                let want = Out::Violation((case.corrupt)(sc, w));
                go_tx.send(()).unwrap();
                want
            } else {
                assert_eq!(s.run(w).unwrap().state(), TaskState::Idle);
                wait_for("the worker in umcg_wait", || !w.load_state().is_locked());
                let wtid = tid_of(w);
                wait_until_sleeping(wtid);
                (case.corrupt)(sc, w);
                s.task.next_tid.store(wtid, Ordering::Release);
                assert_eq!(kernel::umcg_wait(UMCG_WAIT_WAKE_ONLY, 0), Ok(()));
                s.task.next_tid.store(0, Ordering::Release);
                EFAULT
            };
            let got = match res_rx.recv_timeout(WATCHDOG) {
                Ok(got) => got,
                Err(_) => panic!("{what}: no result within {WATCHDOG:?} (hang)"),
            };
            worker.join().unwrap();
            sc.restore(w);
            (got, want)
        }
    }
}

fn check_cases(path: Path) {
    init();
    let sc = Scene::new();
    let server = (path != Path::Register).then(|| {
        let s = Server::register(&sc.group);
        announce(&s);
        s
    });
    let mut bad = Vec::new();
    for case in cases() {
        let (got, want) = drive(&sc, server.as_ref(), &case, path);
        let line = format!("{:<48} via {path:?}: want {want:?}, got {got:?}", case.id);
        println!("{line}");
        if got != want {
            bad.push(line);
        }
    }
    drop(server);
    assert!(bad.is_empty(), "cases that failed:\n{}", bad.join("\n"));
}

#[test]
fn corrupt_lists_on_registration() {
    check_cases(Path::Register);
}

#[test]
fn corrupt_lists_on_unblock() {
    check_cases(Path::Unblock);
}

#[test]
fn corrupt_lists_on_wait() {
    check_cases(Path::Wait);
}

/// A bad `server_tid` is what the block hook reads (§2.5.1 steps 3-4): no registered server
/// by that TID is a violation (`ServerNotFound`); 0 means "no server" (nothing is woken).
#[test]
fn bad_server_tid_on_block() {
    init();
    let sc = Scene::new();
    let s = Server::register(&sc.group);
    announce(&s);
    type TidOf = fn(&Scene, u32) -> u32;
    let cases: [(&str, TidOf, Out); 6] = [
        (
            "block.server_tid_exited_thread",
            |sc, _| sc.threads.dead,
            Out::Violation(ViolationKind::ServerNotFound),
        ),
        (
            "block.server_tid_no_such_thread",
            |_, _| NO_SUCH_TID,
            Out::Violation(ViolationKind::ServerNotFound),
        ),
        (
            "block.server_tid_unregistered_thread",
            |sc, _| sc.threads.bystander,
            Out::Violation(ViolationKind::ServerNotFound),
        ),
        (
            "block.server_tid_self",
            |_, me| me,
            Out::Violation(ViolationKind::ServerNotFound),
        ),
        (
            "block.server_tid_u32_max",
            |_, _| u32::MAX,
            Out::Violation(ViolationKind::ServerNotFound),
        ),
        ("block.server_tid_zero", |_, _| 0, Out::Done),
    ];
    let mut bad = Vec::new();
    for (id, tid_of_case, want) in cases {
        let (g, sc2) = (sc.group.clone(), sc.clone());
        let (res_tx, res_rx) = mpsc::channel();
        let worker = thread::spawn(move || {
            let w = Worker::register(&g);
            let t = w.task();
            let stid = t.server_tid.load(Ordering::Acquire);
            t.server_tid
                .store(tid_of_case(&sc2, sys::gettid()), Ordering::Release);
            let r = out_unit(kernel::block_begin());
            t.server_tid.store(stid, Ordering::Release);
            // The hook made the worker BLOCKED before it looked for the server, which was
            // therefore not woken: back to RUNNING by hand, then leave (waking the server).
            t.transition(TaskState::Blocked, TaskState::Running)
                .expect("BLOCKED after the block hook");
            let _ = res_tx.send(r);
            w.exit();
        });
        s.wait_for_workers(Instant::now() + WATCHDOG);
        let w = sc.group.pop_runnable().unwrap();
        assert!(s.run(w).unwrap().is_locked(), "{id}: the worker exits");
        let got = res_rx
            .recv_timeout(WATCHDOG)
            .unwrap_or_else(|_| panic!("{id}: no result (hang)"));
        worker.join().unwrap();
        let line = format!("{id:<48} want {want:?}, got {got:?}");
        println!("{line}");
        if got != want {
            bad.push(line);
        }
    }
    assert!(bad.is_empty(), "cases that failed:\n{}", bad.join("\n"));
}

/// The violation's text without the task that found it (what the parent looks for in a
/// child's stderr).
fn kind_text(kind: ViolationKind) -> String {
    let v = Violation {
        kind,
        tid: 0,
        other_tid: 0,
        state: None,
    };
    let full = v.to_string();
    full.split_once("task 0: ")
        .map_or(full.clone(), |(_, k)| k.to_owned())
}

const CHILD_ENV: &str = "UMCG_BAD_INPUT_CHILD";

/// Under the default policy every corruption aborts the process with the violation named on
/// stderr, as the real kernel killed the task: one child process (this binary, this test
/// only) per case, registration path. A child that returns, hangs, or dies otherwise fails.
#[test]
fn corrupt_lists_abort_by_default() {
    if let Ok(id) = std::env::var(CHILD_ENV) {
        // The child: default policy (no `init`), one case, no core file.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a plain system call on a local struct.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        let sc = Scene::new();
        let case = cases().into_iter().find(|c| c.id == id).expect("a case");
        let w = keep(sc.group.new_worker_task());
        let want = (case.corrupt)(&sc, w);
        eprintln!("bad_input child: expecting: {}", kind_text(want));
        let r = ctl(UMCG_CTL_REGISTER | UMCG_CTL_WORKER, w);
        eprintln!("bad_input child: {id}: umcg_ctl returned {r:?} instead of aborting");
        std::process::exit(3);
    }
    let exe = std::env::current_exe().unwrap();
    let mut bad = Vec::new();
    for case in cases() {
        let mut child = Command::new(&exe)
            .args([
                "corrupt_lists_abort_by_default",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, case.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if t0.elapsed() > WATCHDOG {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(5));
        };
        let err = reader.join().unwrap();
        let expecting = err
            .lines()
            .find_map(|l| l.strip_prefix("bad_input child: expecting: "))
            .unwrap_or("<no expectation printed>")
            .to_owned();
        let aborted = status.and_then(|s| s.signal()) == Some(libc::SIGABRT);
        let named = err
            .lines()
            .any(|l| l.contains("contract violation") && l.contains(&expecting));
        println!("{:<48} aborted: {aborted}, named: {named}", case.id);
        if !(aborted && named) {
            bad.push(format!(
                "{}: status {status:?}, expecting {expecting:?}; stderr:\n{err}",
                case.id
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "cases that did not abort as expected:\n{}",
        bad.join("\n")
    );
}
