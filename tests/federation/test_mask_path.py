"""A federated run with ``mask-path``: only fine-tuning rounds, with the file's mask and head; the same result as a
run that calibrated the mask itself; a mask that does not fit is refused before a run directory exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fedtalos.config import ConfigError, RunConfig
from fedtalos.editing import mask_file as mf
from fedtalos.task.resources import get_resources
from tests.support.fakegrid import run_server
from tests.support.fixtures import torch_threads
from tests.support.masks import EDIT, run_edit
from tests.support.runs import assert_same_tensors, final_weights, rows
from tests.support.tiny import TINY_FEDERATION, offline_tiny, task_identity

pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture(scope="module")
def runs(fake_cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A mask from a federated ``fedtalos edit``, a run fine-tuning with it, and a run that calibrates itself."""
    root = tmp_path_factory.mktemp("fed-mask-path")
    values = offline_tiny(fake_cifar_root, root / "runs", {**TINY_FEDERATION, "num-server-rounds": 2})
    calibration = {**EDIT, "calibration-fraction": 0.2}
    mask_path = root / "fed.safetensors"
    with torch_threads(1), task_identity():
        assert run_edit({**values, **calibration, "run-name": "edit"}, mask_path, central=False) == 0
        with_file, _ = run_server({**values, "mask-path": str(mask_path), "run-name": "file"})
        itself, _ = run_server({**values, **calibration, "run-name": "itself"})
    return {"values": values, "mask": mask_path, "file": with_file, "itself": itself}


def test_the_run_fine_tunes_with_the_files_mask_and_head(runs):
    found = mf.read(runs["mask"])
    run_dir = runs["file"]
    assert [(r["phase"], r["round"]) for r in rows(run_dir)] == [("train", 1), ("train", 2)]
    start = get_resources(RunConfig.from_mapping(runs["values"]), pretrained=True).initial_weights
    after = final_weights(run_dir)
    for name, m in found.mask.items():
        assert torch.equal(after[name][~m], start[name][~m]), f"frozen entries of {name} moved"
    assert any(not torch.equal(after[n][m], start[n][m]) for n, m in found.mask.items()), "fine-tuned"
    assert all(torch.equal(after[k], found.head[k]) for k in mf.HEAD_KEYS), "the file's head, frozen"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mask_file"]["hash"] == found.content_hash and summary["mask_file"]["calibrated"] == "federated"


def test_the_result_equals_a_run_that_calibrated_the_mask_itself(runs):
    assert_same_tensors(final_weights(runs["file"]), final_weights(runs["itself"]))
    last = lambda run: [r for r in rows(run) if r["phase"] == "train"][-1]  # noqa: E731
    assert last(runs["file"])["test_acc"] == last(runs["itself"])["test_acc"]
    assert last(runs["file"])["bytes_up"] == last(runs["itself"])["bytes_up"], "the same sparse uploads"


def test_a_mask_scored_on_other_starting_weights_is_refused_before_a_run_directory(runs, tmp_path: Path):
    values = {**runs["values"], "output-root": str(tmp_path), "run-name": "refused", "mask-path": str(runs["mask"])}
    with pytest.raises(ConfigError, match="other starting weights"):
        run_server({**values, "seed": 3})
    with pytest.raises(ConfigError, match="other shapes"):
        run_server({**values, "image-size": 48})
    assert not (tmp_path / "refused").exists()
