"""Helpers for centralized-run tests: the tiny config and a simulated process death."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.tiny import offline_tiny


def tiny_values(fake_cifar_root: Path, output_root: Path) -> dict[str, Any]:
    """Run-config values for a tiny, fast centralized run: 1800 train images, 57 steps per epoch at batch 32."""
    values = {"batch-size": 32, "lr": 0.1, "epochs": 2, "eval-every": 1, "eval-batch-size": 250, "progress": False}
    return offline_tiny(fake_cifar_root, output_root, values)


class Killed(BaseException):
    """A simulated process death: a BaseException, so no ``except Exception`` in the code under test stops it."""
