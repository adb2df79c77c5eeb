"""Module-scoped tiny run config and Flower task identity (for reference runs shared by a module's tests)."""

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


@pytest.fixture(scope="module")
def module_task_identity():
    """``flower_task_identity`` for module-scoped fixtures that run the ServerApp (reference runs)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


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
