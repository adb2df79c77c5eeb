"""The centralized run: learning, rows and files, exact resume after kills at epoch ends and mid-epoch."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedtalos.central.trainer import run_centralized
from fedtalos.config import RunConfig
from fedtalos.task.resources import Resources, get_resources
from tests.support.central import Killed, tiny_values
from tests.support.runs import assert_same_tensors, final_weights, rows

STEPS = 57  # ⌈1800 / 32⌉: 2000 generated train images minus the 10 % validation split, batch 32


def run(values: dict[str, Any]) -> Path:
    run_dir, _ = run_centralized(RunConfig.from_mapping(values))
    return run_dir.path


def test_learns_above_chance_and_writes_the_run_directory(central_config):
    values = dict(central_config, **{"epochs": 6, "lr": 0.2, "eval-every": 2, "lr-schedule": "cosine"})
    run_dir = run(values)
    assert run_dir.name.startswith("central-full-cosine-lr0.2-seed0-")
    got = rows(run_dir)
    assert [r["epoch"] for r in got] == [1, 2, 3, 4, 5, 6] and {r["phase"] for r in got} == {"train"}
    assert [r["step"] for r in got] == [STEPS * e for e in range(1, 7)]
    assert [r["epoch"] for r in got if "val_acc" in r] == [2, 4, 6], "eval-every = 2, and the last epoch"
    assert [r["epoch"] for r in got if "test_acc" in r] == [6], "the test split only at the end"
    # the logged lr is that of the epoch's first step: the cosine at fractional epoch (e - 1), by formula
    assert [r["lr"] for r in got] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 6)) for e in range(6)])
    final = got[-1]
    assert final["test_acc"] > 0.05 and final["val_acc"] > 0.05, f"chance is 0.01, got {final}"
    assert final["train_loss"] < got[0]["train_loss"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kind"] == "centralized" and summary["epochs"] == 6 and summary["steps"] == 6 * STEPS
    assert summary["final"]["test_acc"] == final["test_acc"]
    assert summary["best"]["val_acc"] == max(r["val_acc"] for r in got if "val_acc" in r)
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["kind"] == "centralized" and stored["config"]["lr"] == 0.2
    assert (run_dir / "metrics.csv").read_text().startswith("phase,step,epoch,lr,train_loss,train_acc,val_loss")
    assert (run_dir / "plots" / "curves.png").stat().st_size > 10_000
    assert len(list((run_dir / "checkpoints").glob("ckpt-*.json"))) <= 3, "checkpoint-keep = 2, plus the best"


@pytest.fixture(scope="module")
def straight(fake_cifar_root, tmp_path_factory) -> Path:
    """Two epochs without interruption (cosine, so the lr depends on the whole horizon)."""
    return run(tiny_values(fake_cifar_root, tmp_path_factory.mktemp("straight")))


@pytest.mark.parametrize(
    ("every", "kill", "first_step_after"),
    [
        (0, "central:step@5", 1),  # before any checkpoint: a fresh start from the built weights, not the trained ones
        (0, "central:step@70", STEPS + 1),  # in epoch 2: resume from the epoch-1 checkpoint
        (10, "central:step@25", 21),  # mid-epoch 1: resume from the step-20 checkpoint, skipping 20 batches
        (10, "checkpoint:after-tensors@2", 11),  # checkpoint 2 half-written: back to checkpoint 1 (step 10)
    ],
)
def test_resume_after_a_kill_is_bit_identical(central_config, straight, kill_at, every, kill, first_step_after):
    values = dict(central_config, **{"checkpoint-every-steps": every})
    kill_at(kill)
    with pytest.raises(Killed):
        run(values)
    seen = kill_at(None)
    resumed = run(values)
    steps = [s for name, s in seen if name == "central:step"]
    assert steps[0] == first_step_after and steps[-1] == 2 * STEPS, "continued, not restarted"
    assert_same_tensors(final_weights(resumed), final_weights(straight))
    assert rows(resumed) == rows(straight)


def test_extending_a_constant_schedule_run_continues_it(central_config, tmp_path):
    # With a constant lr the horizon is not part of the run's identity: 1 epoch, then the same run to 2 epochs
    # equals 2 epochs straight (as in the federated test).
    values = dict(central_config, **{"lr-schedule": "constant"})
    straight_dir = run(dict(values, **{"output-root": str(tmp_path / "a")}))
    run(dict(values, **{"output-root": str(tmp_path / "b"), "epochs": 1}))
    extended = run(dict(values, **{"output-root": str(tmp_path / "b")}))
    assert extended.name == straight_dir.name
    assert_same_tensors(final_weights(extended), final_weights(straight_dir))
    first, *rest = rows(extended)
    assert all(first.pop(k) is not None for k in ("test_acc", "test_loss", "test_top5"))  # the 1-epoch run's end
    assert [first, *rest] == rows(straight_dir)


def _validation_losses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A list the trainer's validation evaluations take their losses from, in turn (the accuracy stays the model's
    own), so a test decides what the plateau scheduler sees instead of hoping training goes a certain way."""
    losses: list[float] = []
    real = Resources.evaluate

    def evaluate(self: Resources, split: str) -> dict[str, float]:
        result = real(self, split)
        if split == "val":
            result["val_loss"] = losses.pop(0)
        return result

    monkeypatch.setattr(Resources, "evaluate", evaluate)
    return losses


