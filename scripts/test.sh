#!/usr/bin/env bash
# The test command: installs the test tools (scripts/setup-test-tools.sh),
# then runs every unit and end-to-end test. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
GRPCURL=$(scripts/setup-test-tools.sh | tail -n 1)
export GRPCURL
cargo test --all-targets "$@"
