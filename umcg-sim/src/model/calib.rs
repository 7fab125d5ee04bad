//! The calibration file: the costs the model charges, measured on this machine by
//! `umcg-sim calibrate` (or by `umcg-sim compare` in the same run as its experiments) from
//! [`crate::baseline`], as `key = value` lines.
//!
//! Every value is a measured baseline figure (the key's doc names it); none is fitted to the
//! experiments the model is validated against. Values are ns, except `stay_on_busy_pct`
//! (percent).
//!
//! Format: one `key = value` per line; `#` starts a comment; blank lines are ignored; values
//! are non-negative decimal numbers. A distribution key ([`Calibration::dist_keys`]:
//! the mechanisms' handoffs) holds seven values instead, the latency at the quantiles of
//! [`QUANTILES`] (p1 p10 p25 p50 p75 p90 p99), non-decreasing; the model samples it by inverse
//! CDF, linear between those points. Unknown keys are an error (a typo would otherwise
//! silently fall back), and so is a missing key.
//!
//! Interpolation: `*_call_K` keys (K = 2, 8, 32 sleepers) are interpolated linearly in K and
//! extrapolated with the last segment's slope; `workload_cpu_L` keys (L = 10 … 90 % load) are
//! interpolated linearly in the load and held constant outside 10 … 90 %.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::baseline::{Baseline, QUANTILES, WORKLOAD_LOADS};

/// The K at which the one-of-K figures are measured.
pub const KS: [usize; 3] = [2, 8, 32];

/// The index of the median in [`QUANTILES`].
const MEDIAN: usize = 3;
const _: () = assert!(QUANTILES[MEDIAN] == 0.5);

/// Costs. See [`Calibration::KEYS`] for what each means.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// One value per scalar key, one per [`QUANTILES`] per distribution key.
    values: BTreeMap<&'static str, Vec<f64>>,
}

/// The baseline each key is read from and which of its figures (`p50` or `cpu`).
const SOURCES: [(&str, &str, Fig); 36] = [
    ("handoff_list_same", "handoff_list_same", Fig::Dist),
    ("handoff_list_cross", "handoff_list_cross", Fig::Dist),
    (
        "handoff_epoll-excl_same",
        "handoff_epoll-excl_same",
        Fig::Dist,
    ),
    (
        "handoff_epoll-excl_cross",
        "handoff_epoll-excl_cross",
        Fig::Dist,
    ),
    (
        "handoff_eventfd-per-server_same",
        "handoff_eventfd-per-server_same",
        Fig::Dist,
    ),
    (
        "handoff_eventfd-per-server_cross",
        "handoff_eventfd-per-server_cross",
        Fig::Dist,
    ),
    ("handoff_slot_same", "handoff_slot_same", Fig::Dist),
    ("handoff_slot_cross", "handoff_slot_cross", Fig::Dist),
    ("handoff_herd_same", "handoff_herd_same", Fig::Dist),
    ("handoff_herd_cross", "handoff_herd_cross", Fig::Dist),
    ("futex_same_call", "wake1of1_futex_same_wakercall", Fig::P50),
    ("futex_same_wakee", "wake1of1_futex_same", Fig::Cpu),
    (
        "futex_cross_call",
        "wake1of1_futex_cross_wakercall",
        Fig::P50,
    ),
    ("futex_cross_wakee", "wake1of1_futex_cross", Fig::Cpu),
    ("epoll_same_call", "wake1of1_epoll_same_wakercall", Fig::P50),
    ("epoll_same_wakee", "wake1of1_epoll_same", Fig::Cpu),
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
    ("adopt_path", "handoff_adopt_same", Fig::Dist),
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
    /// The latency at [`QUANTILES`].
    Dist,
}

