#!/usr/bin/env bash
# Creates the Python environment for the peer benchmarks (ONNX Runtime running
# the same EfficientNet-Lite weights, Pillow as the decode peer, hnswlib and
# faiss-cpu for the index benchmark, imagededup's PHash/DHash as the
# near-duplicate accuracy peer) in .tools/bench-venv (git-ignored).
#
#   scripts/setup-bench-env.sh          # prints the venv's python on its last line
#   py=$(scripts/setup-bench-env.sh | tail -n1)
#   "$py" scripts/onnx_export.py models/efficientnet-lite0.safetensors /tmp/lite0.onnx
#
# Versions are pinned in scripts/bench-requirements.txt (python3 -m venv, pip, PyPI).
# Idempotent: when every pin is already installed it only checks and prints.
# hnswlib has no wheel, only an sdist: pip compiles it with gcc (needs g++).
#
# imagededup is installed with --no-deps (its "#no-deps NAME==VERSION" line in
# the requirements file), plus only what its hashing code imports (PyWavelets,
# scipy, scikit-learn, tqdm, pillow, numpy; pinned there as ordinary lines).
# Its declared dependencies include torch and torchvision (for its CNN method;
# from PyPI on linux that is gigabytes of CUDA wheels) and matplotlib, which the
# hash methods never use; `pip check` therefore lists them as missing.
# The plain `from imagededup.methods import PHash, DHash` does NOT work without
# torch: `imagededup/methods/__init__.py` imports `cnn.py` (`import torch`), and
# `imagededup/utils/__init__.py` imports `utils/models.py` (torch, torchvision)
# and `plotter.py` (matplotlib), which `hashing.py` pulls in through
# `imagededup.utils.general_utils`. The workaround (in scripts/peer_imagededup.py):
# put placeholder modules (types.ModuleType, with __path__ set to the real
# package folders) into sys.modules as `imagededup.methods` and `imagededup.utils`,
# then `from imagededup.methods.hashing import PHash, DHash`: the submodules
# load from the real folders and the two torch-importing __init__.py files are
# never run. That is a shim, not a supported import: re-check it when the pin
# moves. Checked with imagededup 0.3.3.post2.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/bench-venv
req=scripts/bench-requirements.txt
py="$venv/bin/python"

if [ ! -x "$py" ]; then
  mkdir -p .tools
  python3 -m venv "$venv"
fi

# Are all pins (name==version lines of the requirements file, and its
# "#no-deps name==version" lines) installed?
pins_ok() {
  "$py" - "$req" <<'PY'
import re, sys
from importlib import metadata
ok = True
for line in open(sys.argv[1]):
    line = re.sub(r"^#no-deps\s+", "", line)
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
  # The "#no-deps NAME==VERSION" lines: installed without their declared dependencies.
  nodeps=$(sed -n 's/^#no-deps[[:space:]]\{1,\}\([^[:space:]#]\{1,\}\).*/\1/p' "$req")
  if [ -n "$nodeps" ]; then
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps $nodeps
  fi
  pins_ok
fi

"$py" - <<'PY' >&2
import numpy, onnx, onnxruntime, PIL, hnswlib, faiss
print("numpy", numpy.__version__, "| onnx", onnx.__version__,
      "| onnxruntime", onnxruntime.__version__, "| pillow", PIL.__version__,
      "| faiss", faiss.__version__, "| hnswlib ok")
PY
# imagededup's hash methods through the shim (imports them, prints the version).
"$py" scripts/peer_imagededup.py --check >&2
echo "$(pwd)/$py"
