//! The soak harness in CI: 10^5 seeded events on 1,000 workers and 2 servers, in both
//! idle-wakeup modes, with the runtime's invariant checker and the watchdog on. A violation,
//! a lost wakeup (watchdog), a lost message or an unfinished job fails the run with the seed,
//! the replay command and a state dump.
#![cfg(not(umcg_loom))] // the loom build has the mechanisms only

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_umcg-sim"))
}

#[test]
fn soak_1e5_events_both_modes() {
    let o = bin()
        .args([
            "soak",
            "--workers",
            "1000",
            "--servers",
            "2",
            "--events",
            "100000",
            "--seed",
            "7",
            "--mode",
            "both",
            "--quiet",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "soak failed:\n{stdout}\n{stderr}");
    for mode in ["soak list: 100000 events", "soak eventfd: 100000 events"] {
        assert!(stdout.contains(mode), "missing `{mode}` in:\n{stdout}");
    }
    assert!(
        stdout.contains("0 violations, every job finished"),
        "{stdout}"
    );
}

#[test]
fn soak_bad_arguments_are_explained() {
    for args in [
        &["soak", "--events", "0"][..],
        &["soak", "--workers", "0"][..],
        &["soak", "--mode", "epoll"][..],
    ] {
        let o = bin().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
