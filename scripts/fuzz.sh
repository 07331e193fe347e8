#!/usr/bin/env bash
# Fuzzes the decoders: `scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]`
# (default 60 s, both targets: jpeg_eighth, decode). Needs a nightly
# toolchain (rustup) and installs cargo-fuzz if missing. Each target's
# corpus is seeded with the committed photos; what libFuzzer adds is kept
# under fuzz/corpus/ (not committed). A crash leaves its input under
# fuzz/artifacts/TARGET/ and fails the run: turn it into a regression test
# in tests/fuzz_regressions.rs (the input under tests/fuzz-regressions/).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(jpeg_eighth decode)

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
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
    cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1
done
