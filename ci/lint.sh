#!/usr/bin/env bash
# Formatting and clippy, warnings denied (including the workspace's unsafe discipline lints).
set -euxo pipefail
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
