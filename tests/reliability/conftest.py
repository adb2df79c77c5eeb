"""Module-scoped tiny run config (the kill tests share one reference run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def tiny_run_config_module(fake_cifar_root: Path) -> dict[str, Any]:
    return {
        "dataset-root": str(fake_cifar_root),
        "dataset-verify": False,
        "dataset-download": False,
        "model": "vit-tiny-test",
        "image-size": 32,
        "num-clients": 10,
        "fraction-train": 0.3,
        "local-steps": 2,
        "batch-size": 16,
        "lr": 0.05,
        "eval-batch-size": 250,
        "device": "cpu",
        "run-name": "killme",
    }
