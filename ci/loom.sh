#!/usr/bin/env bash
# loom model checks, in their own target dir so the cfg does not invalidate the normal build.
# Bound 2 as crossbeam and tokio use it in CI; 3 is several times slower.
set -euxo pipefail
export RUSTFLAGS="--cfg umcg_loom -C debug-assertions"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_LOOM:-target/loom}"
# Every tests/loom_*.rs file of every crate.
for crate in umcg-abi umcg-runtime umcg-sim; do
    for f in "$crate"/tests/loom_*.rs; do
        [ -e "$f" ] || continue
        cargo test -p "$crate" --release --test "$(basename "$f" .rs)"
    done
done
cargo clippy -p umcg-abi -p umcg-runtime --all-targets -- -D warnings
# umcg-sim under loom is its mechanisms only (no harness, benches or CLI).
cargo clippy -p umcg-sim --lib --bins --tests -- -D warnings
