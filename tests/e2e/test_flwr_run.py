"""Real `flwr run .` end to end: the local SuperLink, the simulation engine (Ray), the packaged app. A completed run
and what it writes: tests/cli/test_demo.py::test_the_demo_runs_every_step_and_labels_its_data_and_numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtalos.launch.flwr_run import flwr_run
from tests.support.flower import isolated_flower
from tests.support.tiny import offline_tiny

APP = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_flwr_run_reports_a_failed_run(fake_cifar_root: Path, tmp_path: Path):
    # num-clients says 5 but the federation has 3 SuperNodes: the server must refuse, and the status say so
    values = {"num-clients": 5, "fraction-train": 0.4, "num-server-rounds": 1, "run-name": "bad", "round-timeout": 30.0}
    overrides = offline_tiny(fake_cifar_root, tmp_path / "runs", values)
    with isolated_flower(tmp_path) as env:
        result = flwr_run(
            APP, overrides, "num-supernodes=3 client-resources-num-cpus=1", env=env, echo=False, timeout=300
        )
    assert not result.ok and result.status == "finished:failed"


def test_fedtalos_edit_writes_a_mask_file_through_flwr_run(fake_cifar_root: Path, tmp_path: Path, monkeypatch):
    from fedtalos.cli import edit
    from fedtalos.editing.mask_file import read
    from tests.support.masks import argv

    values = {"num-clients": 4, "calibration-fraction": 0.5, "calibration-rounds": 2, "fisher-samples": 8}
    values = offline_tiny(fake_cifar_root, tmp_path / "runs", {**values, "sparsity": 0.9, "run-name": "edit-e2e"})
    out = tmp_path / "fed.safetensors"
    with isolated_flower(tmp_path) as env:
        for key, value in env.items():  # `fedtalos edit` starts `flwr run` with this process's environment
            monkeypatch.setenv(key, value)
        assert edit.main(["--out", str(out), "--app", str(APP), *argv(values)]) == 0
    found = read(out)
    assert (found.calibrated, found.rule, found.rounds, found.head_kind) == ("federated", "least-sensitive", 2, "ridge")
    rows = [json.loads(line) for line in (tmp_path / "runs" / "edit-e2e" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["head", "calibration", "calibration"]
    assert found.density() == rows[-1]["mask_density"]
