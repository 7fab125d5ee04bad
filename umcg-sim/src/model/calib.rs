//! The calibration file: the costs the model charges, measured on this machine by
//! `umcg-sim calibrate` (or by `umcg-sim compare` in the same run as its experiments) from
//! [`crate::baseline`], as `key = value` lines.
//!
//! Every value is a measured baseline figure (the key's doc names it); none is fitted to the
//! experiments the model is validated against. Values are ns, except `stay_on_busy_pct`
//! (percent).
//!
//! Format: one `key = value` per line; `#` starts a comment; blank lines are ignored; values
//! are non-negative decimal numbers. Unknown keys are an error (a typo would otherwise
//! silently fall back), and so is a missing key.
//!
//! Interpolation: `*_call_K` keys (K = 2, 8, 32 sleepers) are interpolated linearly in K and
//! extrapolated with the last segment's slope; `workload_cpu_L` keys (L = 10 … 90 % load) are
//! interpolated linearly in the load and held constant outside 10 … 90 %.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::baseline::{Baseline, WORKLOAD_LOADS};

/// The K at which the one-of-K figures are measured.
pub const KS: [usize; 3] = [2, 8, 32];

/// Costs. See [`Calibration::KEYS`] for what each means.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    values: BTreeMap<&'static str, f64>,
}

