#!/usr/bin/env bash
# The GPU benchmark in one command (≤ 8 minutes on one GPU): prints one JSON object; see bench/gpu.py.
#   bash bench/gpu.sh            ViT-S/16 at 224 px, random init, generated CIFAR-format data, 1/2/4/8 actors
#   bash bench/gpu.sh --quick    a CPU smoke run (tiny ViT, 32 px, no federated rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0
exec timeout 480 "$PY" bench/gpu.py "$@"
