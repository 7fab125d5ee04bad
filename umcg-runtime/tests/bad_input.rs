//! Bad input to the emulated kernel (issue 6, reliability), through the Rust API: every errno
//! row of spec §2.3 (`umcg_ctl`) and §2.4 (`umcg_wait`) as a table. `tests/c/bad_input.c` does the same
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
//! # Never a hang, never a crash
//!
//! Every context runs on a thread of its own under a watchdog ([`watched`]): a row that does
//! not report back within [`WATCHDOG`] fails the test, naming itself, instead of
//! hanging it. Bad addresses are chosen so that a dereference would crash the test process
//! (unmapped, `PROT_NONE`, non-canonical): the emulator must reject them before touching
//! them. The same binary runs in eventfd idle-wakeup mode with `UMCG_IDLE_WAKEUP=eventfd`.
#![cfg(not(umcg_loom))]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex, Once, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use umcg_abi::*;
use umcg_runtime::kernel::{self, Ctl, UmcgError, ViolationKind};
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
/// neighbours are `PROT_NONE`. The neighbours stay reserved for the life of the process, so
/// no later mapping (another test's thread stack) can move into the hole between them.
struct BadPages {
    hole: u64,
    prot_none: u64,
}

fn bad_pages() -> &'static BadPages {
    static PAGES: OnceLock<BadPages> = OnceLock::new();
    PAGES.get_or_init(|| {
        let page = 4096;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
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

/// Never mapped: above the 57-bit user address space, so non-canonical on every x86-64.
const NONCANONICAL: u64 = 0xdead_0000_0000_0000;
/// Never mapped: the kernel half.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
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

    #[allow(dead_code)] // used by the corrupted-list cases
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
