//! Tables, CSV, JSON (written by hand: small, strings escaped) and SVG plots (plotters' SVG
//! backend, no font files: text is left to the SVG viewer).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::Mechanism;
use crate::baseline::Baseline;
use crate::harness::RunResult;
use crate::model::Prediction;
use crate::os::Machine;

/// A JSON string literal for `s` (quotes, backslashes and control characters escaped).
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number (non-finite values become `null`).
pub fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

/// A CSV field: quoted when it holds a comma, quote or newline (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The comparison table for the runs at one load.
pub fn table(runs: &[&RunResult], futex_cross_ns: Option<f64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<19} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6} {:>6} {:>6} {:>7}",
        "mechanism",
        "load",
        "offered/s",
        "achvd/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "CPU/ev us",
        "vcsw",
        "ivcsw",
        "futile",
        "p50/fx"
    );
    for r in runs {
        let ratio = futex_cross_ns
            .filter(|&f| f > 0.0)
            .map(|f| format!("{:.2}", r.latency.value_at_quantile(0.5) as f64 / f))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<19} {:>6.2} {:>9.0} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>8.2} {:>6.2} {:>6.2} {:>6.2} {:>7}",
            r.mechanism.name(),
            r.config.load,
            r.offered_per_s,
            r.achieved_per_s(),
            r.quantile_us(0.5),
            r.quantile_us(0.99),
            r.quantile_us(0.999),
            r.latency.max() as f64 / 1000.0,
            r.cpu_per_event_ns() / 1000.0,
            r.vcsw_per_event(),
            r.ivcsw_per_event(),
            r.futile as f64 / r.events.max(1) as f64,
            ratio,
        );
    }
    s
}

/// The baselines as a table.
pub fn baseline_table(b: &[Baseline]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<36} {:>9} {:>9} {:>9}  placement",
        "baseline", "p50 us", "p99 us", "CPU us"
    );
    for x in b {
        let _ = writeln!(
            s,
            "{:<36} {:>9.2} {:>9.2} {:>9.2}  {}",
            x.name,
            x.p50_ns / 1000.0,
            x.p99_ns / 1000.0,
            x.cpu_ns / 1000.0,
            x.placement
        );
    }
    s
}

/// CSV of all runs.
pub fn runs_csv(runs: &[RunResult]) -> String {
    let mut s = String::from(
        "mechanism,servers,workers,cpus,load,compute_us,offered_per_s,achieved_per_s,events,\
         p50_us,p99_us,p999_us,max_us,cpu_per_event_us,vcsw_per_event,ivcsw_per_event,\
         woken,signalled,no_idle,raced,failed,adopted,server_wakeups,futile,late,rescues,\
         stalls,mean_block_us,same_cpu_fraction,same_cpu_p50_us,cross_cpu_p50_us,lag_p50_us,\
         lag_p99_us\n",
    );
    for r in runs {
        let c = &r.config;
        let cpus = c
            .cpus
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let w = &r.wakes;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.1},{:.1},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.3},{:.3},{:.3},{:.3},{:.3}",
            r.mechanism.name(),
            c.servers,
            c.workers,
            csv_field(&cpus),
            c.load,
            c.compute_ns as f64 / 1000.0,
            r.offered_per_s,
            r.achieved_per_s(),
            r.events,
            r.quantile_us(0.5),
            r.quantile_us(0.99),
            r.quantile_us(0.999),
            r.latency.max() as f64 / 1000.0,
            r.cpu_per_event_ns() / 1000.0,
            r.vcsw_per_event(),
            r.ivcsw_per_event(),
            w.woken,
            w.signalled,
            w.no_idle,
            w.raced,
            w.failed,
            w.adopted,
            r.server_wakeups,
            r.futile,
            r.late,
            r.rescues,
            r.stalls,
            r.mean_block_ns / 1000.0,
            r.same_cpu_fraction(),
            r.p50_same_cross_us().0,
            r.p50_same_cross_us().1,
            r.lag_us(0.5),
            r.lag_us(0.99),
        );
    }
    s
}

/// CSV of baselines.
pub fn baselines_csv(b: &[Baseline]) -> String {
    let mut s = String::from("name,placement,p50_ns,p99_ns,cpu_ns\n");
    for x in b {
        let _ = writeln!(
            s,
            "{},{},{:.0},{:.0},{:.0}",
            csv_field(&x.name),
            csv_field(&x.placement),
            x.p50_ns,
            x.p99_ns,
            x.cpu_ns
        );
    }
    s
}

