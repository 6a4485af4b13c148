#!/usr/bin/env bash
# Create .venv and install genwm with its test and benchmark extras. Safe to re-run.
# torch and torchvision are pinned (pyproject.toml); on this project's machines their CPU
# wheels install from local disk, elsewhere from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
