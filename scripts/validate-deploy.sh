#!/usr/bin/env bash
# Validates deploy/ with what runs on a machine without a container runtime:
# - the Kubernetes manifests against the Kubernetes 1.37 schemas, strictly
#   (PyPI kubernetes-validate, which bundles them);
# - the systemd unit with `systemd-analyze verify` (against the built binary,
#   since the unit names /usr/local/bin/lookalike);
# - the Dockerfile parsed (PyPI dockerfile-parse) and checked for what it
#   promises: two stages, a non-root numeric USER, a HEALTHCHECK, no ADD.
#   It is not built here: these machines have no container daemon.
# Needs python3 with venv; installs into .tools/deploy-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0 dockerfile-parse==2.0.1
fi
echo "kubernetes manifests:"
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.37 deploy/kubernetes/*.yaml

echo "systemd unit:"
binary=${LOOKALIKE_BIN:-target/debug/lookalike}
[ -x "$binary" ] || cargo build --bin lookalike
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
sed "s#/usr/local/bin/lookalike#$(realpath "$binary")#" deploy/systemd/lookalike.service \
    > "$unit_dir/lookalike.service"
# verify exits 0 on settings it ignores; any word from it is a failure.
complaints=$(systemd-analyze verify "$unit_dir/lookalike.service" 2>&1) || true
if [ -n "$complaints" ]; then
    echo "$complaints"
    exit 1
fi
echo "deploy/systemd/lookalike.service: ok"

echo "Dockerfile:"
"$venv/bin/python" - <<'PY'
from dockerfile_parse import DockerfileParser
p = DockerfileParser(path="deploy/Dockerfile")
ins = [(i["instruction"], i["value"]) for i in p.structure]
froms = [v for k, v in ins if k == "FROM"]
users = [v for k, v in ins if k == "USER"]
problems = []
if len(froms) < 2:
    problems.append("not multi-stage")
if not users or not users[-1].split(":")[0].isdigit() or users[-1].split(":")[0] == "0":
    problems.append("final USER is not a non-root numeric uid")
if not any(k == "HEALTHCHECK" for k, _ in ins):
    problems.append("no HEALTHCHECK")
if any(k == "ADD" for k, _ in ins):
    problems.append("ADD used (COPY is explicit)")
if problems:
    raise SystemExit("deploy/Dockerfile: " + "; ".join(problems))
print(f"deploy/Dockerfile: ok ({len(froms)} stages, USER {users[-1]}, HEALTHCHECK)")
PY
