#!/usr/bin/env bash
# The README's test command, with CI's larger proptest budget.
set -euxo pipefail
export PROPTEST_CASES="${PROPTEST_CASES:-10000}"
cargo test --workspace
