#!/usr/bin/env bash
# Retrains the bundled Siamese model (models/siamese.safetensors) exactly as
# it was trained: fetches the photo sets (scripts/fetch-datasets.sh), trains
# on their train split with the default settings (10 epochs, seed 42),
# calibrates the duplicate threshold on the validation split and writes the
# loss curve and quality report next to the weights.
#
# Usage: scripts/train-siamese.sh [OUT]   (default: models/siamese.safetensors)
# Then rebuild: the weights are compiled into the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-models/siamese.safetensors}
scripts/fetch-datasets.sh
cargo build
target/debug/lookalike train-siamese \
    --images datasets/classes datasets/near-dup-bases \
    --splits datasets/splits.tsv \
    --out "$OUT" \
    --report "${OUT%.safetensors}.report.json"