/// The whole comparison as JSON.
pub fn json(
    machine: &Machine,
    placement: &str,
    command: &str,
    runs: &[RunResult],
    b: &[Baseline],
) -> String {
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"machine\": {{");
    let _ = writeln!(s, "    \"cpu\": {},", json_str(&machine.cpu));
    let cpus = machine
        .allowed_cpus
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(s, "    \"allowed_cpus\": [{cpus}],");
    let _ = writeln!(s, "    \"kernel\": {},", json_str(&machine.kernel));
    let _ = writeln!(s, "    \"rustc\": {},", json_str(&machine.rustc));
    let _ = writeln!(s, "    \"commit\": {}", json_str(&machine.commit));
    let _ = writeln!(s, "  }},");
    let _ = writeln!(s, "  \"placement\": {},", json_str(placement));
    let _ = writeln!(s, "  \"command\": {},", json_str(command));
    let _ = writeln!(s, "  \"baselines\": [");
    for (i, x) in b.iter().enumerate() {
        let _ = writeln!(
            s,
            "    {{\"name\": {}, \"placement\": {}, \"p50_ns\": {}, \"p99_ns\": {}, \"cpu_ns\": {}}}{}",
            json_str(&x.name),
            json_str(&x.placement),
            json_num(x.p50_ns),
            json_num(x.p99_ns),
            json_num(x.cpu_ns),
            if i + 1 < b.len() { "," } else { "" }
        );
    }
    let _ = writeln!(s, "  ],");
    let _ = writeln!(s, "  \"runs\": [");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "    {{\"mechanism\": {}, \"load\": {}, \"servers\": {}, \"workers\": {}, \"compute_us\": {}, \
             \"offered_per_s\": {}, \"achieved_per_s\": {}, \"events\": {}, \"p50_us\": {}, \"p99_us\": {}, \
             \"p999_us\": {}, \"max_us\": {}, \"cpu_per_event_us\": {}, \"vcsw_per_event\": {}, \
             \"ivcsw_per_event\": {}, \"futile\": {}, \"late\": {}, \"rescues\": {}, \
             \"stalls\": {}, \"lag_p99_us\": {}}}{}",
            json_str(r.mechanism.name()),
            json_num(r.config.load),
            r.config.servers,
            r.config.workers,
            json_num(r.config.compute_ns as f64 / 1000.0),
            json_num(r.offered_per_s),
            json_num(r.achieved_per_s()),
            r.events,
            json_num(r.quantile_us(0.5)),
            json_num(r.quantile_us(0.99)),
            json_num(r.quantile_us(0.999)),
            json_num(r.latency.max() as f64 / 1000.0),
            json_num(r.cpu_per_event_ns() / 1000.0),
            json_num(r.vcsw_per_event()),
            json_num(r.ivcsw_per_event()),
            r.futile,
            r.late,
            r.rescues,
            r.stalls,
            json_num(r.lag_us(0.99)),
            if i + 1 < runs.len() { "," } else { "" }
        );
    }
    let _ = writeln!(s, "  ]");
    s.push_str("}\n");
    s
}

fn color(m: Mechanism) -> RGBColor {
    match m {
        Mechanism::List => RGBColor(31, 119, 180),
        Mechanism::EpollExclusive => RGBColor(255, 127, 14),
        Mechanism::EventFdPerServer => RGBColor(44, 160, 44),
        Mechanism::Herd => RGBColor(214, 39, 40),
        Mechanism::Slot => RGBColor(148, 103, 189),
        Mechanism::Adopt => RGBColor(90, 90, 90),
    }
}

/// Series of (x, y) per mechanism.
pub type Series = Vec<(Mechanism, Vec<(f64, f64)>)>;

