"""Helpers for centralized-run tests: the tiny config, a simulated process death, checkpoint and metric readers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tests.support.tiny import offline_tiny


def tiny_values(fake_cifar_root: Path, output_root: Path) -> dict[str, Any]:
    """Run-config values for a tiny, fast centralized run: 1800 train images, 57 steps per epoch at batch 32."""
    values = {"batch-size": 32, "lr": 0.1, "epochs": 2, "eval-every": 1, "eval-batch-size": 250, "progress": False}
    return offline_tiny(fake_cifar_root, output_root, values)


class Killed(BaseException):
    """A simulated process death: a BaseException, so no ``except Exception`` in the code under test stops it."""


def checkpoints(run_dir: Path) -> list[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """(meta, tensors) of every checkpoint in ``run_dir``, oldest first."""
    out = []
    for path in sorted((run_dir / "checkpoints").glob("ckpt-*.json")):
        record = json.loads(path.read_text())
        out.append((record["meta"], load_file(path.with_suffix(".safetensors"))))
    return out


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of the newest checkpoint."""
    _, tensors = checkpoints(run_dir)[-1]
    return {k[len("weights/") :]: v for k, v in tensors.items() if k.startswith("weights/")}


def rows(run_dir: Path) -> list[dict[str, Any]]:
    """The metric rows without the wall-clock column."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in lines]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
