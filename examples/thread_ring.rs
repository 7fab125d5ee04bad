//! thread-ring (the Computer Language Benchmarks Game's classic): 503 workers in a ring
//! pass a token N times; the worker that receives it last names itself. Each hop is one
//! `umcg_runtime::sync` channel send and one receive that parks the receiver through its
//! server, so the run measures the runtime's park/unpark handoff.
//!
//! ```text
//! cargo run --release --example thread_ring -- [N=1000] [servers=1]
//! ```
//!
//! Prints the finisher (1-based, as the benchmark game: `N mod 503 + 1`), the elapsed time
//! and the time per hop; exits non-zero if the finisher is wrong.

use std::process::ExitCode;
use std::time::Instant;

use umcg::runtime::Runtime;
use umcg::runtime::sync::{Sender, channel};

const RING: usize = 503;
/// Sent around the ring once the token is spent: each worker forwards it and exits.
const STOP: u64 = u64::MAX;

fn arg(n: usize, default: u64) -> Result<u64, String> {
    match std::env::args().nth(n) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|e| format!("argument {n} ({s:?}): {e}")),
    }
}

fn main() -> Result<ExitCode, String> {
    let hops = arg(1, 1000)?;
    if hops == STOP {
        return Err(format!("N must be below {STOP}"));
    }
    let servers = arg(2, 1)? as usize;
    let rt = Runtime::builder()
        .servers(servers)
        .build()
        .map_err(|e| e.to_string())?;

    let (txs, rxs): (Vec<Sender<u64>>, Vec<_>) = (0..RING).map(|_| channel::<u64>()).unzip();
    let (done_tx, done_rx) = channel::<(usize, Instant)>();
    let inject = txs[0].clone();
    let workers: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let next = txs[(i + 1) % RING].clone();
            let done = done_tx.clone();
            rt.spawn(move || {
                for v in rx.iter() {
                    match v {
                        STOP => break,
                        0 => {
                            let _ = done.send((i, Instant::now()));
                            break;
                        }
                        v => {
                            if next.send(v - 1).is_err() {
                                return; // The ring is stopping.
                            }
                        }
                    }
                }
                // Stop the next worker (it may have left already: ignore).
                let _ = next.send(STOP);
            })
        })
        .collect();
    drop((txs, done_tx));

    let t0 = Instant::now();
    inject.send(hops).map_err(|_| "the first worker is gone")?;
    let (finisher, t1) = done_rx.recv().map_err(|_| "no worker finished")?;
    let elapsed = t1 - t0;
    for w in workers {
        w.join().map_err(|e| e.to_string())?;
    }
    rt.shutdown().map_err(|e| e.to_string())?;

    println!("{}", finisher + 1);
    println!(
        "thread_ring: {RING} workers, {hops} hops, {servers} server(s): {elapsed:?} ({:.0} ns/hop)",
        elapsed.as_nanos() as f64 / hops.max(1) as f64
    );
    let expected = (hops % RING as u64) as usize;
    if finisher != expected {
        eprintln!("thread_ring: worker {finisher} finished, expected {expected}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