/// The baseline each key is read from and which of its figures (`p50` or `cpu`).
const SOURCES: [(&str, &str, Fig); 30] = [
    ("futex_same_lat", "wake1of1_futex_same", Fig::P50),
    ("futex_same_call", "wake1of1_futex_same_wakercall", Fig::P50),
    ("futex_same_wakee", "wake1of1_futex_same", Fig::Cpu),
    ("futex_cross_lat", "wake1of1_futex_cross", Fig::P50),
    (
        "futex_cross_call",
        "wake1of1_futex_cross_wakercall",
        Fig::P50,
    ),
    ("futex_cross_wakee", "wake1of1_futex_cross", Fig::Cpu),
    ("epoll_same_lat", "wake1of1_epoll_same", Fig::P50),
    ("epoll_same_call", "wake1of1_epoll_same_wakercall", Fig::P50),
    ("epoll_same_wakee", "wake1of1_epoll_same", Fig::Cpu),
    ("epoll_cross_lat", "wake1of1_epoll_cross", Fig::P50),
    (
        "epoll_cross_call",
        "wake1of1_epoll_cross_wakercall",
        Fig::P50,
    ),
    ("epoll_cross_wakee", "wake1of1_epoll_cross", Fig::Cpu),
    ("excl_call_2", "wake1of2_epollexclusive_wakercall", Fig::P50),
    ("excl_call_8", "wake1of8_epollexclusive_wakercall", Fig::P50),
    (
        "excl_call_32",
        "wake1of32_epollexclusive_wakercall",
        Fig::P50,
    ),
    ("herd_call_2", "wake1of2_herd_wakercall", Fig::P50),
    ("herd_call_8", "wake1of8_herd_wakercall", Fig::P50),
    ("herd_call_32", "wake1of32_herd_wakercall", Fig::P50),
    ("fd_write_nowaiter", "eventfd_write_nowaiter", Fig::P50),
    ("fd_stale", "epoll_stale_wakeup", Fig::P50),
    ("claim_release", "list_claim_release", Fig::P50),
    ("adopt_path", "adopt_claim_path", Fig::P50),
    ("migrate_lat", "migrate", Fig::P50),
    ("migrate_cpu", "migrate", Fig::Cpu),
    ("stay_on_busy_pct", "stay_on_busy_pct", Fig::P50),
    ("workload_cpu_10", "workload_L10", Fig::Cpu),
    ("workload_cpu_30", "workload_L30", Fig::Cpu),
    ("workload_cpu_50", "workload_L50", Fig::Cpu),
    ("workload_cpu_70", "workload_L70", Fig::Cpu),
    ("workload_cpu_90", "workload_L90", Fig::Cpu),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fig {
    P50,
    Cpu,
}

impl Calibration {
    /// Every key with its meaning (the baseline it is measured by, [`crate::baseline`]).
    pub const KEYS: [(&'static str, &'static str); 30] = [
        (
            "futex_same_lat",
            "a thread just woken from a timed sleep (an unblocking worker) wakes a thread in \
             FUTEX_WAIT on its own CPU: latency from its timestamp to the wakee running",
        ),
        ("futex_same_call", "same: the waker's FUTEX_WAKE call"),
        (
            "futex_same_wakee",
            "same: the woken thread's CPU per wakeup, until it sleeps again",
        ),
        (
            "futex_cross_lat",
            "the same wakeup of a thread on another, idle (halted) CPU: latency",
        ),
        (
            "futex_cross_call",
            "same: the waker's FUTEX_WAKE call (it sends the wakeup IPI)",
        ),
        (
            "futex_cross_wakee",
            "same: the woken thread's CPU per wakeup (woken on a halted CPU)",
        ),
        (
            "epoll_same_lat",
            "as futex_same_lat, the wakee in epoll_wait on its own eventfd, woken by a write",
        ),
        ("epoll_same_call", "same: the waker's eventfd write"),
        (
            "epoll_same_wakee",
            "same: the woken thread's CPU per wakeup",
        ),
        (
            "epoll_cross_lat",
            "as futex_cross_lat, through epoll + eventfd",
        ),
        ("epoll_cross_call", "same: the waker's eventfd write"),
        (
            "epoll_cross_wakee",
            "same: the woken thread's CPU per wakeup",
        ),
        (
            "excl_call_2",
            "eventfd write to 2 sleepers on another CPU, each in an epoll with EPOLLEXCLUSIVE",
        ),
        ("excl_call_8", "same, 8 sleepers"),
        ("excl_call_32", "same, 32 sleepers"),
        (
            "herd_call_2",
            "eventfd write to 2 sleepers on another CPU, epoll without EPOLLEXCLUSIVE (all wake)",
        ),
        ("herd_call_8", "same, 8 sleepers"),
        ("herd_call_32", "same, 32 sleepers"),
        (
            "fd_write_nowaiter",
            "an eventfd write that nobody waits for",
        ),
        (
            "fd_stale",
            "a stale wakeup: epoll_wait returning at once for a count nobody consumed, + drain",
        ),
        (
            "claim_release",
            "tag-bit list pop + reclaim + push (a user-space claim attempt)",
        ),
        (
            "adopt_path",
            "adopt: the harness's path from a worker's timestamp after its timed sleep \
             through the claim of its own CPU's idle server to its start timestamp",
        ),
        (
            "migrate_lat",
            "adopt: a thread pins itself to another, idle CPU: latency until it runs there",
        ),
        (
            "migrate_cpu",
            "same: the thread's CPU for the move and for widening its affinity again",
        ),
        (
            "stay_on_busy_pct",
            "percent of timer wakeups of a thread whose previous CPU is busy that run there \
             although another CPU is idle (the scheduler's placement)",
        ),
        (
            "workload_cpu_10",
            "the workload's own CPU per event at 10 % load: workers' timed sleeps and wakes, \
             the compute in their own threads, no servers and no wakeups",
        ),
        ("workload_cpu_30", "same, 30 % load"),
        ("workload_cpu_50", "same, 50 % load"),
        ("workload_cpu_70", "same, 70 % load"),
        ("workload_cpu_90", "same, 90 % load"),
    ];

    /// The value of `key`; 0 for a key that is not in [`Calibration::KEYS`].
    pub fn get(&self, key: &str) -> f64 {
        self.values.get(key).copied().unwrap_or(0.0)
    }

    /// `prefix_K` interpolated at `k` (see the module doc).
    pub fn at_k(&self, prefix: &str, k: usize) -> f64 {
        let v: Vec<f64> = KS
            .iter()
            .map(|k| self.get(&format!("{prefix}_{k}")))
            .collect();
        let k = k.max(KS[0]) as f64;
        let (i, j) = if k <= KS[1] as f64 { (0, 1) } else { (1, 2) };
        let (k0, k1) = (KS[i] as f64, KS[j] as f64);
        let slope = (v[j] - v[i]) / (k1 - k0);
        (v[i] + slope * (k - k0)).max(0.0)
    }

    /// `workload_cpu_L` interpolated at `load` (a fraction; see the module doc).
    pub fn workload_cpu(&self, load: f64) -> f64 {
        let pts: Vec<(f64, f64)> = WORKLOAD_LOADS
            .iter()
            .map(|&l| (l, self.get(&format!("workload_cpu_{:.0}", l * 100.0))))
            .collect();
        let (first, last) = (pts[0], pts[pts.len() - 1]);
        if load <= first.0 {
            return first.1;
        }
        if load >= last.0 {
            return last.1;
        }
        for w in pts.windows(2) {
            let ((l0, v0), (l1, v1)) = (w[0], w[1]);
            if load <= l1 {
                return v0 + (v1 - v0) * (load - l0) / (l1 - l0);
            }
        }
        last.1
    }

    /// A reference calibration: `umcg-sim calibrate` on the project's CI-class machine (KVM
    /// guest, 2 vCPUs, guest haltpoll with `guest_halt_poll_ns=0`, kernel 6.18), quiet. For
    /// model runs without a calibration file (the CLI says when it uses it) and for tests.
    pub fn reference() -> Calibration {
        let pairs = [
            ("futex_same_lat", 2_400.0),
            ("futex_same_call", 1_700.0),
            ("futex_same_wakee", 1_600.0),
            ("futex_cross_lat", 31_000.0),
            ("futex_cross_call", 12_000.0),
            ("futex_cross_wakee", 10_000.0),
            ("epoll_same_lat", 3_300.0),
            ("epoll_same_call", 2_000.0),
            ("epoll_same_wakee", 2_400.0),
            ("epoll_cross_lat", 32_000.0),
            ("epoll_cross_call", 12_200.0),
            ("epoll_cross_wakee", 11_000.0),
            ("excl_call_2", 12_200.0),
            ("excl_call_8", 12_200.0),
            ("excl_call_32", 12_300.0),
            ("herd_call_2", 12_300.0),
            ("herd_call_8", 14_700.0),
            ("herd_call_32", 49_800.0),
            ("fd_write_nowaiter", 150.0),
            ("fd_stale", 600.0),
            ("claim_release", 50.0),
            ("adopt_path", 160.0),
            ("migrate_lat", 30_000.0),
            ("migrate_cpu", 20_000.0),
            ("stay_on_busy_pct", 25.0),
            ("workload_cpu_10", 17_000.0),
            ("workload_cpu_30", 12_300.0),
            ("workload_cpu_50", 9_900.0),
            ("workload_cpu_70", 9_000.0),
            ("workload_cpu_90", 8_500.0),
        ];
        Calibration {
            values: pairs.into_iter().collect(),
        }
    }

    /// From baselines measured in one run ([`crate::baseline::run_all`]); the error names the
    /// first figure that is missing (e.g. cross-CPU ones on a one-CPU machine).
    pub fn from_baselines(b: &[Baseline]) -> Result<Calibration, String> {
        let mut values = BTreeMap::new();
        for (key, name, fig) in SOURCES {
            let Some(x) = b.iter().find(|x| x.name == name) else {
                return Err(format!(
                    "baseline `{name}` for calibration key `{key}` is missing"
                ));
            };
            values.insert(
                key,
                match fig {
                    Fig::P50 => x.p50_ns,
                    Fig::Cpu => x.cpu_ns,
                },
            );
        }
        Ok(Calibration { values })
    }

    /// The file text, with `header` as leading comment lines.
    pub fn to_text(&self, header: &str) -> String {
        let mut s = String::new();
        for l in header.lines() {
            let _ = writeln!(s, "# {l}");
        }
        let _ = writeln!(s, "# values in ns, except stay_on_busy_pct (percent)");
        for (key, what) in Self::KEYS {
            let _ = writeln!(s, "{key} = {:.0}  # {what}", self.get(key));
        }
        s
    }

    /// Parse a calibration file (module doc). Errors name the line.
    pub fn parse(text: &str) -> Result<Calibration, String> {
        let mut values = BTreeMap::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!(
                    "line {}: expected `key = value`, got `{raw}`",
                    n + 1
                ));
            };
            let (k, v) = (k.trim(), v.trim());
            let Some(&(key, _)) = Self::KEYS.iter().find(|(key, _)| *key == k) else {
                return Err(format!("line {}: unknown key `{k}`", n + 1));
            };
            let val: f64 = v
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("line {}: `{v}` is not a non-negative number", n + 1))?;
            if key == "stay_on_busy_pct" && val > 100.0 {
                return Err(format!("line {}: `{v}` is not a percentage", n + 1));
            }
            values.insert(key, val);
        }
        if let Some((key, _)) = Self::KEYS.iter().find(|(k, _)| !values.contains_key(k)) {
            return Err(format!("missing key `{key}` (re-run `umcg-sim calibrate`)"));
        }
        Ok(Calibration { values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_sources_agree() {
        for ((k, _), (s, _, _)) in Calibration::KEYS.iter().zip(SOURCES.iter()) {
            assert_eq!(k, s);
        }
        let c = Calibration::reference();
        for (k, _) in Calibration::KEYS {
            assert!(c.values.contains_key(k), "{k}");
        }
    }

    #[test]
    fn round_trip_and_interpolation() {
        let c = Calibration::reference();
        let text = c.to_text("test\nsecond line");
        let back = Calibration::parse(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.at_k("herd_call", 2), 12_300.0);
        assert_eq!(c.at_k("herd_call", 1), 12_300.0);
        assert_eq!(c.at_k("herd_call", 32), 49_800.0);
        assert_eq!(c.at_k("herd_call", 8), 14_700.0);
        // Beyond 32: the 8..32 slope.
        let slope = (49_800.0 - 14_700.0) / 24.0;
        assert!((c.at_k("herd_call", 64) - (49_800.0 + 32.0 * slope)).abs() < 1e-6);
        assert_eq!(c.workload_cpu(0.05), 17_000.0);
        assert_eq!(c.workload_cpu(0.2), (17_000.0 + 12_300.0) / 2.0);
        assert_eq!(c.workload_cpu(0.95), 8_500.0);
    }

    #[test]
    fn from_baselines_names_the_missing_one() {
        let e = Calibration::from_baselines(&[]).unwrap_err();
        assert!(e.contains("wake1of1_futex_same"), "{e}");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = Calibration::parse("futex_same_lat 5").unwrap_err();
        assert!(e.contains("line 1") && e.contains("key = value"), "{e}");
        let e = Calibration::parse("# c\nbogus = 1").unwrap_err();
        assert!(e.contains("line 2") && e.contains("unknown key"), "{e}");
        let e = Calibration::parse("futex_same_lat = -3").unwrap_err();
        assert!(e.contains("non-negative"), "{e}");
        let e = Calibration::parse("stay_on_busy_pct = 300").unwrap_err();
        assert!(e.contains("percentage"), "{e}");
        let e = Calibration::parse("futex_same_lat = 100").unwrap_err();
        assert!(e.contains("missing key"), "{e}");
    }
}
