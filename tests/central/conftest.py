"""Fixtures for centralized runs: a tiny learnable config on generated data, simulated kills, checkpoint readers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedtalos import faults
from tests.tiny import offline_tiny


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: the tiny model gains nothing from two, and on a shared 2-core machine two threads per
    process make OpenMP spin against other processes (measured: an epoch 0.7 s with one thread, 10–40 s with two).
    Module-scoped and autouse, so it is set before the module-scoped straight runs: CPU results are bit-identical
    only at equal thread counts."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def tiny_values(fake_cifar_root: Path, output_root: Path) -> dict[str, Any]:
    """Run-config values for a tiny, fast centralized run: 1800 train images, 57 steps per epoch at batch 32."""
    values = {"batch-size": 32, "lr": 0.1, "epochs": 2, "eval-every": 1, "eval-batch-size": 250, "progress": False}
    return offline_tiny(fake_cifar_root, output_root, values)


@pytest.fixture
def central_config(fake_cifar_root: Path, tmp_path: Path) -> dict[str, Any]:
    """:func:`tiny_values` with a fresh output root per test."""
    return tiny_values(fake_cifar_root, tmp_path / "runs")


class Killed(BaseException):
    """A simulated process death: a BaseException, so no ``except Exception`` in the code under test stops it."""


@pytest.fixture
def kill_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], list[tuple[str, int]]]:
    """``kill_at("central:step@25")`` makes that fault point raise :class:`Killed`; returns the points passed."""
    seen: list[tuple[str, int]] = []
    target: list[str | None] = [None]

    def point(name: str, step: int) -> None:
        seen.append((name, step))
        if target[0] == f"{name}@{step}":
            raise Killed(target[0])

    monkeypatch.setattr(faults, "point", point)

    def arm(where: str | None) -> list[tuple[str, int]]:
        target[0] = where
        seen.clear()
        return seen

    return arm


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
