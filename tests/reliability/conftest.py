"""Module-scoped tiny run config and Flower task identity (for reference runs shared by a module's tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
    """The tiny model's kernels are far too small to split: a second thread only adds synchronisation, which on a
    busy machine costs more than the work itself (measured: 0.5 s instead of 10 s for a 2-round run)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def tiny_run_config(tiny_run_config_module: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The tiny run with a fresh output root per test (as in tests/federation)."""
    return dict(
        tiny_run_config_module,
        **{"output-root": str(tmp_path / "runs"), "run-name": "tiny", "num-server-rounds": 3, "eval-every": 1},
    )
