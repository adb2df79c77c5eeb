"""A centralized run with ``mask-path``: no step 0, no calibration; the file's mask and head; the same result as a
run that calibrated the mask itself; a mask that does not fit is refused before any compute."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fedtalos.central.trainer import run_centralized
from fedtalos.cli import central
from fedtalos.config import RunConfig
from fedtalos.editing import mask_file as mf
from fedtalos.run.preflight import preflight
from fedtalos.task.resources import get_resources
from tests.support.central import tiny_values
from tests.support.masks import EDIT, argv, run_edit
from tests.support.runs import assert_same_tensors, final_weights, rows


@pytest.fixture(scope="module")
def runs(fake_cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A mask from ``fedtalos edit --central``, a run fine-tuning with it, and a run that calibrates for itself."""
    root = tmp_path_factory.mktemp("mask-path")
    values = {**tiny_values(fake_cifar_root, root / "runs"), "epochs": 1}
    mask_path = root / "central.safetensors"
    assert run_edit({**values, **EDIT, "run-name": "edit"}, mask_path, central=True) == 0
    with_file, _ = run_centralized(RunConfig.from_mapping({**values, "mask-path": str(mask_path), "run-name": "file"}))
    itself, _ = run_centralized(RunConfig.from_mapping({**values, **EDIT, "run-name": "itself"}))
    return {"values": values, "mask": mask_path, "file": with_file.path, "itself": itself.path}


def test_the_run_fine_tunes_with_the_files_mask_and_head(runs):
    found = mf.read(runs["mask"])
    run_dir = runs["file"]
    assert [r["phase"] for r in rows(run_dir)] == ["train"], "step 0 and calibration are skipped"
    start = get_resources(RunConfig.from_mapping(runs["values"]), pretrained=True).initial_weights
    after = final_weights(run_dir)
    for name, m in found.mask.items():
        assert torch.equal(after[name][~m], start[name][~m]), f"frozen entries of {name} moved"
    moved = sum(int((after[n][m] != start[n][m]).sum()) for n, m in found.mask.items())
    assert moved > 0.5 * sum(int(m.sum()) for m in found.mask.values()), "the trainable entries are fine-tuned"
    assert all(torch.equal(after[k], found.head[k]) for k in mf.HEAD_KEYS), "the file's head, frozen"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["mask_file"]["hash"]
        == found.content_hash
        == json.loads((run_dir / "mask_source.json").read_text())["hash"]
    )
    assert summary["mask_file"]["calibrated"] == "centralized"
    assert summary["mask"]["density"] == pytest.approx(found.density())


def test_the_result_equals_a_run_that_calibrated_the_mask_itself(runs):
    assert_same_tensors(final_weights(runs["file"]), final_weights(runs["itself"]))
    tested = lambda run: [r for r in rows(run) if r["phase"] == "train"][-1]["test_acc"]  # noqa: E731
    assert tested(runs["file"]) == tested(runs["itself"])


def _refused(runs: dict[str, Any], tmp_path: Path, capsys, mask_path: Path, **changes: Any) -> str:
    values = {**runs["values"], "output-root": str(tmp_path / "out"), "mask-path": str(mask_path), **changes}
    assert central.main(argv(values)) == 2
    assert not (tmp_path / "out").exists(), "refused before a run directory exists"
    return capsys.readouterr().err


def test_a_mask_of_another_model_is_refused(runs, tmp_path: Path, capsys):
    other = mf.write(tmp_path / "other.safetensors", dataclasses.replace(mf.read(runs["mask"]), model="x-vit"))
    assert other.model == "x-vit"
    assert "calibrated for model 'x-vit'" in _refused(runs, tmp_path, capsys, tmp_path / "other.safetensors")


def test_a_mask_of_other_shapes_is_refused(runs, tmp_path: Path, capsys):
    err = _refused(runs, tmp_path, capsys, runs["mask"], **{"image-size": 48})
    assert "other shapes" in err and "pos_embed" in err


def test_a_mask_scored_on_other_starting_weights_is_refused_unless_accepted(runs, tmp_path: Path, capsys):
    err = _refused(runs, tmp_path, capsys, runs["mask"], seed=1)  # the tiny test ViT's random init follows the seed
    assert "other starting weights" in err and "mask-any-weights" in err
    values = {**runs["values"], "output-root": str(tmp_path / "out"), "mask-path": str(runs["mask"]), "seed": 1}
    accepted = {**values, "mask-any-weights": True, "mask-any-split": True}  # and another seed's split: both
    preflight(RunConfig.from_mapping(accepted), "centralized")  # accepted explicitly


def test_a_corrupted_mask_file_is_refused(runs, tmp_path: Path, capsys):
    data = bytearray(runs["mask"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    err = _refused(runs, tmp_path, capsys, tmp_path / "bad.safetensors")
    assert "mask-path" in err and ("corrupted" in err or "not a readable mask file" in err)


def test_mask_path_leaves_step_0_and_calibration_to_the_file(runs):
    with pytest.raises(ValueError, match="leave mask-rule and head unset"):
        RunConfig.from_mapping({**runs["values"], **EDIT, "mask-path": str(runs["mask"])})
