"""Fixtures for in-process federated runs: a tiny model, generated data, a fresh output root per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.tiny import TINY_FEDERATION, offline_tiny


@pytest.fixture
def tiny_run_config(fake_cifar_root: Path, tmp_path: Path) -> dict[str, Any]:
    """A run config for a tiny, fast, learnable federated run on generated data."""
    values = {**TINY_FEDERATION, "num-server-rounds": 3, "eval-every": 1, "run-name": "tiny"}
    return offline_tiny(fake_cifar_root, tmp_path / "runs", values)
