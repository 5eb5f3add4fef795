#!/usr/bin/env bash
# Create .venv with the pinned torch pair and craft installed (idempotent, ~2-4 min when fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.craft-installed
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Every pip call is pinned: an unpinned torch pulls multi-GB builds from PyPI.
.venv/bin/pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[dev]"
echo "$want" > "$stamp"
echo "craft: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
