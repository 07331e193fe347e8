#!/usr/bin/env bash
# Fuzzes the decoders: `scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]`
# (default 60 s, both targets: jpeg_eighth, decode). Installs cargo-fuzz if
# missing. libFuzzer's instrumentation and AddressSanitizer take unstable
# rustc flags: they run on the machine's one (stable) toolchain with
# RUSTC_BOOTSTRAP=1, for these fuzz builds only. Each target's
# corpus is seeded with the committed photos; what libFuzzer adds is kept
# under fuzz/corpus/ (not committed). A crash leaves its input under
# fuzz/artifacts/TARGET/ and fails the run: commit the input under
# tests/fuzz-regressions/ with a test that decodes it (it also seeds the
# decode corpus from then on). For a longer hunt:
# `scripts/fuzz.sh 3600 jpeg_eighth`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(jpeg_eighth decode)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus"
    cp -n tests/data/*.jpg tests/jpeg-layouts/*.jpg "$corpus"/
    if [ "$target" = decode ]; then
        cp -n tests/fuzz-regressions/* "$corpus"/ 2>/dev/null || true
    fi
    echo "fuzzing $target for ${seconds}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1
done
