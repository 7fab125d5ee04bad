#!/usr/bin/env bash
# AddressSanitizer run of the whole test suite on the stable toolchain (issue 6; the command
# and its result are in RELIABILITY.md, "AddressSanitizer").
#
# - RUSTC_BOOTSTRAP=1 unlocks -Zsanitizer on stable. No -Zbuild-std: std stays the
#   uninstrumented prebuilt one (its generic code is instrumented where our crates
#   instantiate it), so no rust-src and nothing downloaded.
# - --target (the host triple) keeps RUSTFLAGS off build scripts and proc macros, which run
#   on the host and must not need the sanitizer runtime. RUSTDOCFLAGS: the doctests link
#   the instrumented library too.
# - UMCG_C_SANITIZE=address: tests/c_abi.rs compiles the C programs with -fsanitize=address,
#   so they link the instrumented static library (and check the C side too).
# - Own target dir, so the flags do not invalidate the normal build.
# - LeakSanitizer is on (detect_leaks=1), and so is stack-use-after-return, except for
#   tests/scale.rs: it starts 10,000 threads, and a fake stack per thread makes it take
#   ~80 s instead of ~6 s on 2 cores; it runs on its own with detect_stack_use_after_return=0.
set -euxo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address"
export RUSTDOCFLAGS="-Zsanitizer=address"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_ASAN:-target/asan}"
export UMCG_C_SANITIZE=address
asan="detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1"
ASAN_OPTIONS="$asan" cargo test --workspace --target "$host" -- \
    --skip ten_thousand_workers_on_two_servers --skip burst_of_a_thousand_unblocks
ASAN_OPTIONS="$asan:detect_stack_use_after_return=0" \
    cargo test --workspace --target "$host" --test scale
# The suite really ran instrumented (flags not overridden, e.g. by a cargo config): the
# library calls the sanitizer's checks.
nm "$CARGO_TARGET_DIR/$host/debug/deps/libumcg_runtime.a" 2>/dev/null \
    | grep __asan_report_load8 >/dev/null
echo "asan: clean"
