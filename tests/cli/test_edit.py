"""``fedtalos edit``: a mask file from step 0 and calibration, centrally and federatedly; the output is never
overwritten and bad input stops before any compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedtalos.config import RunConfig
from fedtalos.editing.mask_file import read, weights_hash
from fedtalos.task.resources import get_resources
from fedtalos.tracking.mask_report import read_run_mask
from tests.support.central import tiny_values
from tests.support.fixtures import torch_threads
from tests.support.masks import EDIT, run_edit
from tests.support.runs import final_weights, rows
from tests.support.tiny import TINY_FEDERATION, offline_tiny


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


def test_central_edit_writes_the_mask_its_head_and_provenance(fake_cifar_root: Path, tmp_path: Path, capsys):
    values = {**tiny_values(fake_cifar_root, tmp_path / "runs"), **EDIT, "run-name": "edit"}
    out = tmp_path / "masks" / "central.safetensors"
    assert run_edit(values, out, central=True) == 0
    assert f"mask file: {out}" in capsys.readouterr().out
    found = read(out)
    run_dir = tmp_path / "runs" / "edit"
    assert [r["phase"] for r in rows(run_dir)] == ["head", "calibration"], "step 0 and calibration, no fine-tuning"
    assert (found.calibrated, found.rule, found.sparsity, found.rounds, found.samples, found.seed) == (
        "centralized",
        "least-sensitive",
        0.9,
        2,
        16,
        0,
    )
    assert found.head_kind == "ridge" and found.model == "vit-tiny-test" and found.config["calibration-rounds"] == 2
    stored = read_run_mask(run_dir)  # the run's own mask report: the same mask
    assert list(stored) == list(found.mask) and all(torch.equal(stored[k], found.mask[k]) for k in stored)
    weights = final_weights(run_dir)
    assert all(torch.equal(found.head[k], weights[k]) for k in ("head.weight", "head.bias")), "the fitted head"
    config = RunConfig.from_mapping({k: v for k, v in values.items() if k != "run-name"})
    initial = get_resources(config, pretrained=True).initial_weights
    assert found.weights_hash == weights_hash(initial), "the hash of the starting backbone it was scored on"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mask_saved"]["hash"] == found.content_hash

    assert run_edit(values, out, central=True) == 2, "an existing mask file is never overwritten"
    assert "exists already" in capsys.readouterr().err and read(out).content_hash == found.content_hash


def test_federated_edit_calibrates_through_the_server(fake_cifar_root: Path, tmp_path: Path, capsys):
    values = {
        **offline_tiny(fake_cifar_root, tmp_path / "runs", TINY_FEDERATION),
        **EDIT,
        "calibration-fraction": 0.2,
        "run-name": "fed-edit",
    }
    out = tmp_path / "fed.safetensors"
    assert run_edit(values, out, central=False) == 0
    found = read(out)
    got = rows(tmp_path / "runs" / "fed-edit")
    assert [(r["phase"], r["round"]) for r in got] == [("head", 1), ("calibration", 1), ("calibration", 2)]
    assert found.calibrated == "federated" and found.rounds == 2 and found.config["num-clients"] == 10
    assert found.density() == pytest.approx(got[-1]["mask_density"])
    assert found.density() == pytest.approx(0.1, abs=2e-3)


def test_bad_input_stops_before_any_compute(fake_cifar_root: Path, tmp_path: Path, capsys):
    values = {**tiny_values(fake_cifar_root, tmp_path / "runs"), **EDIT, "sparsity": 1.5}
    assert run_edit(values, tmp_path / "m.safetensors", central=True) == 2
    assert "sparsity = 1.5" in capsys.readouterr().err
    values = {**tiny_values(fake_cifar_root, tmp_path / "runs"), "mask-rule": "none"}
    assert run_edit(values, tmp_path / "m.safetensors", central=True) == 2
    assert "mask-save-path needs a run that calibrates a mask" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.safetensors").exists()
