#!/usr/bin/env bash
# Every criterion benchmark once, in test mode (no timing), so benches keep compiling and
# running. Numbers come from `cargo bench`, recorded in BENCHMARKS.md, never from CI.
set -euxo pipefail
cargo test --workspace --benches
