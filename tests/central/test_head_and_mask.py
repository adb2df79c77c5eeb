"""The TaLoS pipeline in the centralized run: step-0 head, calibration, sparse fine-tuning, resume across phases."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedtalos.central.trainer import run_centralized
from fedtalos.config import RunConfig
from fedtalos.run.codec import WEIGHTS, section
from fedtalos.tracking.mask_report import read_run_mask
from tests.support.central import Killed, tiny_values
from tests.support.masks import make_old_run_dir
from tests.support.runs import assert_same_tensors, checkpoints, final_weights, rows

EDIT = {
    "head": "ridge",
    "mask-rule": "least-sensitive",
    "sparsity": 0.9,
    "calibration-rounds": 2,
    "fisher-samples": 32,
    "epochs": 1,
    "checkpoint-keep": 50,
    "checkpoint-every-steps": 20,
}


def run(values: dict[str, Any]) -> Path:
    run_dir, _ = run_centralized(RunConfig.from_mapping(values))
    return run_dir.path


def weights_after(run_dir: Path, phase: str) -> dict[str, torch.Tensor]:
    _, tensors = next((m, t) for m, t in checkpoints(run_dir) if m["phase"] == phase)
    return section(tensors, WEIGHTS)


@pytest.fixture(scope="module")
def edited(fake_cifar_root, tmp_path_factory) -> Path:
    """A ridge-head, least-sensitive, 90 %-sparse run without interruption."""
    return run(dict(tiny_values(fake_cifar_root, tmp_path_factory.mktemp("edited")), **EDIT))


def test_ridge_head_calibration_and_sparse_fine_tuning(edited: Path):
    got = rows(edited)
    assert [r["phase"] for r in got] == ["head", "calibration", "train"]
    head, calibration, train = got
    assert head["logit_scale"] > 1.0, "least-squares logits are too flat for a softmax: the temperature sharpens"
    assert head["val_acc"] > 0.03, "the ridge head alone classifies above chance"
    # ⌊(1 − s)·N⌋ entries kept (ties at the threshold may add a few): 10 % of the scored backbone
    assert math.floor(0.1 * calibration["total"]) <= calibration["trainable"] < 0.11 * calibration["total"]
    assert calibration["sparsity"] == pytest.approx(1 - calibration["density"])
    assert "test_acc" in train

    mask = read_run_mask(edited)
    before, after = weights_after(edited, "calibration"), final_weights(edited)
    assert set(mask) == {k for k in before if not k.startswith("head.")}, "the whole backbone is scored"
    for name, m in mask.items():
        assert torch.equal(before[name][~m], after[name][~m]), f"frozen entries of {name} moved"
    changed = sum(int((before[n][m] != after[n][m]).sum()) for n, m in mask.items())
    trainable = sum(int(m.sum()) for m in mask.values())
    assert changed > 0.5 * trainable, f"only {changed} of {trainable} trainable entries moved"
    assert torch.equal(before["head.weight"], after["head.weight"]) and torch.equal(
        before["head.bias"], after["head.bias"]
    ), "the step-0 head stays frozen"
    assert not torch.equal(weights_after(edited, "head")["head.weight"], torch.zeros_like(after["head.weight"]))

    with open(edited / "mask_density.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["tensor"] for r in table] == list(mask)
    assert sum(int(r["trainable"]) for r in table) == calibration["trainable"]
    assert (edited / "plots" / "mask_density.png").stat().st_size > 10_000
    summary = json.loads((edited / "summary.json").read_text())
    assert summary["mask"]["density"] == calibration["density"] and summary["head"]["logit_scale"] > 1.0


@pytest.mark.parametrize(
    ("kill", "old_run_dir"),
    [
        ("central:before-checkpoint@2", False),  # calibration done, its checkpoint not written: calibrate again
        ("central:step@30", False),  # sparse fine-tuning, after the step-20 checkpoint: the mask from the checkpoint
        ("central:step@30", True),  # the same, in a run directory that holds its mask as mask.npz
    ],
)
def test_resume_across_editing_phases_is_bit_identical(central_config, edited, kill_at, kill, old_run_dir):
    values = dict(central_config, **EDIT)
    kill_at(kill)
    with pytest.raises(Killed):
        run(values)
    kill_at(None)
    if old_run_dir:
        (run_dir,) = Path(values["output-root"]).iterdir()
        make_old_run_dir(run_dir)
    resumed = run(values)
    assert_same_tensors(final_weights(resumed), final_weights(edited))
    assert rows(resumed) == rows(edited)
    assert torch.equal(
        torch.cat([m.flatten() for m in read_run_mask(resumed).values()]),
        torch.cat([m.flatten() for m in read_run_mask(edited).values()]),
    )


def test_probe_head_then_magnitude_mask(central_config):
    values = dict(
        central_config,
        **{"head": "probe", "probe-rounds": 2, "mask-rule": "lowest-magnitude", "sparsity": 0.5, "epochs": 1},
        **{"checkpoint-keep": 50},
    )
    run_dir = run(values)
    got = rows(run_dir)
    assert [(r["phase"], r["epoch"]) for r in got] == [("head", 1), ("head", 2), ("calibration", 1), ("train", 1)]
    start, probed = weights_after(run_dir, "head"), final_weights(run_dir)
    # linear probing moved only the head; fine-tuning then kept the head and the frozen half of the backbone
    metas = [m for m, _ in checkpoints(run_dir)]
    assert metas[0]["phase"] == "head" and metas[0]["epoch"] == 1
    mask = read_run_mask(run_dir)
    kept, total = sum(int(m.sum()) for m in mask.values()), sum(m.numel() for m in mask.values())
    assert total // 2 <= kept < 0.51 * total
    after_probe = weights_after(run_dir, "calibration")
    assert torch.equal(after_probe["head.weight"], probed["head.weight"])
    assert not torch.equal(start["head.weight"], torch.zeros_like(start["head.weight"]))
    for name, m in mask.items():
        assert torch.equal(after_probe[name][~m], probed[name][~m])


def test_centralized_calibration_scores_per_client_times_cohort(edited: Path, fake_cifar_root, tmp_path: Path):
    # fisher-samples means per client in both kinds of run: a centralized calibration scores fisher-samples × the
    # calibration cohort (round(0.1 · 100) = 10 by default), the total of a federated run of the same config
    from fedtalos.central.head_and_mask import calibration_batches
    from fedtalos.task.resources import get_resources

    assert rows(edited)[1]["fisher_samples"] == 32 * 10
    values = dict(tiny_values(fake_cifar_root, tmp_path), **EDIT)
    values.update({"fisher-samples": 7, "num-clients": 20, "calibration-fraction": 0.15})  # cohort of 3 → 21
    fixed = RunConfig.from_mapping(values)
    drawn = {}
    for config in (fixed, fixed.replace(calibration_redraw=True)):
        batches = calibration_batches(get_resources(config), config)
        drawn[config.calibration_redraw] = [torch.cat([x for x, _ in batches(r)]) for r in range(3)]
    assert all(len(x) == 21 for images in drawn.values() for x in images)
    first, *later = drawn[False]
    assert all(torch.equal(first, x) for x in later), "the default scores the same images every round"
    first, *later = drawn[True]
    assert not any(torch.equal(first, x) for x in later), "calibration-redraw draws fresh images each round"
