"""The same app on Flower's Deployment Engine over loopback: a SuperLink, SuperNodes with node configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w

from tests.deploy_harness import deployment
from tests.tiny import offline_tiny

APP = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def tiny_overrides(data: Path, out: Path, clients: int) -> dict:
    values = {"num-clients": clients, "fraction-train": 1.0, "local-steps": 1, "batch-size": 16, "num-server-rounds": 1}
    return offline_tiny(data, out, {**values, "run-name": "deployed", "round-timeout": 300.0})


def run_and_wait(deploy, overrides: dict, timeout: float = 420) -> str:
    """`flwr run . deploy --stream`, then the run's final status from `flwr ls`."""
    config = deploy.root / "run.toml"
    config.write_text(tomli_w.dumps(overrides))
    started = deploy.flwr("run", str(APP), "deploy", "--run-config", str(config), "--stream", timeout=timeout)
    run_id = next(
        (line.split()[-1] for line in started.stdout.splitlines() if "Successfully started run" in line), None
    )
    assert run_id, started.stdout[-3000:] + started.stderr[-2000:]
    listed = json.loads(deploy.flwr("ls", "--run-id", run_id, "--format", "json").stdout)
    return listed["runs"][0]["status"]


def test_deployment_engine_run_completes(fake_cifar_root: Path, tmp_path: Path):
    with deployment(tmp_path / "deploy") as deploy:
        for pid in range(2):
            deploy.start_supernode(pid, 2)
        status = run_and_wait(deploy, tiny_overrides(fake_cifar_root, tmp_path / "runs", 2))
    assert status == "finished:completed"
    summary = json.loads((tmp_path / "runs" / "deployed" / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["final"]["test_acc"] is not None
