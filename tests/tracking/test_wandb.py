"""Weights & Biases, without the network (a stand-in ``wandb`` module): a group per configuration, a job type per
family, names and ids that a smoke sweep and the real one (or two output roots) never share, the same id on resume."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedtalos.config import RunConfig
from fedtalos.tracking.rundir import open_run_dir


class FakeWandb:
    def __init__(self) -> None:
        self.inits: list[dict[str, Any]] = []
        self.logged: list[tuple[dict[str, Any], int]] = []

    def init(self, **kwargs: Any) -> SimpleNamespace:
        self.inits.append(kwargs)
        return SimpleNamespace(log=lambda row, step: self.logged.append((row, step)), finish=lambda: None)


@pytest.fixture
def wandb(monkeypatch: pytest.MonkeyPatch) -> FakeWandb:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def open_and_log(root: Path, **values: Any) -> None:
    base = {"wandb": True, "wandb-project": "p", "output-root": str(root), "num-clients": 20}
    config = RunConfig.from_mapping({**base, **values})
    with open_run_dir(config, "federated") as run_dir:
        metrics = run_dir.open_metrics()
        metrics.restore([])
        metrics.append({"phase": "train", "round": 1, "step": 1, "val_acc": 0.5, "test_acc": None})
        metrics.close()


def test_sweep_runs_group_by_configuration_and_never_share_an_id(tmp_path: Path, wandb: FakeWandb):
    name = {"run-name": "noniid-nc5-J4-seed0", "partitioning": "noniid", "classes-per-client": 5, "local-steps": 4}
    open_and_log(tmp_path / "smoke", model="vit-tiny-test", **name)  # the smoke sweep's run of the same name
    open_and_log(tmp_path / "real", **name)
    open_and_log(tmp_path / "real", **{**name, "run-name": "noniid-nc5-J4-seed1", "seed": 1})
    open_and_log(tmp_path / "real", **name)  # resumed
    smoke, real, seed1, resumed = wandb.inits
    assert smoke["name"] != real["name"] and smoke["id"] != real["id"] and smoke["group"] != real["group"]
    assert real["name"].startswith("noniid-nc5-J4-seed0-") and real["job_type"] == "noniid"
    assert real["group"] == seed1["group"] and real["group"].startswith("noniid-nc5-J4-"), "seeds in one group"
    assert seed1["id"] != real["id"]
    assert resumed["id"] == real["id"] and resumed["resume"] == "allow", "a resumed run continues its W&B run"
    assert all(len(i["id"]) <= 64 for i in wandb.inits)
    assert wandb.logged[0] == ({"phase": "train", "round": 1, "step": 1, "val_acc": 0.5}, 1)


def test_one_configuration_in_two_output_roots_gets_two_ids(tmp_path: Path, wandb: FakeWandb):
    open_and_log(tmp_path / "a")
    open_and_log(tmp_path / "b")
    a, b = wandb.inits
    assert a["name"] == b["name"] and a["name"].startswith("fedavg-iid-J4-seed0-"), "a derived name keeps its hash"
    assert a["group"] == b["group"] == f"fedavg-iid-J4-{a['group'][-6:]}" and a["job_type"] == "fedavg"
    assert a["id"] != b["id"]