/// A line plot; `log_x`/`log_y` select logarithmic axes (values must then be > 0).
pub fn line_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &Series,
    log_x: bool,
    log_y: bool,
) -> Result<(), String> {
    let pts = series.iter().flat_map(|(_, v)| v.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        if !(x.is_finite() && y.is_finite()) || (log_x && x <= 0.0) || (log_y && y <= 0.0) {
            continue;
        }
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(format!("{title}: nothing to plot"));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if !log_y {
        y0 = y0.min(0.0);
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let (x0, x1) = if log_x {
        (x0 * 0.9, x1 * 1.1)
    } else {
        (x0, x1)
    };
    let (y0, y1) = if log_y {
        (y0 * 0.9, y1 * 1.2)
    } else {
        (y0, y1 * 1.05)
    };
    let root = SVGBackend::new(path, (860, 520)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart.map_err(|x| e(&x))?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .draw()
                .map_err(|x| e(&x))?;
            for (m, v) in series {
                let c = color(*m);
                let v: Vec<(f64, f64)> = v
                    .iter()
                    .copied()
                    .filter(|&(x, y)| (!log_x || x > 0.0) && (!log_y || y > 0.0))
                    .collect();
                chart
                    .draw_series(LineSeries::new(v, c.stroke_width(2)))
                    .map_err(|x| e(&x))?
                    .label(m.name())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|x| e(&x))?;
        }};
    }
    match (log_x, log_y) {
        (true, true) => draw!(b.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())),
        (true, false) => draw!(b.build_cartesian_2d((x0..x1).log_scale(), y0..y1)),
        (false, true) => draw!(b.build_cartesian_2d(x0..x1, (y0..y1).log_scale())),
        (false, false) => draw!(b.build_cartesian_2d(x0..x1, y0..y1)),
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// CDF points of a latency histogram: (latency µs, fraction ≤).
pub fn cdf_points(h: &hdrhistogram::Histogram<u64>) -> Vec<(f64, f64)> {
    let n = h.len().max(1) as f64;
    let mut acc = 0u64;
    h.iter_recorded()
        .map(|v| {
            acc += v.count_at_value();
            (v.value_iterated_to() as f64 / 1000.0, acc as f64 / n)
        })
        .collect()
}

/// What a winner map ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// p50 latency.
    P50,
    /// CPU per event beyond the compute.
    Cpu,
}

impl Metric {
    fn of(self, p: &Prediction) -> f64 {
        match self {
            Metric::P50 => p.quantile_us(0.5),
            Metric::Cpu => p.cpu_per_event_ns / 1000.0,
        }
    }
}

/// One cell of a winner map.
#[derive(Clone, Debug, PartialEq)]
pub struct Winner {
    /// CPUs.
    pub cpus: usize,
    /// Offered load.
    pub load: f64,
    /// The best wakeup mechanism (not `adopt`).
    pub winner: Mechanism,
    /// Its value (µs).
    pub value: f64,
    /// The list's value / the winner's (≥ 1); where the list wins, the runner-up's / the
    /// list's.
    pub ratio: f64,
    /// The runner-up, where the list wins.
    pub runner_up: Option<Mechanism>,
}

fn point(preds: &[Prediction], m: Mechanism, c: usize, l: f64) -> Option<&Prediction> {
    preds
        .iter()
        .find(|p| p.mechanism == m && p.params.cpus == c && (p.params.load - l).abs() < 1e-9)
}

/// The winner map over (CPUs, load) among the mechanisms a kernel could ship (not `adopt`):
/// a text matrix, and its cells. Saturated predictions ([`Prediction::saturated`]) cannot
/// win; a cell where every mechanism saturates reads `saturated` and has no [`Winner`].
pub fn winner_map(
    preds: &[Prediction],
    cpus: &[usize],
    loads: &[f64],
    metric: Metric,
) -> (String, Vec<Winner>) {
    let mut s = String::new();
    let mut cells = Vec::new();
    let _ = write!(s, "{:>5}", "CPUs");
    for l in loads {
        let _ = write!(s, " {:>20}", format!("{:.0} %", l * 100.0));
    }
    s.push('\n');
    for &c in cpus {
        let _ = write!(s, "{c:>5}");
        for &l in loads {
            let all: Vec<&Prediction> = Mechanism::ALL
                .iter()
                .filter(|&&m| m != Mechanism::Adopt)
                .filter_map(|&m| point(preds, m, c, l))
                .collect();
            let mut cell: Vec<&Prediction> =
                all.iter().copied().filter(|p| !p.saturated()).collect();
            cell.sort_by(|a, b| metric.of(a).total_cmp(&metric.of(b)));
            let list = point(preds, Mechanism::List, c, l).map(|p| metric.of(p));
            let txt = match (cell.as_slice(), list) {
                ([w, r, ..], Some(lv)) => {
                    let (ratio, runner_up) = if w.mechanism == Mechanism::List {
                        (metric.of(r) / lv.max(1e-6), Some(r.mechanism))
                    } else {
                        (lv / metric.of(w).max(1e-6), None)
                    };
                    cells.push(Winner {
                        cpus: c,
                        load: l,
                        winner: w.mechanism,
                        value: metric.of(w),
                        ratio,
                        runner_up,
                    });
                    format!("{} x{:.2}", short(w.mechanism), ratio)
                }
                ([w], _) => {
                    cells.push(Winner {
                        cpus: c,
                        load: l,
                        winner: w.mechanism,
                        value: metric.of(w),
                        ratio: f64::INFINITY,
                        runner_up: None,
                    });
                    format!("{} only", short(w.mechanism))
                }
                ([], _) if !all.is_empty() => "saturated".into(),
                _ => "-".into(),
            };
            let _ = write!(s, " {txt:>20}");
        }
        s.push('\n');
    }
    (s, cells)
}

