"""Fixtures shared by several test folders (registered for the whole suite by ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from fedtalos.testing import faults
from fedtalos.tracking.hooks import FAULT_INJECTION_ENV
from tests.support.central import Killed, tiny_values


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block.

    The tiny model's kernels are far too small to split: on a shared 2-core machine a second thread per process only
    makes OpenMP spin against other processes (measured: a centralized epoch 0.7 s with one thread, 10–40 s with
    two; a 2-round federated run 0.5 s instead of 10 s). CPU results are bit-identical only at equal thread counts,
    so folders that compare runs set it before their module-scoped reference runs.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture
def central_config(fake_cifar_root: Path, tmp_path: Path) -> dict[str, Any]:
    """:func:`tests.support.central.tiny_values` with a fresh output root per test."""
    return tiny_values(fake_cifar_root, tmp_path / "runs")


@pytest.fixture
def kill_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], list[tuple[str, int]]]:
    """``kill_at("central:step@25")`` makes that fault point raise :class:`Killed`; returns the points passed.

    Switches fault injection on (the runs' hooks then call ``testing.faults.point``) with its kill replaced.
    """
    seen: list[tuple[str, int]] = []
    target: list[str | None] = [None]

    def point(name: str, step: int) -> None:
        seen.append((name, step))
        if target[0] == f"{name}@{step}":
            raise Killed(target[0])

    monkeypatch.setattr(faults, "point", point)
    monkeypatch.setenv(FAULT_INJECTION_ENV, "armed by the kill_at fixture")

    def arm(where: str | None) -> list[tuple[str, int]]:
        target[0] = where
        seen.clear()
        return seen

    return arm
