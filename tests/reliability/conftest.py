"""Module-scoped tiny run config and Flower task identity (for reference runs shared by a module's tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import torch_threads
from tests.support.tiny import TINY_FEDERATION, offline_tiny, task_identity


@pytest.fixture(scope="module")
def tiny_run_config_module(fake_cifar_root: Path) -> dict[str, Any]:
    return offline_tiny(fake_cifar_root, values={**TINY_FEDERATION, "run-name": "killme"})


@pytest.fixture(scope="module")
def module_task_identity():
    """``flower_task_identity`` for module-scoped fixtures that run the ServerApp (reference runs)."""
    with task_identity():
        yield


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture
def tiny_run_config(tiny_run_config_module: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The tiny run with a fresh output root per test (as in tests/federation)."""
    return dict(
        tiny_run_config_module,
        **{"output-root": str(tmp_path / "runs"), "run-name": "tiny", "num-server-rounds": 3, "eval-every": 1},
    )