/// A win by less than this factor over the runner-up is a tie: the model's own sampling
/// noise at 20 000 arrivals per point is a few percent, and the calibration's more.
pub const CLEAR_WIN: f64 = 1.10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// The sweep's answer in a few lines: per wakeup mechanism (not `adopt`), the grid points it
/// wins clearly by `metric` (by [`CLEAR_WIN`] or more over the best other unsaturated
/// mechanism), where (CPU and load ranges), by how much (median margin), and at what price
/// in the other metric (median of its value / the list's there); then how many points are
/// ties and how many saturate.
pub fn sweep_summary(
    preds: &[Prediction],
    cpus: &[usize],
    loads: &[f64],
    metric: Metric,
) -> String {
    let other = match metric {
        Metric::P50 => Metric::Cpu,
        Metric::Cpu => Metric::P50,
    };
    let mechs: Vec<Mechanism> = Mechanism::ALL
        .into_iter()
        .filter(|&m| m != Mechanism::Adopt)
        .collect();
    // (winner, cpus, load, margin, other metric vs list)
    let mut wins: Vec<(Mechanism, usize, f64, f64, f64)> = Vec::new();
    let (mut ties, mut saturated, mut total) = (0, 0, 0);
    for &c in cpus {
        for &l in loads {
            let mut cell: Vec<&Prediction> = mechs
                .iter()
                .filter_map(|&m| point(preds, m, c, l))
                .filter(|p| !p.saturated())
                .collect();
            total += 1;
            cell.sort_by(|a, b| metric.of(a).total_cmp(&metric.of(b)));
            match cell.as_slice() {
                [] => saturated += 1,
                [w] => wins.push((w.mechanism, c, l, f64::INFINITY, 1.0)),
                [w, r, ..] => {
                    let margin = metric.of(r) / metric.of(w).max(1e-6);
                    if margin < CLEAR_WIN {
                        ties += 1;
                        continue;
                    }
                    let vs_list = point(preds, Mechanism::List, c, l)
                        .map_or(f64::NAN, |li| other.of(w) / other.of(li).max(1e-6));
                    wins.push((w.mechanism, c, l, margin, vs_list));
                }
            }
        }
    }
    let mut s = String::new();
    let (what, price) = match metric {
        Metric::P50 => ("p50", "CPU/event"),
        Metric::Cpu => ("CPU/event", "p50"),
    };
    for m in mechs {
        let w: Vec<_> = wins.iter().filter(|x| x.0 == m).collect();
        if w.is_empty() {
            let _ = writeln!(s, "  {:<19} no clear win", m.name());
            continue;
        }
        let cmin = w.iter().map(|x| x.1).min().unwrap_or(0);
        let cmax = w.iter().map(|x| x.1).max().unwrap_or(0);
        let lmin = w.iter().map(|x| x.2).fold(f64::INFINITY, f64::min);
        let lmax = w.iter().map(|x| x.2).fold(0.0, f64::max);
        let finite: Vec<f64> = w.iter().map(|x| x.3).filter(|x| x.is_finite()).collect();
        let only = w.len() - finite.len();
        let margin = if finite.is_empty() {
            "as the only unsaturated one".to_string()
        } else {
            format!("by x{:.2} over the runner-up (median)", median(finite))
        };
        let _ = write!(
            s,
            "  {:<19} wins {:>3} of {total} points (CPUs {cmin}..{cmax}, load {:.0}..{:.0} %) {margin}",
            m.name(),
            w.len(),
            lmin * 100.0,
            lmax * 100.0,
        );
        if only > 0 && only < w.len() {
            let _ = write!(s, " ({only} of them as the only unsaturated one)");
        }
        if m != Mechanism::List {
            let p = median(w.iter().map(|x| x.4).collect());
            let _ = write!(s, "; its {price} there: x{p:.2} the list's");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "  ties (best {what} within x{CLEAR_WIN:.2} of the runner-up): {ties} of {total} points; \
         every mechanism saturated: {saturated}"
    );
    s
}

/// A short name for matrices.
fn short(m: Mechanism) -> &'static str {
    match m {
        Mechanism::EventFdPerServer => "eventfd/srv",
        m => m.name(),
    }
}

