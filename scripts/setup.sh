#!/usr/bin/env bash
# Create .venv with everything fedtalos needs (torch first, then the rest with uv).
# flwr 1.42.0 pins certifi>=2026.10.19, a release some registries do not serve yet; overrides.txt relaxes
# that one pin by a single day's release, through uv's --overrides. Nothing else is overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "uv>=0.13.5,<0.14"
# torch/torchvision first, with pip, as a matching pair (pip picks the newest pair your platform has).
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || .venv/bin/python -m pip install -q torch torchvision
.venv/bin/uv pip install -q --python .venv/bin/python --overrides overrides.txt -e ".[dev]" "$@"
echo "fedtalos is installed in .venv (activate with: source .venv/bin/activate)"
