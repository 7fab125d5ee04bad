//! What `umcg_runtime::sys` does not offer and the measurements need: the thread CPU-time
//! clock, `getrusage`, timer slack, and the machine's description. libc directly (the
//! runtime's `sys` is the runtime's syscall layer; these calls are the simulator's own).

use std::fmt::Write as _;

pub use umcg_runtime::sys::futex::monotonic_now_ns as now_ns;

/// `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`: CPU time consumed by the calling thread, in ns
/// (a system call, ~100–200 ns; man clock_gettime(2)).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Burn `ns` of the calling thread's CPU time (not wall time: time spent preempted does not
/// count, so the compute charged to the workload is exact).
pub fn burn_cpu(ns: u64) {
    if ns == 0 {
        return;
    }
    let end = thread_cpu_ns() + ns;
    while thread_cpu_ns() < end {
        core::hint::spin_loop();
    }
}

/// One `getrusage` reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// User + system CPU time, ns.
    pub cpu_ns: u64,
    /// Voluntary context switches (`ru_nvcsw`).
    pub vcsw: u64,
    /// Involuntary context switches (`ru_nivcsw`).
    pub ivcsw: u64,
}

impl Usage {
    /// `getrusage(RUSAGE_SELF)`: the whole process, all threads (exited ones included).
    pub fn process() -> Usage {
        rusage(libc::RUSAGE_SELF)
    }

    /// `getrusage(RUSAGE_THREAD)`: the calling thread.
    pub fn thread() -> Usage {
        rusage(libc::RUSAGE_THREAD)
    }

    /// `self - earlier`, saturating.
    pub fn since(self, earlier: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            vcsw: self.vcsw.saturating_sub(earlier.vcsw),
            ivcsw: self.ivcsw.saturating_sub(earlier.ivcsw),
        }
    }
}

fn rusage(who: libc::c_int) -> Usage {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call; `who` is one of
    // the two documented constants.
    let r = unsafe { libc::getrusage(who, &mut ru) };
    if r != 0 {
        return Usage::default();
    }
    let tv = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000_000 + (t.tv_usec as u64) * 1_000;
    Usage {
        cpu_ns: tv(ru.ru_utime) + tv(ru.ru_stime),
        vcsw: ru.ru_nvcsw as u64,
        ivcsw: ru.ru_nivcsw as u64,
    }
}

/// Restrict the calling thread to `cpus` (`sched_setaffinity(0, ...)`; man
/// sched_setaffinity(2)); `umcg_runtime::sys` only pins to a single CPU. CPUs >= 1024 are
/// ignored. Best effort: false if the call failed.
pub fn set_affinity(cpus: &[usize]) -> bool {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    for &c in cpus {
        if c < libc::CPU_SETSIZE as usize {
            // SAFETY: `c` is below CPU_SETSIZE, so the bit is inside `set`.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// `prctl(PR_SET_TIMERSLACK, 1)`: timed sleeps of the calling thread end within ~1 ns of their
/// deadline instead of the default 50 µs slack (man prctl(2)). Best effort.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory of ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Facts about the machine, for every report.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// CPUs this process may run on.
    pub allowed_cpus: Vec<usize>,
    /// `uname -r`.
    pub kernel: String,
    /// `rustc -V` of the toolchain on PATH (the one that built this, under cargo).
    pub rustc: String,
    /// `git rev-parse --short HEAD` (+ "-dirty"), if run inside the repository.
    pub commit: String,
}

impl Machine {
    /// Read the facts (a few file reads and two short subprocesses).
    pub fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let rustc = run("rustc", &["-V"]).unwrap_or_else(|| "unknown".into());
        let mut commit = run("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
        if !commit.is_empty()
            && run("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty())
        {
            commit.push_str("-dirty");
        }
        if commit.is_empty() {
            commit = "unknown".into();
        }
        Machine {
            cpu,
            allowed_cpus: umcg_runtime::sys::allowed_cpus().unwrap_or_default(),
            kernel,
            rustc,
            commit,
        }
    }

    /// One line: CPU, cores, kernel, rustc, commit.
    pub fn line(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{} | {} CPUs allowed {:?} | kernel {} | {} | commit {}",
            self.cpu,
            self.allowed_cpus.len(),
            self.allowed_cpus,
            self.kernel,
            self.rustc,
            self.commit
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_and_usage_advance() {
        let u0 = Usage::thread();
        let c0 = thread_cpu_ns();
        burn_cpu(2_000_000);
        assert!(thread_cpu_ns() >= c0 + 2_000_000);
        let d = Usage::thread().since(u0);
        assert!(d.cpu_ns > 0);
        assert!(Usage::process().cpu_ns >= d.cpu_ns);
    }
}
