#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv outside the checkout, and run ci/wheel/smoke.py
# there (issue 21: ntkbench works as an installed package, not only from its checkout).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ntkbench-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log() { echo "[wheel-test $(date +%H:%M:%S)] $*" >&2; }

log "building the wheel from $REPO"
# from a copy of what the package is made of, so that setuptools' build/ never lands in the checkout
mkdir "$WORK/src"
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/ntkbench" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"$REPO/.venv/bin/python" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/ntkbench-*.whl)"
log "built $(basename "$WHEEL"); fresh venv in $WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
# torch first and pinned, so that nothing below pulls a CUDA build
"$WORK/venv/bin/python" -m pip install -q torch==2.13.0
# WHEEL_EXTRAS (e.g. "hf"): the wheel's optional extras to install with it; smoke.py then
# requires what they bring (without hf it checks the ImportError naming the extra instead)
if [ -n "${WHEEL_EXTRAS:-}" ]; then
  log "installing the wheel with extras [$WHEEL_EXTRAS]"
  "$WORK/venv/bin/python" -m pip install -q "$WHEEL[$WHEEL_EXTRAS]"
else
  "$WORK/venv/bin/python" -m pip install -q "$WHEEL"
fi
cp "$REPO/ci/wheel/smoke.py" "$REPO/config.yaml" "$WORK/"
cd "$WORK"  # nowhere near the checkout: the import must come from the venv
WHEEL_EXTRAS="${WHEEL_EXTRAS:-}" "$WORK/venv/bin/python" smoke.py config.yaml
log "PASSED"
