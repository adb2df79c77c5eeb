"""Fixtures for in-process federated runs: a tiny model, generated data, a fresh output root per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def tiny_run_config(fake_cifar_root: Path, tmp_path: Path) -> dict[str, Any]:
    """A run config for a tiny, fast, learnable federated run on generated data."""
    return {
        "dataset-root": str(fake_cifar_root),
        "dataset-verify": False,
        "dataset-download": False,
        "output-root": str(tmp_path / "runs"),
        "model": "vit-tiny-test",
        "image-size": 32,
        "num-clients": 10,
        "fraction-train": 0.3,
        "local-steps": 2,
        "batch-size": 16,
        "lr": 0.05,
        "num-server-rounds": 3,
        "eval-every": 1,
        "eval-batch-size": 250,
        "device": "cpu",
        "run-name": "tiny",
    }
