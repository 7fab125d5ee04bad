//! The calibration file: the costs the model charges, measured on this machine by
//! `umcg-sim calibrate` (from [`crate::baseline`]), as `key = value` lines in ns.
//!
//! Format: one `key = value` per line; `#` starts a comment; blank lines are ignored; values
//! are non-negative decimal numbers (ns). Unknown keys are an error (a typo would otherwise
//! silently fall back), and so is a missing key. Keys with a `_K` suffix are "wake one of K
//! idle threads" figures at K = 2, 8 and 32; the model interpolates linearly in K between
//! them and extrapolates with the last segment's slope.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::baseline::Baseline;

/// The K at which the one-of-K figures are measured.
pub const KS: [usize; 3] = [2, 8, 32];

/// Costs in ns. See [`Calibration::KEYS`] for what each means.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    values: BTreeMap<&'static str, f64>,
}

impl Calibration {
    /// Every key with its meaning.
    pub const KEYS: [(&'static str, &'static str); 30] = [
        ("syscall", "enter and leave the kernel (gettid)"),
        (
            "futex_same",
            "futex handoff, both threads on one CPU (half a ping-pong round trip)",
        ),
        ("futex_cross", "futex handoff across CPUs"),
        ("eventfd_same", "blocking-eventfd handoff, one CPU"),
        ("eventfd_cross", "blocking-eventfd handoff across CPUs"),
        ("epoll_same", "eventfd-behind-epoll handoff, one CPU"),
        ("epoll_cross", "eventfd-behind-epoll handoff across CPUs"),
        (
            "claim_release",
            "tag-bit list pop + reclaim + push (adopt's cost instead of a wake)",
        ),
        (
            "timed_wake_cpu",
            "CPU of one timed sleep-and-wake of a thread (every worker, every event)",
        ),
        (
            "futex_lat_2",
            "wake one of 2 by targeted FUTEX_WAKE: latency",
        ),
        ("futex_lat_8", "same, K = 8"),
        ("futex_lat_32", "same, K = 32"),
        ("futex_cpu_2", "same: woken threads' CPU per wakeup"),
        ("futex_cpu_8", "same, K = 8"),
        ("futex_cpu_32", "same, K = 32"),
        ("futex_call_2", "same: the waker's FUTEX_WAKE call"),
        (
            "excl_lat_2",
            "wake one of 2 by shared eventfd + EPOLLEXCLUSIVE: latency",
        ),
        ("excl_lat_8", "same, K = 8"),
        ("excl_lat_32", "same, K = 32"),
        ("excl_cpu_2", "same: woken threads' CPU per wakeup"),
        ("excl_cpu_8", "same, K = 8"),
        ("excl_cpu_32", "same, K = 32"),
        ("excl_call_2", "same: the waker's eventfd write"),
        (
            "herd_lat_2",
            "wake one of 2, shared eventfd without EPOLLEXCLUSIVE: latency",
        ),
        ("herd_lat_8", "same, K = 8"),
        ("herd_lat_32", "same, K = 32"),
        ("herd_cpu_2", "same: all woken threads' CPU per wakeup"),
        ("herd_cpu_8", "same, K = 8"),
        ("herd_cpu_32", "same, K = 32"),
        (
            "herd_call_32",
            "same: the waker's eventfd write with 32 waiters",
        ),
    ];

    /// The value of `key` (ns); 0 for a key that is not in [`Calibration::KEYS`].
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

    /// Figures from LIMITS.md (KVM guest, 2 vCPUs), for a model run without a calibration
    /// file. The CLI says when it uses them.
    pub fn limits_md() -> Calibration {
        let pairs = [
            ("syscall", 110.0),
            ("futex_same", 900.0),
            ("futex_cross", 5_200.0),
            ("eventfd_same", 1_150.0),
            ("eventfd_cross", 5_050.0),
            ("epoll_same", 1_600.0),
            ("epoll_cross", 6_150.0),
            ("claim_release", 60.0),
            ("timed_wake_cpu", 3_000.0),
            ("futex_lat_2", 5_700.0),
            ("futex_lat_8", 5_800.0),
            ("futex_lat_32", 5_400.0),
            ("futex_cpu_2", 4_400.0),
            ("futex_cpu_8", 4_600.0),
            ("futex_cpu_32", 4_100.0),
            ("futex_call_2", 1_000.0),
            ("excl_lat_2", 5_800.0),
            ("excl_lat_8", 7_900.0),
            ("excl_lat_32", 8_600.0),
            ("excl_cpu_2", 4_700.0),
            ("excl_cpu_8", 6_400.0),
            ("excl_cpu_32", 7_600.0),
            ("excl_call_2", 1_100.0),
            ("herd_lat_2", 8_600.0),
            ("herd_lat_8", 16_000.0),
            ("herd_lat_32", 76_000.0),
            ("herd_cpu_2", 8_800.0),
            ("herd_cpu_8", 19_000.0),
            ("herd_cpu_32", 73_000.0),
            ("herd_call_32", 10_000.0),
        ];
        Calibration {
            values: pairs.into_iter().collect(),
        }
    }

