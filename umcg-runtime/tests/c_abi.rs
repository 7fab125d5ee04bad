//! The C ABI from C: every program under `tests/c/` is compiled against `include/umcg.h` and
//! the static library, run, and must exit with status 0.
//!
//! # Finding the static library
//!
//! The library's `crate-type` includes `staticlib`, so whenever cargo builds the library for
//! this test it runs one `rustc` invocation that emits the rlib the test links *and*
//! `libumcg_runtime.a`, both into `target/<profile>/deps/` (the `.a` without a hash
//! suffix), the directory of this test's own executable. The test takes it from
//! [`std::env::current_exe`]'s directory, so it is always the build of the sources under
//! test, for any profile or `--target`; nothing else is built. (`target/<profile>/` also
//! gets a copy, but only for `cargo build`, not reliably for `cargo test`.)
//!
//! # Running
//!
//! `cc` (or `$CC`) compiles each program with `-std=c11 -Wall -Werror -pthread` (and
//! `-fsanitize=$UMCG_C_SANITIZE` when set, for a sanitizer build of the library), links
//! `libumcg_runtime.a -lpthread -ldl -lm`, into `$CARGO_TARGET_TMPDIR/c_abi/`. Programs whose
//! behaviour depends on the idle-wakeup mode run twice, with `UMCG_IDLE_WAKEUP=list` and
//! `=eventfd`. Each program arms an `alarm` (30 s; `bad_input`, which runs itself once per
//! corrupted-list case, 50 s), so a lost wakeup kills it; the test also kills
//! it after [`TIMEOUT`]. A program must exit with status 0, except the one that checks that
//! a contract violation aborts: it must die by `SIGABRT` and name the violation on stderr.
//! On failure the test prints the program's exit status and output.
#![cfg(not(umcg_loom))]

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a program is run and what it must do.
struct Program {
    name: &'static str,
    /// Run twice, with `UMCG_IDLE_WAKEUP=list` and `=eventfd`.
    both_modes: bool,
    /// Must die by `SIGABRT` with "contract violation" on stderr (else: exit status 0).
    aborts: bool,
}

/// Every program under `tests/c/`.
const PROGRAMS: &[Program] = &[
    Program {
        name: "errno_table",
        both_modes: false,
        aborts: false,
    },
    Program {
        name: "one_server_four_workers",
        both_modes: true,
        aborts: false,
    },
    Program {
        name: "idle_server_popped",
        both_modes: true,
        aborts: false,
    },
    Program {
        name: "violation_aborts",
        both_modes: false,
        aborts: true,
    },
    Program {
        name: "bad_input",
        both_modes: true,
        aborts: false,
    },
];

/// The test's own bound on one run (the programs' watchdogs are 30 s and 50 s).
const TIMEOUT: Duration = Duration::from_secs(60);

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_owned())
}

/// `libumcg_runtime.a` of this build (module doc).
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    let lib = deps.join("libumcg_runtime.a");
    assert!(
        lib.is_file(),
        "{} not found: the library's crate-type must include \"staticlib\"",
        lib.display()
    );
    lib
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_abi");
    std::fs::create_dir_all(&dir).expect("create the output directory");
    dir
}

