//! The `umcg-sim` command line: `compare` (default), `baseline`, `calibrate`, `model`, `soak`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use umcg_sim::baseline::{self, Baseline, WorkloadSpec};
use umcg_sim::harness::{self, Config, RunResult};
use umcg_sim::model::{self, Calibration, Params, Prediction};
use umcg_sim::os::Machine;
use umcg_sim::{Mechanism, report};

/// Synchronous idle-server handoff (UMCG v0.3) vs fd-based idle wakeup: real-thread
/// experiments, raw baselines, and a calibrated model.
#[derive(Parser, Debug)]
#[command(name = "umcg-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the real-thread comparison of the idle-wakeup mechanisms (the default).
    Compare(CompareArgs),
    /// Measure the raw futex / eventfd / epoll floors and "wake one of K".
    Baseline(CommonArgs),
    /// Measure the model's costs on this machine and write the calibration file.
    Calibrate(CommonArgs),
    /// Run the calibrated model: validation against the last `compare`, and sweeps.
    Model(ModelArgs),
    /// Soak the M:N runtime with a seeded random event mix, its invariant checker on.
    Soak(umcg_sim::soak::SoakArgs),
}

#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// A short run (CI smoke tests): fewer iterations.
    #[arg(long)]
    quick: bool,
    /// Output directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/out"))]
    out: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct CompareArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Server threads (default: one per allowed CPU).
    #[arg(long, value_parser = positive)]
    servers: Option<usize>,
    /// Worker threads raising unblock events.
    #[arg(long, default_value_t = 32, value_parser = positive)]
    workers: usize,
    /// Offered loads to run, comma-separated fractions in (0, 1) [default: 0.1,0.3,0.5,0.7,0.9;
    /// --quick: 0.3,0.7].
    #[arg(long, value_delimiter = ',', value_parser = load)]
    loads: Vec<f64>,
    /// The load shown in the table and used for validation and the CDF plot.
    #[arg(long, default_value_t = 0.5, value_parser = load)]
    main_load: f64,
    /// CPU time per event (the worker's compute), µs.
    #[arg(long, default_value_t = 100.0, value_parser = compute_us)]
    compute_us: f64,
    /// Length of each run's arrival schedule, ms [default: 1000; --quick: 100].
    #[arg(long, value_parser = positive)]
    duration_ms: Option<usize>,
    /// Only these mechanisms (comma-separated names).
    #[arg(long, value_delimiter = ',', value_parser = mechanism)]
    mechanisms: Vec<Mechanism>,
    /// Pin the worker threads round-robin too (default: unpinned).
    #[arg(long)]
    pin_workers: bool,
    /// Seed of the arrival process.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run even with more servers than CPUs.
    #[arg(long)]
    yes: bool,
    /// Also write the SVG plots into this directory (e.g. docs/figures).
    #[arg(long)]
    figures: Option<PathBuf>,
    /// Skip the baselines (they take a few seconds); the model then reads --calibration,
    /// or <out>/calibration.txt, or its built-in reference.
    #[arg(long)]
    no_baselines: bool,
    /// Calibrate the model from this file instead of this run's baselines.
    #[arg(long)]
    calibration: Option<PathBuf>,
}

/// The sweep's CPU counts.
const SWEEP_CPUS: &str = "2,4,8,16,32,64,128,256";
/// The sweep's offered loads.
const SWEEP_LOADS: &str = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95";

#[derive(Args, Debug, Clone)]
struct ModelArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The full sweep: CPUs 2, 4, ..., 256 x loads 10 ... 95 % (also the default when
    /// neither --cpus nor --load is given).
    #[arg(long, conflicts_with_all = ["cpus", "load"])]
    sweep: bool,
    /// CPU counts to run (comma-separated, 1 ... 4096) [default: the sweep's].
    #[arg(long, value_delimiter = ',', value_parser = model_cpus)]
    cpus: Vec<usize>,
    /// Offered loads to run (comma-separated fractions in (0, 1)) [default: the sweep's].
    #[arg(long, value_delimiter = ',', value_parser = load)]
    load: Vec<f64>,
    /// CPU time per event, µs.
    #[arg(long, default_value_t = 100.0, value_parser = compute_us)]
    compute_us: f64,
    /// Arrivals simulated per point, up to 10000000 [default: 20000; --quick: 3000].
    #[arg(long, value_parser = model_events)]
    events: Option<usize>,
    /// Calibration file [default: <out>/calibration.txt; the built-in reference if absent].
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Also write the SVG plots into this directory (e.g. docs/figures).
    #[arg(long)]
    figures: Option<PathBuf>,
    /// Seed of the arrival process.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn model_cpus(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=4096).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a CPU count the model runs: give an integer from 1 to 4096"
        )),
    }
}

