//! The `umcg-sim` binary ([`cli`]). Under `--cfg umcg_loom` (the loom build of the
//! mechanisms, `tests/loom_mechanisms.rs`) the measuring code is not built, and neither is
//! the command line.

#[cfg(not(umcg_loom))]
mod cli;

#[cfg(not(umcg_loom))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(umcg_loom)]
fn main() {}
