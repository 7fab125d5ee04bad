//! The command line end to end: a quick comparison writes its files and prints its table;
//! bad arguments are explained with exit code 2, never a panic. No timing is asserted.
#![cfg(not(umcg_loom))] // the loom build has the mechanisms only

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_umcg-sim"))
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("umcg-sim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn compare_quick_writes_table_and_files() {
    let out = temp_dir("compare");
    let o = bin()
        .args(["compare", "--quick", "--duration-ms", "40", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for needle in [
        "mechanism",
        "p50 us",
        "list",
        "epoll-excl",
        "adopt",
        "placement:",
        "machine:",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
    for f in [
        "results.csv",
        "results.json",
        "baselines.csv",
        "validation.txt",
        "latency_cdf.svg",
        "latency_p50_vs_load.svg",
        "latency_p99_vs_load.svg",
        "cpu_vs_load.svg",
    ] {
        let p = out.join(f);
        let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(meta.len() > 0, "{f} is empty");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    // Header + 6 mechanisms x 3 loads (0.3, 0.5, 0.7).
    assert_eq!(csv.lines().count(), 1 + 6 * 3, "{csv}");
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for col in ["rescues", "stalls", "lag_p99_us"] {
        assert!(header.contains(&col), "no `{col}` column: {header:?}");
    }
    let v = std::fs::read_to_string(out.join("validation.txt")).unwrap();
    assert!(v.contains("lag p99") && v.contains("placement"), "{v}");
    let json = std::fs::read_to_string(out.join("results.json")).unwrap();
    assert!(json.trim_start().starts_with('{') && json.contains("\"runs\""));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn calibrate_then_model_quick() {
    let out = temp_dir("model");
    let o = bin()
        .args(["calibrate", "--quick", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Every key, the handoffs as distributions measured in the harness.
    let text = std::fs::read_to_string(out.join("calibration.txt")).unwrap();
    let cal = umcg_sim::model::Calibration::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for key in umcg_sim::model::Calibration::dist_keys() {
        let q = cal.quantiles(key);
        assert!(
            q[0] > 0.0 && q.windows(2).all(|w| w[0] <= w[1]),
            "{key}: {q:?}"
        );
    }
    let o = bin()
        .args([
            "model", "--quick", "--cpus", "2,16", "--load", "0.3,0.9", "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("winner by p50"), "{stdout}");
    assert!(
        stdout.contains(out.join("calibration.txt").to_str().unwrap()),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out.join("model_sweep.csv")).unwrap();
    // Header + 2 CPU counts x 2 loads x 6 mechanisms.
    assert_eq!(csv.lines().count(), 1 + 2 * 2 * 6, "{csv}");
    assert!(out.join("model_p50_vs_cpus_load90.svg").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn model_sweep_has_the_grid_shape() {
    let out = temp_dir("sweep");
    // The built-in reference calibration (no file in `out`): no measurement needed.
    let o = bin()
        .args(["model", "--sweep", "--events", "400", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("built-in reference calibration"),
        "{stdout}"
    );
    // The answer: one line per wakeup mechanism and metric, then the ties.
    let answer = stdout
        .split("the sweep's answer")
        .nth(1)
        .unwrap_or_else(|| panic!("no sweep answer in:\n{stdout}"));
    for m in ["list", "epoll-excl", "eventfd-per-server", "herd", "slot"] {
        let lines = answer
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{m} ")))
            .count();
        assert_eq!(lines, 2, "{m} in:\n{answer}");
    }
    assert_eq!(answer.matches("of 80 points;").count(), 2, "{answer}");
    let (cpus, loads, mechs) = (8, 10, 6);
    let csv = std::fs::read_to_string(out.join("model_sweep.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[..3], ["mechanism", "cpus", "load"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), cpus * loads * mechs);
    assert!(rows.iter().all(|r| r.len() == header.len()));
    let mut cs: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    cs.sort_by_key(|c| c.parse::<usize>().unwrap());
    cs.dedup();
    assert_eq!(cs, ["2", "4", "8", "16", "32", "64", "128", "256"]);
    let winners = std::fs::read_to_string(out.join("model_winners.csv")).unwrap();
    assert_eq!(winners.lines().count(), 1 + cpus * loads, "{winners}");
    for f in [
        "model_p50_vs_cpus_load10.svg",
        "model_p50_vs_cpus_load50.svg",
        "model_p50_vs_cpus_load90.svg",
        "model_cpu_vs_cpus_load50.svg",
        "model_p50_vs_load_cpus256.svg",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn baseline_quick_writes_its_figures() {
    let out = temp_dir("baseline");
    let o = bin()
        .args(["baseline", "--quick", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let csv = std::fs::read_to_string(out.join("baselines.csv")).unwrap();
    for name in [
        "futex_pingpong_same",
        "wake1of1_futex_same",
        "wake1of32_herd",
        "list_claim_release",
        "adopt_claim_path",
        "workload_L50",
    ] {
        assert!(
            csv.lines().any(|l| l.starts_with(&format!("{name},"))),
            "{name} missing in:\n{csv}"
        );
        assert!(stdout.contains(name), "{name} missing in:\n{stdout}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_arguments_are_explained_with_exit_code_2() {
    let cases: [(&[&str], &str); 11] = [
        (&["compare", "--loads", "1.5"], "strictly between 0 and 1"),
        (&["compare", "--mechanisms", "bogus"], "unknown mechanism"),
        (&["compare", "--workers", "0"], "not a positive integer"),
        (&["compare", "--servers", "4096"], "--yes"),
        (&["frobnicate"], "unrecognized subcommand"),
        (&["model", "--cpus", "0"], "from 1 to 4096"),
        (&["model", "--cpus", "2,100000"], "from 1 to 4096"),
        (&["model", "--load", "1.5"], "strictly between 0 and 1"),
        (&["model", "--load", "0.5,nan"], "strictly between 0 and 1"),
        (&["model", "--events", "0"], "from 1 to 10000000"),
        (&["model", "--sweep", "--cpus", "4"], "cannot be used with"),
    ];
    for (args, needle) in cases {
        let o = bin().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_calibration_file_is_reported() {
    let out = temp_dir("badcal");
    std::fs::create_dir_all(&out).unwrap();
    let cal = out.join("cal.txt");
    std::fs::write(&cal, "futex_same_lat = lots\n").unwrap();
    let o = bin()
        .args(["model", "--quick", "--calibration"])
        .arg(&cal)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 1"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}