fn model_events(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=10_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not an event count: give an integer from 1 to 10000000"
        )),
    }
}

fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive integer")),
    }
}

fn load(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x < 1.0 => Ok(x),
        _ => Err(format!(
            "`{s}` is not an offered load: give a fraction strictly between 0 and 1 (e.g. 0.5 for 50 %)"
        )),
    }
}

fn compute_us(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if (0.5..=1_000_000.0).contains(&x) => Ok(x),
        _ => Err(format!(
            "`{s}` is not a compute time in µs between 0.5 and 1000000"
        )),
    }
}

fn mechanism(s: &str) -> Result<Mechanism, String> {
    Mechanism::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<_> = Mechanism::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mechanism `{s}`; one of: {}", names.join(", "))
    })
}

/// A failure with its exit code (2: unusable arguments, 1: the run failed).
struct Failure(u8, String);

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = cli.command.unwrap_or_else(|| {
        // `umcg-sim` alone is `umcg-sim compare` with the defaults.
        match Cli::try_parse_from(["umcg-sim", "compare"]).map(|c| c.command) {
            Ok(Some(c)) => c,
            _ => unreachable!("`compare` parses with its defaults"),
        }
    });
    let r = match cmd {
        Command::Compare(a) => compare(&a),
        Command::Baseline(a) => run_baseline(&a),
        Command::Calibrate(a) => calibrate(&a),
        Command::Model(a) => run_model(&a),
        Command::Soak(a) => match umcg_sim::soak::validate(&a) {
            Err(e) => Err(Failure(2, e.0)),
            Ok(()) => umcg_sim::soak::cli(&a).map_err(|e| Failure(1, e.0)),
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("umcg-sim: error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure(1, format!("{}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(io(path))
}

fn out_dir(p: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(p).map_err(io(p))
}

fn progress(n: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(what.to_string());
    pb
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        "umcg-sim".into()
    } else {
        format!("umcg-sim {}", args.join(" "))
    }
}

fn baselines(quick: bool, spec: &WorkloadSpec, pb: &ProgressBar) -> Vec<Baseline> {
    let iters = if quick { 300 } else { 3000 };
    baseline::run_all(iters, spec, |name: &str| pb.set_message(name.to_string()))
}

fn compare(a: &CompareArgs) -> Result<(), Failure> {
    let machine = Machine::detect();
    let cpus = machine.allowed_cpus.clone();
    if cpus.is_empty() {
        return Err(Failure(
            1,
            "cannot read the allowed CPUs (sched_getaffinity)".into(),
        ));
    }
    let servers = a.servers.unwrap_or(cpus.len());
    if servers > cpus.len() && !a.yes {
        return Err(Failure(
            2,
            format!(
                "{servers} servers on {} allowed CPUs: servers would share CPUs, so a woken \
                 server can wait behind another one's compute and the latencies measure the \
                 Linux scheduler, not the wakeup; the v0.3 list's pop bound (2 x nr_cpu_ids) \
                 also assumes at most one idle server per CPU. Pass --yes to run anyway, or \
                 use --servers {}.",
                cpus.len(),
                cpus.len()
            ),
        ));
    }
    let quick = a.common.quick;
    let loads = if a.loads.is_empty() {
        if quick {
            vec![0.3, 0.7]
        } else {
            vec![0.1, 0.3, 0.5, 0.7, 0.9]
        }
    } else {
        a.loads.clone()
    };
    let mut loads = loads;
    if !loads.iter().any(|l| (l - a.main_load).abs() < 1e-9) {
        loads.push(a.main_load);
    }
    loads.sort_by(f64::total_cmp);
    loads.dedup();
    let mechs = if a.mechanisms.is_empty() {
        Mechanism::ALL.to_vec()
    } else {
        a.mechanisms.clone()
    };
    let duration_ms = a.duration_ms.unwrap_or(if quick { 100 } else { 1000 });
    out_dir(&a.common.out)?;
    let base = Config {
        servers,
        workers: a.workers,
        cpus: cpus.clone(),
        pin_workers: a.pin_workers,
        load: a.main_load,
        compute_ns: (a.compute_us * 1000.0) as u64,
        duration_ns: duration_ms as u64 * 1_000_000,
        seed: a.seed,
    };
    println!("umcg-sim compare: {}", command_line());
    println!("machine:   {}", machine.line());
    println!("placement: {}", base.placement());
    println!(
        "workload:  open-loop Poisson unblocks, compute {:.1} us/event, {} ms per run, loads {:?}",
        a.compute_us, duration_ms, loads
    );
    let runs_n = (mechs.len() * loads.len()) as u64 + u64::from(!a.no_baselines);
    let pb = progress(runs_n, "compare");
    let mut b = Vec::new();
    if !a.no_baselines {
        pb.set_message("baselines");
        let spec = WorkloadSpec {
            workers: a.workers,
            cpus: cpus.clone(),
            compute_ns: base.compute_ns,
            duration_ns: if quick { 60_000_000 } else { 300_000_000 },
            seed: a.seed,
        };
        b = baselines(quick, &spec, &pb);
        pb.inc(1);
    }
    let mut runs: Vec<RunResult> = Vec::new();
    for &l in &loads {
        for &m in &mechs {
            pb.set_message(format!("{} @ {:.0} %", m.name(), l * 100.0));
            let cfg = Config {
                load: l,
                ..base.clone()
            };
            let r = harness::run(m, &cfg).map_err(|e| Failure(1, e.to_string()))?;
            runs.push(r);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let futex_cross = b
        .iter()
        .find(|x| x.name == "futex_pingpong_cross")
        .map(|x| x.p50_ns);
    let main: Vec<&RunResult> = runs
        .iter()
        .filter(|r| (r.config.load - a.main_load).abs() < 1e-9)
        .collect();
    println!();
    println!(
        "at offered load {:.0} % (CPU/ev = process CPU per event beyond the compute; vcsw/ivcsw = \
         context switches per event; futile = server wakeups that found nothing, per event; \
         p50/fx = p50 / raw cross-CPU futex handoff):",
        a.main_load * 100.0
    );
    print!("{}", report::table(&main, futex_cross));
    if runs.iter().any(|r| r.rescues > 0 || r.wakes.failed > 0) {
        println!("WARNING: a run needed rescue wakeups or a mechanism failed (see results.csv)");
    }
    for r in runs.iter().filter(|r| r.stalls > 0) {
        println!(
            "WARNING: {} at {:.0} %: {} stall(s): work stayed queued for {} ms while a CPU \
             idled (a wakeup lost for a while; results.csv `stalls`)",
            r.mechanism.name(),
            r.config.load * 100.0,
            r.stalls,
            harness::STALL_WINDOW.as_millis()
        );
    }
    println!();
    println!("p50 / p99 latency (us) by offered load:");
    print!("{:<19}", "mechanism");
    for l in &loads {
        print!(" {:>14}", format!("{:.0} %", l * 100.0));
    }
    println!();
    for &m in &mechs {
        print!("{:<19}", m.name());
        for &l in &loads {
            match runs
                .iter()
                .find(|r| r.mechanism == m && (r.config.load - l).abs() < 1e-9)
            {
                Some(r) => print!(
                    " {:>14}",
                    format!("{:.1}/{:.1}", r.quantile_us(0.5), r.quantile_us(0.99))
                ),
                None => print!(" {:>14}", "-"),
            }
        }
        println!();
    }
    if !b.is_empty() {
        println!();
        println!("baselines (same run):");
        print!("{}", report::baseline_table(&b));
    }
    // Files.
    let out = &a.common.out;
    write(&out.join("results.csv"), &report::runs_csv(&runs))?;
    write(&out.join("baselines.csv"), &report::baselines_csv(&b))?;
    write(
        &out.join("results.json"),
        &report::json(&machine, &base.placement(), &command_line(), &runs, &b),
    )?;
    let mut svgs = Vec::new();
    let cdf: report::Series = main
        .iter()
        .map(|r| (r.mechanism, report::cdf_points(&r.latency)))
        .collect();
    svgs.push((
        "latency_cdf.svg",
        format!(
            "unblock -> running latency CDF, load {:.0} %",
            a.main_load * 100.0
        ),
        "latency (us, log)",
        "fraction of events",
        cdf,
        true,
        false,
    ));
    let by_load = |f: &dyn Fn(&RunResult) -> f64| -> report::Series {
        mechs
            .iter()
            .map(|&m| {
                (
                    m,
                    runs.iter()
                        .filter(|r| r.mechanism == m)
                        .map(|r| (r.config.load * 100.0, f(r)))
                        .collect(),
                )
            })
            .collect()
    };
    svgs.push((
        "latency_p50_vs_load.svg",
        "p50 unblock -> running latency vs offered load".into(),
        "offered load (%)",
        "p50 latency (us, log)",
        by_load(&|r| r.quantile_us(0.5)),
        false,
        true,
    ));
    svgs.push((
        "latency_p99_vs_load.svg",
        "p99 unblock -> running latency vs offered load".into(),
        "offered load (%)",
        "p99 latency (us, log)",
        by_load(&|r| r.quantile_us(0.99)),
        false,
        true,
    ));
    svgs.push((
        "cpu_vs_load.svg",
        "process CPU per event beyond the compute vs offered load".into(),
        "offered load (%)",
        "CPU per event (us)",
        by_load(&|r| r.cpu_per_event_ns() / 1000.0),
        false,
        false,
    ));
    let mut written = Vec::new();
    for (name, title, xd, yd, series, lx, ly) in &svgs {
        for dir in std::iter::once(out).chain(a.figures.as_ref()) {
            out_dir(dir)?;
            let p = dir.join(name);
            report::line_plot(&p, title, xd, yd, series, *lx, *ly).map_err(|e| Failure(1, e))?;
            written.push(p);
        }
    }
    // The model, calibrated by this run's baselines unless a file is given.
    let cal_path = out.join("calibration.txt");
    let (cal, cal_src) = match (&a.calibration, Calibration::from_baselines(&b)) {
        (Some(f), _) => load_calibration(&cal_path, Some(f))?,
        (None, Ok(c)) => {
            let text = c.to_text(&format!(
                "umcg-sim calibration, measured by `{}` (its same-run baselines)\n{}",
                command_line(),
                machine.line()
            ));
            write(&cal_path, &text)?;
            (c, "this run's baselines".to_string())
        }
        (None, Err(e)) => {
            let (c, src) = load_calibration(&cal_path, None)?;
            (c, format!("{src}; not this run's baselines: {e}"))
        }
    };
    println!();
    println!(
        "model validation at {} CPUs (calibration: {cal_src}):",
        cpus.len()
    );
    let v = validate(&runs, a.main_load, &cal, quick);
    print!("{v}");
    write(&out.join("validation.txt"), &v)?;
    println!();
    println!(
        "wrote {}/{{results.csv, results.json, baselines.csv, calibration.txt, validation.txt}} \
         and {} SVG plots",
        out.display(),
        written.len()
    );
    Ok(())
}

/// The validation target: the largest |error| allowed at the main load, percent.
const TARGET_PCT: f64 = 25.0;

/// Why a validation point does not count against the target, if it does not: the real run
/// stalled (work conservation failed, or the drain needed rescues), or fell behind its
/// open-loop schedule ([`RunResult::kept_schedule`]), or the model's CPU demand reaches the
/// capacity (the last two then measure queue growth over the run's length).
fn excluded(r: &RunResult, m: &Prediction) -> Option<&'static str> {
    if r.stalls > 0 || r.rescues > 0 {
        Some("the real run stalled")
    } else if !r.kept_schedule() {
        Some("the real run fell behind its schedule")
    } else if m.saturated() {
        Some("saturated")
    } else {
        None
    }
}

/// Model vs real at the runs' CPU count: the target (p50 and CPU per event, with the errors;
/// the main load is the target, the other loads are shown for information), then placement:
/// the fraction of events started on the CPU their worker unblocked on and the p50 of each
/// part, real against model, which says which part of a p50 error is the mix and which the
/// latency of one mode.
fn validate(runs: &[RunResult], main_load: f64, cal: &Calibration, quick: bool) -> String {
    use std::fmt::Write as _;
    let err = |m: f64, r: f64| (m - r) / r.max(1e-3) * 100.0;
    let pairs: Vec<(&RunResult, model::Prediction)> = runs
        .iter()
        .map(|r| {
            let p = Params {
                cpus: r.config.capacity(),
                load: r.config.load,
                compute_ns: r.config.compute_ns,
                events: if quick { 5_000 } else { 50_000 },
                seed: r.config.seed,
            };
            (r, model::simulate(r.mechanism, &p, cal))
        })
        .collect();
    let is_main = |r: &RunResult| (r.config.load - main_load).abs() < 1e-9;
    let mut s = String::new();
    let target = |s: &mut String, main: bool| -> f64 {
        let _ = writeln!(
            s,
            "{:<19} {:>5} {:>9} {:>9} {:>7}   {:>9} {:>9} {:>7}   {:>9}",
            "mechanism",
            "load",
            "real p50",
            "model p50",
            "error",
            "real CPU",
            "model CPU",
            "error",
            "lag p99",
        );
        let mut worst: f64 = 0.0;
        for (r, m) in pairs.iter().filter(|(r, _)| is_main(r) == main) {
            let (rp, mp) = (r.quantile_us(0.5), m.quantile_us(0.5));
            let (rc, mc) = (r.cpu_per_event_ns() / 1000.0, m.cpu_per_event_ns / 1000.0);
            let (e1, e2) = (err(mp, rp), err(mc, rc));
            let why = excluded(r, m);
            if why.is_none() {
                worst = worst.max(e1.abs()).max(e2.abs());
            }
            let _ = writeln!(
                s,
                "{:<19} {:>4.0}% {:>7.2}us {:>7.2}us {:>+6.0}%   {:>7.2}us {:>7.2}us {:>+6.0}%   {:>7.1}us{}",
                r.mechanism.name(),
                r.config.load * 100.0,
                rp,
                mp,
                e1,
                rc,
                mc,
                e2,
                r.lag_us(0.99),
                why.map(|w| format!("  (not counted: {w})"))
                    .unwrap_or_default(),
            );
        }
        worst
    };
    let placement = |s: &mut String, main: bool| {
        let _ = writeln!(
            s,
            "{:<19} {:>5}   {:>11}   {:>19} {:>7}   {:>19} {:>7}",
            "mechanism", "load", "same CPU", "p50 same-CPU", "error", "p50 cross-CPU", "error",
        );
        for (r, m) in pairs.iter().filter(|(r, _)| is_main(r) == main) {
            let (rs, rx) = r.p50_same_cross_us();
            let (ms, mx) = m.p50_same_cross_us();
            let _ = writeln!(
                s,
                "{:<19} {:>4.0}%   {:>4.2} / {:>4.2}   {:>7.2} / {:>7.2}us {:>+6.0}%   {:>7.2} / {:>7.2}us {:>+6.0}%",
                r.mechanism.name(),
                r.config.load * 100.0,
                r.same_cpu_fraction(),
                m.same_cpu_fraction(),
                rs,
                ms,
                err(ms, rs),
                rx,
                mx,
                err(mx, rx),
            );
        }
    };
    let worst = target(&mut s, true);
    let _ = writeln!(
        s,
        "largest error at {:.0} % load: {worst:.0} % ({} the {TARGET_PCT:.0} % target)",
        main_load * 100.0,
        if worst <= TARGET_PCT {
            "within"
        } else {
            "OUTSIDE"
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "placement at {:.0} % load (real / model; not the target: where a p50 error comes from):",
        main_load * 100.0
    );
    placement(&mut s, true);
    let _ = writeln!(
        s,
        "(same CPU = fraction of events started on the CPU their worker unblocked on; p50 \
         same-CPU / cross-CPU = p50 of those events and of the others)"
    );
    if pairs.iter().any(|(r, _)| !is_main(r)) {
        let _ = writeln!(s);
        let _ = writeln!(s, "other loads (information, not the target):");
        let worst_other = target(&mut s, false);
        let _ = writeln!(s, "largest error at the other loads: {worst_other:.0} %");
        let _ = writeln!(s);
        placement(&mut s, false);
    }
    s
}

fn load_calibration(
    path: &Path,
    explicit: Option<&Path>,
) -> Result<(Calibration, String), Failure> {
    let p = explicit.unwrap_or(path);
    match std::fs::read_to_string(p) {
        Ok(text) => Calibration::parse(&text)
            .map(|c| (c, p.display().to_string()))
            .map_err(|e| Failure(2, format!("{}: {e}", p.display()))),
        Err(e) if explicit.is_some() => Err(Failure(2, format!("{}: {e}", p.display()))),
        Err(_) => Ok((
            Calibration::reference(),
            format!(
                "the built-in reference calibration ({} not found: run `umcg-sim calibrate`)",
                p.display()
            ),
        )),
    }
}

fn run_baseline(a: &CommonArgs) -> Result<(), Failure> {
    let machine = Machine::detect();
    out_dir(&a.out)?;
    println!("umcg-sim baseline: {}", command_line());
    println!("machine: {}", machine.line());
    let pb = progress(1, "baseline");
    let spec = WorkloadSpec::default_for(machine.allowed_cpus.clone(), a.quick);
    let b = baselines(a.quick, &spec, &pb);
    pb.finish_and_clear();
    print!("{}", report::baseline_table(&b));
    let p = a.out.join("baselines.csv");
    write(&p, &report::baselines_csv(&b))?;
    println!("wrote {}", p.display());
    Ok(())
}

fn calibrate(a: &CommonArgs) -> Result<(), Failure> {
    let machine = Machine::detect();
    out_dir(&a.out)?;
    println!("umcg-sim calibrate: {}", command_line());
    println!("machine: {}", machine.line());
    let pb = progress(1, "calibrate");
    let spec = WorkloadSpec::default_for(machine.allowed_cpus.clone(), a.quick);
    let b = baselines(a.quick, &spec, &pb);
    pb.finish_and_clear();
    let cal = Calibration::from_baselines(&b).map_err(|e| {
        Failure(
            1,
            format!("{e} (cross-CPU figures need at least two allowed CPUs)"),
        )
    })?;
    let text = cal.to_text(&format!(
        "umcg-sim calibration, measured by `{}`\n{}",
        command_line(),
        machine.line()
    ));
    print!("{text}");
    let p = a.out.join("calibration.txt");
    write(&p, &text)?;
    println!("wrote {}", p.display());
    Ok(())
}

fn parse_list<T>(s: &str, f: fn(&str) -> Result<T, String>) -> Vec<T> {
    s.split(',').filter_map(|x| f(x).ok()).collect()
}

fn run_model(a: &ModelArgs) -> Result<(), Failure> {
    let out = &a.common.out;
    out_dir(out)?;
    let (cal, src) = load_calibration(&out.join("calibration.txt"), a.calibration.as_deref())?;
    let cpus = if a.cpus.is_empty() {
        parse_list(SWEEP_CPUS, model_cpus)
    } else {
        a.cpus.clone()
    };
    let loads = if a.load.is_empty() {
        parse_list(SWEEP_LOADS, load)
    } else {
        a.load.clone()
    };
    println!("umcg-sim model: {}", command_line());
    println!("calibration: {src}");
    let events = a
        .events
        .unwrap_or(if a.common.quick { 3_000 } else { 20_000 }) as u64;
    let compute_ns = (a.compute_us * 1000.0) as u64;
    println!(
        "grid: CPUs {cpus:?} x loads {:?} %, compute {:.1} us/event, {events} arrivals per point, \
         seed {}",
        loads.iter().map(|l| l * 100.0).collect::<Vec<_>>(),
        a.compute_us,
        a.seed
    );
    let pb = progress((cpus.len() * loads.len()) as u64, "model");
    let t0 = std::time::Instant::now();
    let mut preds: Vec<Prediction> = Vec::new();
    for &c in &cpus {
        for &l in &loads {
            for m in Mechanism::ALL {
                let p = Params {
                    cpus: c,
                    load: l,
                    compute_ns,
                    events,
                    seed: a.seed,
                };
                preds.push(model::simulate(m, &p, &cal));
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let (p50_map, rows) = report::winner_map(&preds, &cpus, &loads, report::Metric::P50);
    let (cpu_map, cpu_rows) = report::winner_map(&preds, &cpus, &loads, report::Metric::Cpu);
    println!();
    println!(
        "winner by p50 latency among the wakeup mechanisms (not adopt; saturated ones excluded); \
         xN = list's p50 / winner's (where the list wins: the runner-up's / the list's):"
    );
    print!("{p50_map}");
    println!();
    println!("winner by CPU per event beyond the compute; xN as above:");
    print!("{cpu_map}");
    println!();
    let summary = format!(
        "the sweep's answer (clear win = x{:.2} or more over the best other wakeup mechanism):\n\
         by p50 latency:\n{}by CPU per event:\n{}",
        report::CLEAR_WIN,
        report::sweep_summary(&preds, &cpus, &loads, report::Metric::P50),
        report::sweep_summary(&preds, &cpus, &loads, report::Metric::Cpu),
    );
    print!("{summary}");
    println!();
    println!(
        "adopt (no wakeup: the synchronous same-CPU switch's bound) vs list: p50 ratio list / \
         adopt | CPU ratio list / adopt:"
    );
    print!("{}", report::adopt_table(&preds, &cpus, &loads));
    println!();
    println!(
        "p50 us | CPU per event us, per mechanism (rows: CPUs x load; * = saturated: CPU demand \
         load x (compute + CPU/event) >= capacity, the queue grows and the p50 only measures \
         the run's length):"
    );
    print!("{}", report::prediction_table(&preds, &cpus, &loads));
    write(
        &out.join("model_sweep.csv"),
        &report::predictions_csv(&preds),
    )?;
    write(
        &out.join("model_winners.csv"),
        &report::winners_csv(&rows, &cpu_rows, &cpus, &loads),
    )?;
    // Plots: per mechanism vs CPUs at a low, the middle and a high load; vs load at the
    // largest CPU count.
    let mut plot_loads: Vec<f64> = [0.1, 0.5, 0.9]
        .into_iter()
        .filter(|x| loads.iter().any(|l| (l - x).abs() < 1e-9))
        .collect();
    if plot_loads.is_empty() {
        plot_loads.push(loads[loads.len() / 2]);
    }
    let vs_cpus = |l: f64, f: &dyn Fn(&Prediction) -> f64| -> report::Series {
        Mechanism::ALL
            .iter()
            .map(|&m| {
                (
                    m,
                    preds
                        .iter()
                        .filter(|p| p.mechanism == m && (p.params.load - l).abs() < 1e-9)
                        .map(|p| (p.params.cpus as f64, f(p)))
                        .collect(),
                )
            })
            .collect()
    };
    let mut plots: Vec<(String, String, &str, &str, report::Series, bool)> = Vec::new();
    for &l in &plot_loads {
        let pct = (l * 100.0).round();
        plots.push((
            format!("model_p50_vs_cpus_load{pct:.0}.svg"),
            format!("model: p50 latency vs CPUs, load {pct:.0} %"),
            "CPUs (log)",
            "p50 latency (us, log)",
            vs_cpus(l, &|p| p.quantile_us(0.5)),
            true,
        ));
        plots.push((
            format!("model_cpu_vs_cpus_load{pct:.0}.svg"),
            format!("model: CPU per event beyond the compute vs CPUs, load {pct:.0} %"),
            "CPUs (log)",
            "CPU per event (us, log)",
            vs_cpus(l, &|p| p.cpu_per_event_ns / 1000.0),
            true,
        ));
    }
    let cmax = cpus.iter().copied().max().unwrap_or(1);
    if loads.len() > 1 {
        let series: report::Series = Mechanism::ALL
            .iter()
            .map(|&m| {
                (
                    m,
                    preds
                        .iter()
                        .filter(|p| p.mechanism == m && p.params.cpus == cmax)
                        .map(|p| (p.params.load * 100.0, p.quantile_us(0.5)))
                        .collect(),
                )
            })
            .collect();
        plots.push((
            format!("model_p50_vs_load_cpus{cmax}.svg"),
            format!("model: p50 latency vs offered load, {cmax} CPUs"),
            "offered load (%)",
            "p50 latency (us, log)",
            series,
            false,
        ));
    }
    let mut names = Vec::new();
    for (name, title, xd, yd, s, log_x) in &plots {
        for dir in std::iter::once(out).chain(a.figures.as_ref()) {
            out_dir(dir)?;
            report::line_plot(&dir.join(name), title, xd, yd, s, *log_x, true)
                .map_err(|e| Failure(1, e))?;
        }
        names.push(name.as_str());
    }
    println!();
    println!(
        "{} points in {:.1} s; wrote {}/{{model_sweep.csv, model_winners.csv, {}}}",
        preds.len(),
        t0.elapsed().as_secs_f64(),
        out.display(),
        names.join(", ")
    );
    Ok(())
}
