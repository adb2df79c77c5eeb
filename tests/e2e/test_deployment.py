"""The same app on Flower's Deployment Engine over loopback: a SuperLink, SuperNodes with node configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.deployment import deployment, run_and_wait, tiny_overrides

APP = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_deployment_engine_run_completes(fake_cifar_root: Path, tmp_path: Path):
    with deployment(tmp_path / "deploy") as deploy:
        for pid in range(2):
            deploy.start_supernode(pid, 2)
        status = run_and_wait(deploy, tiny_overrides(fake_cifar_root, tmp_path / "runs", 2))
    assert status == "finished:completed"
    summary = json.loads((tmp_path / "runs" / "deployed" / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["final"]["test_acc"] is not None
