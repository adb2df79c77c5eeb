"""The end of a run, for both kinds: the summary's keys in order, metrics of the fine-tuned model only, the mask's
totals, and the mask report written again when the run directory lost it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedtalos.config import RunConfig
from fedtalos.editing.masks import mask_stats
from fedtalos.run.finish import finish_run
from fedtalos.run.phases import Kind
from fedtalos.tracking.checkpoint import CheckpointStore
from fedtalos.tracking.mask_report import MASK_FILE
from fedtalos.tracking.rundir import RunDir

MASK = {"blocks.0.w": torch.tensor([[True, False], [False, False]])}


def finish(tmp_path: Path, kind: Kind, mask: dict[str, torch.Tensor] | None, **extra: Any) -> dict[str, Any]:
    config = RunConfig.from_mapping({"mask-rule": "least-sensitive", "head": "ridge"} if mask else {})
    run_dir = RunDir(tmp_path / "run", config, CheckpointStore(tmp_path / "run" / "checkpoints", "h"), resumed=False)
    run_dir.path.mkdir()
    unit = "round" if kind == "federated" else "epoch"
    rows = [
        {"phase": "head", unit: 1, "val_acc": 0.9, "wall_s": 1.0},  # better, but not a fine-tuned model
        {"phase": "train", unit: 1, "val_acc": 0.4, "val_loss": 2.0, "wall_s": 2.0},
        {"phase": "train", unit: 2, "val_acc": 0.3, "val_loss": 2.5, "test_acc": 0.35, "wall_s": 4.0},
    ]
    summary = finish_run(
        config,
        run_dir,
        kind,
        rows=rows,
        mask=mask,
        counts={"rounds": 3} if kind == "federated" else {"epochs": 2, "steps": 40},
        extra=extra,
        final_weights=dict,
        initial_weights=None,
        mask_file=None,
        mask_source=None,
    )
    assert json.loads((run_dir.path / "summary.json").read_text()) == summary
    return summary


def test_a_federated_summary(tmp_path: Path):
    summary = finish(tmp_path, "federated", dict(MASK), wall_s=7.0, bytes_up=10, timeline={"a": 1.0})
    keys = ["kind", "run_name", "config_hash", "rounds", "final", "best", "wall_s", "bytes_up", "timeline", "mask"]
    assert list(summary) == keys
    assert summary["kind"] == "federated" and summary["run_name"] == "run" and summary["rounds"] == 3
    assert summary["best"] == {"val_acc": 0.4, "round": 1}, "the best fine-tuned model, not the head"
    assert summary["final"] == {"val_loss": 2.5, "val_acc": 0.3, "test_loss": None, "test_acc": 0.35}
    assert summary["wall_s"] == 7.0, "what the kind adds replaces the fine-tuning rows' sum"
    assert summary["mask"] == mask_stats(MASK) and summary["mask"]["trainable"] == 1
    assert (tmp_path / "run" / MASK_FILE).is_file(), "the report is written again when it is missing"


def test_a_dense_centralized_summary(tmp_path: Path):
    summary = finish(tmp_path, "centralized", None, head={"val_acc": 0.9})
    assert list(summary) == ["kind", "run_name", "config_hash", "epochs", "steps", "final", "best", "wall_s", "head"]
    assert summary["best"] == {"val_acc": 0.4, "epoch": 1} and summary["wall_s"] == 6.0
    assert not (tmp_path / "run" / MASK_FILE).exists()
