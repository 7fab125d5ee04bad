//! Threads and CPUs: kernel thread ids, directed signals, affinity, and CPU numbering.
//!
//! - Thread ids are the kernel's (`gettid(2)`), as UMCG's `server_tid` and `next_tid` hold
//!   them, as `u32`. They are not `pthread_t`s.
//! - [`gettid`] makes the system call every time (about 110 ns, LIMITS.md). A cache in a
//!   `thread_local` would survive `fork`: the child's only thread would keep the forking
//!   thread's cached tid, and UMCG state written with it would name a thread of the parent.
//! - CPU numbers are the kernel's ids, `0..nr_cpu_ids()`, which may have holes (possible but
//!   absent CPUs); per-CPU tables are sized with [`nr_cpu_ids`], like the kernel's.
//! - The affinity calls use glibc's fixed `cpu_set_t` (1024 CPUs, nix's `CpuSet`); on a
//!   machine with more, `sched_getaffinity` fails with `EINVAL` and CPUs past 1023 cannot be
//!   named.

use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sched::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getpid};

/// The calling thread's kernel thread id. `gettid(2)` (through `syscall(SYS_gettid)`); a
/// system call every time, see the module doc.
pub fn gettid() -> u32 {
    nix::unistd::gettid().as_raw().cast_unsigned()
}

/// `tgkill(getpid(), tid, sig)`: send `sig` to thread `tid` of this process; man tgkill(2).
/// `ESRCH` if no such thread (it exited), `EINVAL` for tid 0 or one above `i32::MAX`.
pub fn tgkill(tid: u32, sig: Signal) -> Result<(), Errno> {
    tgkill_raw(tid, sig as libc::c_int)
}

fn tgkill_raw(tid: u32, sig: libc::c_int) -> Result<(), Errno> {
    let tid = libc::pid_t::try_from(tid).map_err(|_| Errno::EINVAL)?;
    // SAFETY: tgkill takes no pointers; sending a signal is memory-safe for us (what the
    // target's handler does is the installer's contract, see `signal::install_handler`).
    let r = unsafe { libc::tgkill(getpid().as_raw(), tid, sig) };
    Errno::result(r).map(drop)
}

/// Whether thread `tid` of this process still exists: `tgkill(getpid(), tid, 0)` (signal 0
/// checks existence and permission without sending anything); man tgkill(2), kill(2).
///
/// `ESRCH` and `EINVAL` (tid 0 or out of range) read as gone; any other outcome as alive.
/// The answer can be stale the moment it returns, and a tid recycled by a new thread of this
/// process reads as alive: callers use it as a hint (is the server still there?), never to
/// decide memory safety.
pub fn thread_alive(tid: u32) -> bool {
    !matches!(tgkill_raw(tid, 0), Err(Errno::ESRCH | Errno::EINVAL))
}

/// Restrict the calling thread to CPU `cpu`; on return it runs there.
/// `sched_setaffinity(0, sizeof(cpu_set_t), {cpu})`; man sched_setaffinity(2).
/// `EINVAL` if `cpu` is not an allowed, online CPU (or is `>= 1024`).
pub fn pin_to_cpu(cpu: usize) -> Result<(), Errno> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// Restrict thread `tid` of this process to CPU `cpu` (the wakee side of the emulated
/// `WF_CURRENT_CPU`: pinning before the wake makes the kernel place it there).
/// `sched_setaffinity(tid, sizeof(cpu_set_t), {cpu})`; man sched_setaffinity(2).
/// `ESRCH` if the thread is gone, `EINVAL` if `cpu` is not allowed.
pub fn pin_thread_to_cpu(tid: u32, cpu: usize) -> Result<(), Errno> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    let tid = i32::try_from(tid).map_err(|_| Errno::ESRCH)?;
    sched_setaffinity(Pid::from_raw(tid), &set)
}

/// The CPU the calling thread is running on (possibly stale by the time it is used).
/// `sched_getcpu(3)` (vDSO `getcpu`). Returns 0 if the call fails, which it cannot on Linux
/// since 2.6.19.
pub fn current_cpu() -> usize {
    match sched_getcpu() {
        Ok(cpu) => cpu,
        Err(e) => {
            debug_assert!(false, "sched_getcpu: {e}");
            0
        }
    }
}

/// The CPUs the calling thread may run on, ascending.
/// `sched_getaffinity(0, sizeof(cpu_set_t), &set)`; man sched_getaffinity(2).
pub fn allowed_cpus() -> Result<Vec<usize>, Errno> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// The number of *possible* CPU ids (the kernel's `nr_cpu_ids`): one more than the largest
/// id in `/sys/devices/system/cpu/possible` (e.g. `"0-3,8-11"` gives 12), falling back to
/// `sysconf(_SC_NPROCESSORS_CONF)` (man sysconf(3)) and then 1. Read once per process;
/// the set of possible CPUs is fixed at boot. Always at least 1.
pub fn nr_cpu_ids() -> usize {
    static NR: OnceLock<usize> = OnceLock::new();
    *NR.get_or_init(|| {
        std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|s| parse_cpu_list(&s))
            .or_else(|| {
                // SAFETY: sysconf takes no pointers and has no side effects.
                let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
                usize::try_from(n).ok().filter(|&n| n > 0)
            })
            .unwrap_or(1)
    })
}

/// One more than the largest CPU id in a kernel cpu list (`"0"`, `"0-1"`, `"0-3,8-11"`,
/// trailing newline allowed; man 7 cpuset "List format"); `None` if malformed or empty.
fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?),
            None => {
                let cpu = part.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if lo > hi {
            return None;
        }
        max = max.max(Some(hi));
    }
    max.map(|m| m + 1)
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn gettid_differs_between_threads() {
        let me = gettid();
        let other = thread::spawn(gettid).join().unwrap();
        assert_ne!(me, 0);
        assert_ne!(other, 0);
        assert_ne!(me, other);
        assert_eq!(me, gettid());
    }

    #[test]
    fn thread_alive_for_self_not_for_impossible_tids() {
        assert!(thread_alive(gettid()));
        // Above PID_MAX_LIMIT (2^22): no thread can have it.
        assert!(!thread_alive(0x7fff_fff0));
        assert!(!thread_alive(0));
        assert!(!thread_alive(u32::MAX));
        assert_eq!(tgkill(0x7fff_fff0, Signal::SIGUSR1), Err(Errno::ESRCH));
    }

    #[test]
    fn pin_then_current_cpu_matches() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        for &cpu in [cpus[0], cpus[cpus.len() - 1]].iter() {
            // A fresh thread, so the test harness's thread keeps its affinity.
            let seen = thread::spawn(move || {
                pin_to_cpu(cpu).unwrap();
                (current_cpu(), allowed_cpus().unwrap())
            })
            .join()
            .unwrap();
            assert_eq!(seen, (cpu, vec![cpu]));
        }
        assert_eq!(pin_to_cpu(CpuSet::count()), Err(Errno::EINVAL));
    }

    #[test]
    fn parse_possible_cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(12));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0,5"), Some(6));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn nr_cpu_ids_covers_allowed_cpus() {
        let max = *allowed_cpus().unwrap().last().unwrap();
        assert!(nr_cpu_ids() > max);
    }
}
