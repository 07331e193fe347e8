#!/usr/bin/env bash
# Creates the Python environment for the peer benchmarks (ONNX Runtime running
# the same EfficientNet-Lite weights, Pillow as the decode peer, hnswlib and
# faiss-cpu for the index benchmark) in .tools/bench-venv (git-ignored).
#
#   scripts/setup-bench-env.sh          # prints the venv's python on its last line
#   py=$(scripts/setup-bench-env.sh | tail -n1)
#   "$py" scripts/onnx_export.py models/efficientnet-lite0.safetensors /tmp/lite0.onnx
#
# Versions are pinned in scripts/bench-requirements.txt (python3 -m venv, pip, PyPI).
# Idempotent: when every pin is already installed it only checks and prints.
# hnswlib has no wheel, only an sdist: pip compiles it with gcc (needs g++).
#
# imagededup is left out on purpose: its hash methods (PHash, DHash) cannot be
# imported without torch. `imagededup.methods/__init__.py` imports `cnn.py`,
# which does `import torch`, and `imagededup.utils/__init__.py` imports
# `utils/models.py` (torch, torchvision), which `hashing.py` pulls in through
# `imagededup.utils.general_utils`. Checked with imagededup 0.3.3.post2 installed
# --no-deps (+ scipy, scikit-learn, PyWavelets, tqdm, matplotlib): the import
# fails with "No module named 'torch'". torch from PyPI on linux brings the CUDA
# wheels (gigabytes), so it is not worth it for a hashing baseline. (Putting
# empty package modules for `imagededup.methods` and `imagededup.utils` into
# sys.modules first, then `from imagededup.methods.hashing import PHash, DHash`,
# does work without torch; that is a shim, not a supported import.)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/bench-venv
req=scripts/bench-requirements.txt
py="$venv/bin/python"

if [ ! -x "$py" ]; then
  mkdir -p .tools
  python3 -m venv "$venv"
fi

# Are all pins (name==version lines of the requirements file) installed?
pins_ok() {
  "$py" - "$req" <<'PY'
import sys
from importlib import metadata
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, want = line.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have != want:
        print(f"{name}: want {want}, have {have}", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
PY
}

if ! pins_ok 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  pins_ok
fi

"$py" - <<'PY' >&2
import numpy, onnx, onnxruntime, PIL, hnswlib, faiss
print("numpy", numpy.__version__, "| onnx", onnx.__version__,
      "| onnxruntime", onnxruntime.__version__, "| pillow", PIL.__version__,
      "| faiss", faiss.__version__, "| hnswlib ok")
PY
echo "$(pwd)/$py"
