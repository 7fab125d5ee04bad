#!/usr/bin/env bash
# The root package's examples with small sizes; each verifies its own result and must
# exit 0. Dev profile: `cargo test --workspace` (ci/test.sh) has built them already, so
# this step costs only the runs (seconds). `timeout` turns a hang into a failure.
set -euxo pipefail
timeout 120 cargo run --example thread_ring -- 1000
timeout 120 cargo run --example thread_ring -- 1000 2
timeout 120 cargo run --example echo_server -- 8 50 256
UMCG_IDLE_WAKEUP=eventfd timeout 120 cargo run --example echo_server -- 4 20 4096