/// `adopt` against the list per (CPUs, load): list p50 / adopt p50 | list CPU / adopt CPU.
pub fn adopt_table(preds: &[Prediction], cpus: &[usize], loads: &[f64]) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:>5}", "CPUs");
    for l in loads {
        let _ = write!(s, " {:>14}", format!("{:.0} %", l * 100.0));
    }
    s.push('\n');
    for &c in cpus {
        let _ = write!(s, "{c:>5}");
        for &l in loads {
            let txt = match (
                point(preds, Mechanism::List, c, l),
                point(preds, Mechanism::Adopt, c, l),
            ) {
                (Some(li), Some(ad)) => format!(
                    "x{:.0} | x{:.1}",
                    li.quantile_us(0.5) / ad.quantile_us(0.5).max(1e-3),
                    li.cpu_per_event_ns / ad.cpu_per_event_ns.max(1e-3)
                ),
                _ => "-".into(),
            };
            let _ = write!(s, " {txt:>14}");
        }
        s.push('\n');
    }
    s
}

/// Every prediction: p50 | CPU per event (µs), one row per (CPUs, load); `*` marks a
/// saturated one.
pub fn prediction_table(preds: &[Prediction], cpus: &[usize], loads: &[f64]) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:>5} {:>5}", "CPUs", "load");
    for m in Mechanism::ALL {
        let _ = write!(s, " {:>19}", m.name());
    }
    s.push('\n');
    for &c in cpus {
        for &l in loads {
            let _ = write!(s, "{c:>5} {:>4.0}%", l * 100.0);
            for m in Mechanism::ALL {
                let txt = point(preds, m, c, l)
                    .map(|p| {
                        format!(
                            "{}{:.1} | {:.1}",
                            if p.saturated() { "*" } else { "" },
                            p.quantile_us(0.5),
                            p.cpu_per_event_ns / 1000.0
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                let _ = write!(s, " {txt:>19}");
            }
            s.push('\n');
        }
    }
    s
}

/// The two winner maps as CSV, one row per (CPUs, load) of the grid; `saturated` where every
/// mechanism saturates.
pub fn winners_csv(p50: &[Winner], cpu: &[Winner], cpus: &[usize], loads: &[f64]) -> String {
    let mut s = String::from(
        "cpus,load,p50_winner,p50_us,p50_ratio_vs_list,p50_runner_up,cpu_winner,cpu_us,\
         cpu_ratio_vs_list,cpu_runner_up\n",
    );
    let cell = |v: &[Winner], c: usize, l: f64| -> String {
        match v.iter().find(|w| w.cpus == c && (w.load - l).abs() < 1e-9) {
            Some(w) => format!(
                "{},{:.3},{:.3},{}",
                w.winner.name(),
                w.value,
                w.ratio,
                w.runner_up.map_or("", |m| m.name())
            ),
            None => "saturated,,,".into(),
        }
    };
    for &c in cpus {
        for &l in loads {
            let _ = writeln!(s, "{c},{l},{},{}", cell(p50, c, l), cell(cpu, c, l));
        }
    }
    s
}

/// Model predictions as CSV.
pub fn predictions_csv(preds: &[Prediction]) -> String {
    let mut s = String::from(
        "mechanism,cpus,load,compute_us,events,p50_us,p99_us,p999_us,cpu_per_event_us,wakeups,\
         futile,same_cpu_fraction,utilisation\n",
    );
    for p in preds {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{},{},{:.3},{:.3}",
            p.mechanism.name(),
            p.params.cpus,
            p.params.load,
            p.params.compute_ns as f64 / 1000.0,
            p.latency.len(),
            p.quantile_us(0.5),
            p.quantile_us(0.99),
            p.quantile_us(0.999),
            p.cpu_per_event_ns / 1000.0,
            p.wakeups,
            p.futile,
            p.same_cpu_fraction(),
            p.utilisation()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_num(f64::NAN), "null");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn plot_writes_svg() {
        let dir = std::env::temp_dir().join(format!("umcg-sim-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.svg");
        let s: Series = vec![(Mechanism::List, vec![(1.0, 0.1), (10.0, 0.9)])];
        line_plot(&p, "t", "x", "y", &s, true, false).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("<svg") && text.contains("list"));
        assert!(line_plot(&p, "t", "x", "y", &vec![], false, false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
