"""Fixtures for centralized runs: a tiny learnable config on generated data, simulated kills, checkpoint readers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fedtalos.testing import faults
from tests.support.central import Killed, tiny_values


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


@pytest.fixture
def central_config(fake_cifar_root: Path, tmp_path: Path) -> dict[str, Any]:
    """:func:`tiny_values` with a fresh output root per test."""
    return tiny_values(fake_cifar_root, tmp_path / "runs")


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