def test_plateau_halves_the_lr_after_an_epoch_without_improvement_and_resumes_exactly(
    central_config, kill_at, monkeypatch, tmp_path
):
    values = dict(central_config, **{"lr-schedule": "plateau", "lr-patience": 0, "lr-gamma": 0.5, "epochs": 4})
    # ReduceLROnPlateau(patience=0): an evaluation that is not a new best halves the lr. Epoch 2 is worse than
    # epoch 1 (halved); epoch 3 is worse than the best (epoch 1) though it would be a first best to a scheduler
    # that lost its state: the resume below happens inside epoch 3, so only a restored scheduler halves again.
    losses = [1.0, 2.0, 3.0, 0.5]
    reported = _validation_losses(monkeypatch)
    reported[:] = losses
    straight_dir = run(dict(values, **{"output-root": str(tmp_path / "straight")}))
    got = rows(straight_dir)
    assert [r["val_loss"] for r in got] == losses
    assert [r["lr"] for r in got] == pytest.approx([0.1, 0.1, 0.05, 0.025], rel=1e-12)
    assert not reported, "one validation per epoch"
    reported[:] = losses  # the killed run evaluates epochs 1 and 2, the resumed run 3 and 4
    kill_at("central:step@130")  # in epoch 3: the scheduler's best and counters come from the checkpoint
    with pytest.raises(Killed):
        run(values)
    kill_at(None)
    resumed = run(values)
    assert_same_tensors(final_weights(resumed), final_weights(straight_dir))
    assert rows(resumed) == got and not reported


def test_freeze_backbone_trains_the_head_only(central_config):
    run_dir = run(dict(central_config, **{"freeze": "backbone", "epochs": 1}))
    assert run_dir.name.startswith("central-linear-")
    start = get_resources(RunConfig.from_mapping(dict(central_config, **{"run-name": run_dir.name})), True)
    after = final_weights(run_dir)
    assert start.initial_weights is not None
    moved = sorted(k for k in after if not torch.equal(after[k], start.initial_weights[k]))
    assert moved == ["head.bias", "head.weight"]


def test_the_run_records_and_logs_its_backbone(central_config, fedtalos_log):
    run_dir = run(dict(central_config, epochs=1))
    model = json.loads((run_dir / "config.json").read_text())["model"]
    assert model["name"] == "vit-tiny-test" and model["image_size"] == 32 and model["fisher_method"] == "hooks"
    assert any("Fisher scores per sample by hooks" in r.getMessage() for r in fedtalos_log.records)
