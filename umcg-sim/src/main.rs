//! The `umcg-sim` command line.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Synchronous handoff vs fd-based idle wakeup: experiments and model.
#[derive(Parser, Debug)]
#[command(name = "umcg-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the real-thread comparison of idle-wakeup mechanisms (the main job).
    Compare {
        /// A short run for CI smoke tests.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Compare { quick: false }) {
        Command::Compare { .. } => {
            eprintln!(
                "umcg-sim compare: the comparison is not built yet (issue 5).\n\
                 What exists today: the umcg-abi crate (v0.3 task struct, idle-server and\n\
                 idle-worker lists) with its tests and benches; see BENCHMARKS.md."
            );
            ExitCode::SUCCESS
        }
    }
}