/// `UMCG_C_SANITIZE`, e.g. `address`: the sanitizer the library was built with
/// (`-Zsanitizer=address`, see `ci/asan.sh`). Its instrumented code calls the sanitizer's
/// runtime, which the C link then needs: the programs are compiled with `-fsanitize=` it.
fn c_sanitizer() -> Option<String> {
    std::env::var("UMCG_C_SANITIZE")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Compile `tests/c/<name>.c` into an executable; panics with the compiler's output.
fn compile(name: &str) -> PathBuf {
    let src = crate_dir()
        .join("tests")
        .join("c")
        .join(format!("{name}.c"));
    let exe = out_dir().join(format!("{name}-{}", std::process::id()));
    let mut cmd = Command::new(cc());
    if let Some(s) = c_sanitizer() {
        cmd.arg(format!("-fsanitize={s}"));
    }
    let out = cmd
        .args([
            "-std=c11", "-Wall", "-Werror", "-O2", "-g", "-pthread", "-I",
        ])
        .arg(crate_dir().join("include"))
        .arg(&src)
        .arg(static_lib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cc()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hint = if stderr.contains("__asan") && c_sanitizer().is_none() {
        "\n(the library was built with AddressSanitizer: set UMCG_C_SANITIZE=address)"
    } else {
        ""
    };
    assert!(
        out.status.success(),
        "compiling {} failed ({}):\n{}{}{hint}",
        src.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr
    );
    exe
}

/// Run `exe` with `UMCG_IDLE_WAKEUP` set to `mode` (or unset), killing it after
/// [`TIMEOUT`]. Returns its status (None: killed) and its stdout and stderr.
fn run(exe: &Path, mode: Option<&str>) -> (Option<ExitStatus>, String, String) {
    let tag = mode.unwrap_or("default");
    let out_path = exe.with_extension(format!("{tag}.stdout"));
    let err_path = exe.with_extension(format!("{tag}.stderr"));
    let mut cmd = Command::new(exe);
    match mode {
        Some(m) => cmd.env("UMCG_IDLE_WAKEUP", m),
        None => cmd.env_remove("UMCG_IDLE_WAKEUP"),
    };
    let mut child = cmd
        .current_dir(out_dir())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    (status, stdout, stderr)
}

/// Compile and run one program (in both modes if `both_modes`); panics on any failure.
fn check_program(name: &str) {
    let p = PROGRAMS
        .iter()
        .find(|p| p.name == name)
        .expect("listed in PROGRAMS");
    let exe = compile(name);
    let modes: &[Option<&str>] = if p.both_modes {
        &[Some("list"), Some("eventfd")]
    } else {
        &[None]
    };
    for &mode in modes {
        let (status, stdout, stderr) = run(&exe, mode);
        let mode = mode.unwrap_or("default");
        match status {
            Some(st) if !p.aborts && st.success() => print!("{stdout}"),
            Some(st)
                if p.aborts
                    && st.signal() == Some(libc::SIGABRT)
                    && stderr.contains("contract violation") =>
            {
                print!("{name}: aborted as expected: {stderr}")
            }
            Some(st) => panic!(
                "{name} (UMCG_IDLE_WAKEUP={mode}) failed: {st}\n--- stdout\n{stdout}--- stderr\n{stderr}"
            ),
            None => panic!(
                "{name} (UMCG_IDLE_WAKEUP={mode}) did not finish within {TIMEOUT:?}\n--- stdout\n\
                 {stdout}--- stderr\n{stderr}"
            ),
        }
    }
    let _ = std::fs::remove_file(&exe);
}

#[test]
fn errno_table() {
    check_program("errno_table");
}

#[test]
fn one_server_four_workers() {
    check_program("one_server_four_workers");
}

#[test]
fn idle_server_popped() {
    check_program("idle_server_popped");
}

#[test]
fn violation_aborts() {
    check_program("violation_aborts");
}

#[test]
fn bad_input() {
    check_program("bad_input");
}

/// Every `tests/c/*.c` is in [`PROGRAMS`] (and so has a test above), and vice versa.
#[test]
fn every_c_program_is_run() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(crate_dir().join("tests").join("c"))
        .expect("read tests/c")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = PROGRAMS.iter().map(|p| p.name.to_owned()).collect();
    assert_eq!(on_disk, listed, "tests/c/*.c and PROGRAMS differ");
}

/// The header stands alone: included twice, with strict warnings, as C11 and (where a C++
/// compiler exists) as C++11, including its layout assertions.
#[test]
fn header_compiles_standalone() {
    let dir = out_dir();
    let src = "#include \"umcg.h\"\n#include \"umcg.h\"\n\
               long f(struct umcg_task *t) { return umcg_ctl(UMCG_CTL_REGISTER, t); }\n";
    let c = dir.join(format!("header-{}.c", std::process::id()));
    std::fs::write(&c, src).unwrap();
    let mut compilers = vec![(cc(), c.clone(), "-std=c11")];
    let cxx = dir.join(format!("header-{}.cc", std::process::id()));
    if Command::new("c++").arg("--version").output().is_ok() {
        std::fs::write(&cxx, src).unwrap();
        compilers.push(("c++".to_owned(), cxx.clone(), "-std=c++11"));
    }
    for (compiler, file, std) in compilers {
        let out = Command::new(&compiler)
            .args([
                std,
                "-Wall",
                "-Wextra",
                "-pedantic",
                "-Werror",
                "-fsyntax-only",
                "-I",
            ])
            .arg(crate_dir().join("include"))
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
        assert!(
            out.status.success(),
            "{compiler} {std} rejects include/umcg.h:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&c);
    let _ = std::fs::remove_file(&cxx);
}