impl Calibration {
    /// Every key with its meaning (the baseline it is measured by, [`crate::baseline`]).
    pub const KEYS: [(&'static str, &'static str); 36] = [
        (
            "handoff_list_same",
            "list: an unblocking worker wakes an idle server on its own CPU: latency from its \
             timestamp to the server starting it, clean handoffs of the harness at 20 % load \
             (the workload's own conditions; baseline::handoffs)",
        ),
        (
            "handoff_list_cross",
            "same, the server on another, idle (halted) CPU",
        ),
        (
            "handoff_epoll-excl_same",
            "as handoff_list_same, through epoll-excl",
        ),
        (
            "handoff_epoll-excl_cross",
            "as handoff_list_cross, through epoll-excl",
        ),
        (
            "handoff_eventfd-per-server_same",
            "as handoff_list_same, through eventfd-per-server",
        ),
        (
            "handoff_eventfd-per-server_cross",
            "as handoff_list_cross, through eventfd-per-server",
        ),
        ("handoff_slot_same", "as handoff_list_same, through slot"),
        ("handoff_slot_cross", "as handoff_list_cross, through slot"),
        (
            "handoff_herd_same",
            "herd at 2 CPUs: the first server to start is the one on the waker's CPU (after \
             the waker's write, which also woke the other CPU's)",
        ),
        (
            "handoff_herd_cross",
            "herd at 2 CPUs: the first server to start is the other CPU's",
        ),
        (
            "futex_same_call",
            "a thread just woken from a timed sleep (an unblocking worker) wakes a thread in \
             FUTEX_WAIT on its own CPU: the waker's FUTEX_WAKE call",
        ),
        (
            "futex_same_wakee",
            "same: the woken thread's CPU per wakeup, until it sleeps again",
        ),
        (
            "futex_cross_call",
            "the same wakeup of a thread on another, idle (halted) CPU: the waker's call (it \
             sends the wakeup IPI)",
        ),
        (
            "futex_cross_wakee",
            "same: the woken thread's CPU per wakeup (woken on a halted CPU)",
        ),
        (
            "epoll_same_call",
            "as futex_same_call, the wakee in epoll_wait on its own eventfd: the eventfd write",
        ),
        (
            "epoll_same_wakee",
            "same: the woken thread's CPU per wakeup",
        ),
        (
            "epoll_cross_call",
            "as futex_cross_call through epoll + eventfd: the eventfd write",
        ),
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
            "adopt: an unblocking worker claims its own CPU's idle server and starts at once: \
             latency from its timestamp to its start, in the harness at 20 % load",
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

    /// The keys whose value is a distribution ([`QUANTILES`]): those read from a
    /// distribution baseline.
    pub fn dist_keys() -> impl Iterator<Item = &'static str> {
        SOURCES
            .iter()
            .filter(|(_, _, f)| *f == Fig::Dist)
            .map(|&(k, _, _)| k)
    }

    /// The value of `key` (the median of a distribution key); 0 for a key that is not in
    /// [`Calibration::KEYS`].
    pub fn get(&self, key: &str) -> f64 {
        match self.values.get(key).map(Vec::as_slice) {
            Some([v]) => *v,
            Some(q) if q.len() == QUANTILES.len() => q[MEDIAN],
            _ => 0.0,
        }
    }

    /// The distribution of `key` at [`QUANTILES`] (a scalar key: its value at each).
    pub fn quantiles(&self, key: &str) -> [f64; QUANTILES.len()] {
        match self.values.get(key).map(Vec::as_slice) {
            Some(q) if q.len() == QUANTILES.len() => std::array::from_fn(|i| q[i]),
            _ => [self.get(key); QUANTILES.len()],
        }
    }