    /// From baselines measured in one run ([`crate::baseline::run_all`]); `None` names the
    /// first figure that is missing (e.g. cross-CPU ones on a one-CPU machine).
    pub fn from_baselines(b: &[Baseline]) -> Result<Calibration, String> {
        let find = |name: &str| b.iter().find(|x| x.name == name);
        let mut values = BTreeMap::new();
        for (key, _) in Self::KEYS {
            let v = match key {
                "syscall" => find("syscall_gettid").map(|x| x.p50_ns),
                "claim_release" => find("list_claim_release").map(|x| x.p50_ns),
                "timed_wake_cpu" => find("timed_sleep_wake").map(|x| x.cpu_ns),
                k if k.starts_with("futex_same") || k.starts_with("futex_cross") => {
                    find(&format!("futex_pingpong_{}", &k[6..])).map(|x| x.p50_ns)
                }
                k if k.starts_with("eventfd_") => {
                    find(&format!("eventfd_pingpong_{}", &k[8..])).map(|x| x.p50_ns)
                }
                k if k.starts_with("epoll_") => {
                    find(&format!("epoll_eventfd_pingpong_{}", &k[6..])).map(|x| x.p50_ns)
                }
                k => {
                    let (kind, rest) = k.split_once('_').unwrap_or((k, ""));
                    let (what, kk) = rest.split_once('_').unwrap_or((rest, ""));
                    let kind = match kind {
                        "futex" => "futex",
                        "excl" => "epollexclusive",
                        _ => "herd",
                    };
                    let base = format!("wake1of{kk}_{kind}");
                    match what {
                        "lat" => find(&base).map(|x| x.p50_ns),
                        "cpu" => find(&base).map(|x| x.cpu_ns),
                        _ => find(&format!("{base}_wakercall")).map(|x| x.p50_ns),
                    }
                }
            };
            match v {
                Some(v) => {
                    values.insert(key, v);
                }
                None => return Err(format!("baseline for calibration key `{key}` is missing")),
            }
        }
        Ok(Calibration { values })
    }

    /// The file text, with `header` as leading comment lines.
    pub fn to_text(&self, header: &str) -> String {
        let mut s = String::new();
        for l in header.lines() {
            let _ = writeln!(s, "# {l}");
        }
        let _ = writeln!(s, "# all values in ns");
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
                .ok_or_else(|| {
                    format!("line {}: `{v}` is not a non-negative number of ns", n + 1)
                })?;
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
    fn round_trip_and_interpolation() {
        let c = Calibration::limits_md();
        let text = c.to_text("test\nsecond line");
        let back = Calibration::parse(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.at_k("herd_lat", 2), 8_600.0);
        assert_eq!(c.at_k("herd_lat", 1), 8_600.0);
        assert_eq!(c.at_k("herd_lat", 32), 76_000.0);
        assert_eq!(c.at_k("herd_lat", 20), 46_000.0);
        assert_eq!(c.at_k("herd_lat", 56), 136_000.0);
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = Calibration::parse("syscall 5").unwrap_err();
        assert!(e.contains("line 1") && e.contains("key = value"), "{e}");
        let e = Calibration::parse("# c\nbogus = 1").unwrap_err();
        assert!(e.contains("line 2") && e.contains("unknown key"), "{e}");
        let e = Calibration::parse("syscall = -3").unwrap_err();
        assert!(e.contains("non-negative"), "{e}");
        let e = Calibration::parse("syscall = 100").unwrap_err();
        assert!(e.contains("missing key"), "{e}");
    }
}
