#!/usr/bin/env bash
# The test command: installs the test tools (scripts/setup-test-tools.sh),
# runs every unit and end-to-end test, and type-checks the benchmarks and
# examples (they are run with `cargo bench`, never as tests). Extra
# arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
GRPCURL=$(scripts/setup-test-tools.sh | tail -n 1)
export GRPCURL
cargo test --lib --bins --tests "$@"
cargo check --benches --examples
