"""Hyper-parameter search: the space file, ranking, best.toml, resuming a study and an interrupted trial, pruning."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
import pytest
import tomllib

import fedtalos.central.trainer as trainer
from fedtalos.config import ConfigError, RunConfig
from fedtalos.study import search
from fedtalos.study.search_space import load_space
from tests.support.central import Killed
from tests.support.runs import rows

SPACE = """
epochs = 1

[lr]
type = "categorical"
choices = [0.2, 0.0001]

[momentum]
type = "float"
low = 0.8
high = 0.95
"""


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    return path


def trials_csv(study_dir: Path) -> list[dict[str, str]]:
    with open(study_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_space_problems_are_listed_at_once(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text(
        """
learning-rate = 0.1
[run-name]
type = "categorical"
choices = ["a"]
[momentum]
type = "float"
low = 0.8
high = 1.0
[lr]
type = "float"
low = 0.1
high = 0.01
log = true
[weight-decay]
type = "gaussian"
[lr-schedule]
type = "categorical"
choices = ["cosine", "cyclic"]
"""
    )
    with pytest.raises(ConfigError) as e:
        load_space(path, {})
    text = str(e.value)
    for fragment in (
        "'learning-rate' is not a run-config key",
        "'run-name' cannot be searched",
        "[momentum] value 1.0",
        "[lr]: low = 0.1 must be below high = 0.01",
        "[weight-decay]: type must be",
        "[lr-schedule] value 'cyclic'",
    ):
        assert fragment in text
    assert len(e.value.problems) == 6


def test_example_space_is_valid():
    space = load_space(Path(__file__).resolve().parents[2] / "configs" / "search" / "central.toml", {})
    assert {"lr", "momentum", "weight-decay", "label-smoothing"} == set(space.params)
    assert space.params["lr"].log and space.params["lr"].low == 1e-3 and space.params["lr"].high == 0.1
    assert (space.fixed["lr-schedule"], space.fixed["epochs"]) == ("cosine", 5), "schedule and length fixed"


def test_a_run_length_cannot_be_searched(tmp_path: Path):
    path = tmp_path / "space.toml"
    path.write_text('[lr]\ntype = "float"\nlow = 0.001\nhigh = 0.1\n[epochs]\ntype = "int"\nlow = 3\nhigh = 6\n')
    with pytest.raises(ConfigError, match=r"\[epochs\]: a run's length cannot be searched"):
        load_space(path, {})


def test_search_ranks_writes_best_and_a_rerun_continues_the_study(central_config, space, monkeypatch):
    study_dir = Path(central_config["output-root"]) / "search-space"
    result = search.search(central_config, space, trials=2)
    assert result["study_dir"] == study_dir and (study_dir / "study.db").is_file()
    table = trials_csv(study_dir)
    assert [r["rank"] for r in table] == ["1", "2"] and {r["state"] for r in table} == {"complete"}
    assert float(table[0]["val_acc"]) >= float(table[1]["val_acc"])
    for r in table:
        trial_rows = rows(study_dir / r["run_dir"])
        assert float(r["val_acc"]) == trial_rows[-1]["val_acc"]
        assert not any("test_acc" in row for row in trial_rows), "search trials never look at the test split"
    best = RunConfig.from_mapping(tomllib.loads((study_dir / "best.toml").read_text()))
    assert best.lr == float(table[0]["param:lr"]) and best.momentum == float(table[0]["param:momentum"])
    assert best.epochs == 1 and best.run_name == "" and best.output_root == central_config["output-root"]

    ran: list[str] = []
    original = trainer.run_centralized  # run_trial imports it when called: patch it where it lives

    def counting(config: RunConfig, **kwargs: Any):
        ran.append(config.run_name)
        return original(config, **kwargs)

    monkeypatch.setattr(trainer, "run_centralized", counting)
    search.search(central_config, space, trials=2)
    assert ran == [], "finished trials are not redone"
    search.search(central_config, space, trials=3)
    assert ran == ["trial-0002"]
    assert len(trials_csv(study_dir)) == 3


def test_a_changed_space_is_refused(central_config, space):
    search.search(central_config, space, trials=0)  # creates the study (and records its space), runs nothing
    space.write_text(SPACE.replace("high = 0.95", "high = 0.9"))
    with pytest.raises(search.SearchError, match="another search space"):
        search.search(central_config, space, trials=2)


def test_an_interrupted_trial_resumes_from_its_checkpoint(central_config, space, kill_at):
    values = dict(central_config, **{"checkpoint-every-steps": 10})
    kill_at("central:step@25")
    with pytest.raises(Killed):
        search.search(values, space, trials=1)
    seen = kill_at(None)
    search.search(values, space, trials=1)
    steps = [s for name, s in seen if name == "central:step"]
    assert steps[0] == 21, "resumed from the step-20 checkpoint of the interrupted trial"
    table = trials_csv(Path(values["output-root"]) / "search-space")
    assert [(r["trial"], r["state"], r["run_dir"]) for r in table] == [
        ("1", "complete", "trial-0000"),
        ("0", "fail", "trial-0000"),
    ]


def test_pruned_trials_stop_early_and_are_ranked_after_complete_ones(central_config, space):
    values = dict(central_config, **{"epochs": 2})
    space.write_text(SPACE.replace("epochs = 1", "epochs = 2"))
    result = search.search(values, space, trials=2, pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    table = trials_csv(result["study_dir"])
    assert [r["state"] for r in table] == ["pruned", "pruned"] and [r["epochs_done"] for r in table] == ["1", "1"]
    assert result["best"] is None and not (result["study_dir"] / "best.toml").exists()
    for r in table:
        assert [row["epoch"] for row in rows(result["study_dir"] / r["run_dir"])] == [1], "stopped after epoch 1"
        assert not (result["study_dir"] / r["run_dir"] / "summary.json").exists()
