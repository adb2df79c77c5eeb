"""Fault injection is switched on by the environment alone, and names each hook point as the kill tests expect."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtalos.testing import faults
from fedtalos.tracking.checkpoint import CheckpointStore
from fedtalos.tracking.hooks import FAULT_INJECTION_ENV, run_hooks


def test_without_the_variable_no_listener_is_attached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(FAULT_INJECTION_ENV, raising=False)
    store = CheckpointStore(tmp_path, "cfg")
    assert run_hooks(store).listeners == []
    store.fault_hook("after-tensors", 1)  # the store's own no-op hook is left alone


@pytest.mark.parametrize("prefix", ["", "central:"])
def test_every_point_reaches_its_named_kill_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str):
    seen: list[str] = []
    monkeypatch.setattr(faults, "point", lambda name, step: seen.append(f"{name}@{step}"))
    monkeypatch.setenv(FAULT_INJECTION_ENV, "on")
    store = CheckpointStore(tmp_path, "cfg")
    hooks = run_hooks(store, prefix)
    for point in ("round-start", "after-replies", "after-aggregate", "before-eval"):
        hooks(point, 4)
    hooks("step", 25)
    hooks("before-checkpoint", 4)
    store.fault_hook("after-tensors", 4)
    hooks("after-checkpoint", 4)
    p = prefix
    assert seen == [
        f"{p}round-start@4",
        f"{p}after-replies@4",
        f"{p}after-aggregate@4",
        f"{p}before-eval@4",
        f"{p}step@25",
        f"{p}before-checkpoint@4",
        "checkpoint:after-tensors@4",  # the store's stages have no prefix
        f"{p}after-checkpoint@4",
    ]


def test_point_kills_only_at_its_target(monkeypatch: pytest.MonkeyPatch):
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setenv(FAULT_INJECTION_ENV, "after-replies@2")
    faults.point("after-replies", 1)
    faults.point("before-eval", 2)
    assert not killed
    faults.point("after-replies", 2)
    assert killed == [(faults.os.getpid(), faults.signal.SIGKILL)]


def test_the_app_and_the_fault_points_read_one_variable():
    assert faults.ENV == FAULT_INJECTION_ENV