    /// A draw from the distribution `q` (latencies at [`QUANTILES`]) for a uniform `u` in
    /// (0, 1]: the inverse CDF, linear between the quantiles, held at p1 and p99 outside.
    pub fn sample(q: &[f64; QUANTILES.len()], u: f64) -> f64 {
        let last = QUANTILES.len() - 1;
        if u <= QUANTILES[0] {
            return q[0];
        }
        for i in 1..=last {
            if u <= QUANTILES[i] {
                let (u0, u1) = (QUANTILES[i - 1], QUANTILES[i]);
                return q[i - 1] + (q[i] - q[i - 1]) * (u - u0) / (u1 - u0);
            }
        }
        q[last]
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
    /// guest, 2 vCPUs, guest haltpoll with `guest_halt_poll_ns=0`, kernel 6.18), quiet; the
    /// handoff distributions from the `compare` run of BENCHMARKS.md §4 (commit `4ca45b6`).
    /// For model runs without a calibration file (the CLI says when it uses it) and for
    /// tests.
    pub fn reference() -> Calibration {
        let dists: [(&'static str, [f64; QUANTILES.len()]); 11] = [
            (
                "handoff_herd_same",
                [
                    3_000.0, 3_600.0, 4_960.0, 15_620.0, 16_540.0, 17_820.0, 33_150.0,
                ],
            ),
            (
                "handoff_herd_cross",
                [
                    5_810.0, 21_390.0, 25_180.0, 26_400.0, 28_640.0, 38_750.0, 79_300.0,
                ],
            ),
            (
                "handoff_list_same",
                [
                    2_240.0, 2_460.0, 2_690.0, 3_010.0, 3_580.0, 5_010.0, 48_100.0,
                ],
            ),
            (
                "handoff_list_cross",
                [
                    7_060.0, 24_290.0, 25_100.0, 26_610.0, 30_980.0, 42_940.0, 81_150.0,
                ],
            ),
            (
                "handoff_epoll-excl_same",
                [
                    2_840.0, 3_190.0, 3_500.0, 3_910.0, 4_600.0, 7_260.0, 46_560.0,
                ],
            ),
            (
                "handoff_epoll-excl_cross",
                [
                    10_610.0, 24_700.0, 25_500.0, 26_780.0, 30_110.0, 41_380.0, 84_350.0,
                ],
            ),
            (
                "handoff_eventfd-per-server_same",
                [
                    2_610.0, 2_970.0, 3_250.0, 3_590.0, 4_160.0, 6_850.0, 49_220.0,
                ],
            ),
            (
                "handoff_eventfd-per-server_cross",
                [
                    7_420.0, 24_300.0, 25_310.0, 26_750.0, 31_360.0, 46_180.0, 93_570.0,
                ],
            ),
            (
                "handoff_slot_same",
                [
                    2_220.0, 2_470.0, 2_640.0, 2_930.0, 3_440.0, 4_900.0, 28_400.0,
                ],
            ),
            (
                "handoff_slot_cross",
                [
                    5_790.0, 24_220.0, 25_570.0, 27_340.0, 32_830.0, 42_340.0, 92_420.0,
                ],
            ),
            (
                "adopt_path",
                [180.0, 210.0, 270.0, 450.0, 740.0, 1_230.0, 1_930.0],
            ),
        ];
        let pairs = [
            ("futex_same_call", 1_700.0),
            ("futex_same_wakee", 1_600.0),
            ("futex_cross_call", 12_000.0),
            ("futex_cross_wakee", 10_000.0),
            ("epoll_same_call", 2_000.0),
            ("epoll_same_wakee", 2_400.0),
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
            ("migrate_lat", 30_000.0),
            ("migrate_cpu", 20_000.0),
            ("stay_on_busy_pct", 25.0),
            ("workload_cpu_10", 17_000.0),
            ("workload_cpu_30", 12_300.0),
            ("workload_cpu_50", 9_900.0),
            ("workload_cpu_70", 9_000.0),
            ("workload_cpu_90", 8_500.0),
        ];
        let mut values: BTreeMap<&'static str, Vec<f64>> =
            pairs.into_iter().map(|(k, v)| (k, vec![v])).collect();
        values.extend(dists.into_iter().map(|(k, q)| (k, q.to_vec())));
        Calibration { values }
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
            let v = match fig {
                Fig::P50 => vec![x.p50_ns],
                Fig::Cpu => vec![x.cpu_ns],
                Fig::Dist if x.quantiles_ns.len() == QUANTILES.len() => x.quantiles_ns.clone(),
                Fig::Dist => {
                    return Err(format!(
                        "baseline `{name}` for calibration key `{key}` has no distribution"
                    ));
                }
            };
            values.insert(key, v);
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
        let _ = writeln!(
            s,
            "# handoff_* and adopt_path: latency at the quantiles p1 p10 p25 p50 p75 p90 p99"
        );
        for (key, what) in Self::KEYS {
            let v: Vec<String> = self
                .values
                .get(key)
                .map(|v| v.iter().map(|x| format!("{x:.0}")).collect())
                .unwrap_or_else(|| vec!["0".into()]);
            let _ = writeln!(s, "{key} = {}  # {what}", v.join(" "));
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
            let mut vals = Vec::new();
            for x in v.split_whitespace() {
                let val: f64 = x
                    .parse()
                    .ok()
                    .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| format!("line {}: `{x}` is not a non-negative number", n + 1))?;
                vals.push(val);
            }
            let want = if Self::dist_keys().any(|d| d == key) {
                QUANTILES.len()
            } else {
                1
            };
            if vals.len() != want {
                return Err(format!(
                    "line {}: `{k}` takes {want} value(s) ({}), got {}",
                    n + 1,
                    if want == 1 {
                        "a number"
                    } else {
                        "the latency at p1 p10 p25 p50 p75 p90 p99"
                    },
                    vals.len()
                ));
            }
            if vals.windows(2).any(|w| w[1] < w[0]) {
                return Err(format!(
                    "line {}: `{k}`: quantiles must not decrease",
                    n + 1
                ));
            }
            if key == "stay_on_busy_pct" && vals[0] > 100.0 {
                return Err(format!("line {}: `{v}` is not a percentage", n + 1));
            }
            values.insert(key, vals);
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
        assert!(e.contains("handoff_list_same"), "{e}");
        // A distribution key needs the baseline's quantiles.
        let scalar = Baseline {
            name: "handoff_list_same".into(),
            placement: String::new(),
            p50_ns: 1.0,
            p99_ns: 1.0,
            cpu_ns: 0.0,
            quantiles_ns: Vec::new(),
        };
        let e = Calibration::from_baselines(&[scalar]).unwrap_err();
        assert!(e.contains("no distribution"), "{e}");
    }

    #[test]
    fn distributions_round_trip_and_sample() {
        let c = Calibration::reference();
        let q = c.quantiles("handoff_list_cross");
        assert_eq!(c.get("handoff_list_cross"), q[MEDIAN]);
        // A scalar key reads as a constant distribution.
        assert_eq!(c.quantiles("claim_release"), [50.0; QUANTILES.len()]);
        // The inverse CDF hits every stored quantile, interpolates between, clamps outside.
        for (i, &u) in QUANTILES.iter().enumerate() {
            assert!((Calibration::sample(&q, u) - q[i]).abs() < 1e-9, "{u}");
        }
        let mid = Calibration::sample(&q, 0.375);
        assert!((mid - (q[2] + q[3]) / 2.0).abs() < 1e-6, "{mid}");
        assert_eq!(Calibration::sample(&q, 1e-9), q[0]);
        assert_eq!(Calibration::sample(&q, 1.0), q[QUANTILES.len() - 1]);
        // Sampling reproduces the median.
        let mut rng = crate::harness::SplitMix::new(5);
        let mut v: Vec<f64> = (0..20_001)
            .map(|_| Calibration::sample(&q, rng.unit()))
            .collect();
        v.sort_by(f64::total_cmp);
        let med = v[10_000];
        assert!((med - q[MEDIAN]).abs() / q[MEDIAN] < 0.03, "{med}");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = Calibration::parse("futex_same_call 5").unwrap_err();
        assert!(e.contains("line 1") && e.contains("key = value"), "{e}");
        let e = Calibration::parse("# c\nbogus = 1").unwrap_err();
        assert!(e.contains("line 2") && e.contains("unknown key"), "{e}");
        let e = Calibration::parse("futex_same_call = -3").unwrap_err();
        assert!(e.contains("non-negative"), "{e}");
        let e = Calibration::parse("stay_on_busy_pct = 300").unwrap_err();
        assert!(e.contains("percentage"), "{e}");
        let e = Calibration::parse("futex_same_call = 100").unwrap_err();
        assert!(e.contains("missing key"), "{e}");
        let e = Calibration::parse("handoff_list_same = 100").unwrap_err();
        assert!(e.contains("takes 7 value(s)") && e.contains("p99"), "{e}");
        let e = Calibration::parse("handoff_list_same = 7 6 5 4 3 2 1").unwrap_err();
        assert!(e.contains("must not decrease"), "{e}");
        let e = Calibration::parse("claim_release = 1 2").unwrap_err();
        assert!(e.contains("takes 1 value(s)"), "{e}");
    }
}
