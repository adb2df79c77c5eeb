"""Reading what a run wrote, for comparisons bit for bit: checkpoints, final weights, metric rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from fedtalos.run.codec import WEIGHTS, section


def checkpoints(run_dir: Path) -> list[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """(meta, tensors) of every checkpoint in ``run_dir``, oldest first."""
    out = []
    for path in sorted((run_dir / "checkpoints").glob("ckpt-*.json")):
        record = json.loads(path.read_text())
        out.append((record["meta"], load_file(path.with_suffix(".safetensors"))))
    return out


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of the newest checkpoint."""
    _, tensors = checkpoints(run_dir)[-1]
    return section(tensors, WEIGHTS)


def rows(run_dir: Path) -> list[dict[str, Any]]:
    """The metric rows of ``metrics.jsonl`` without the timings (``*_s``, seconds: they differ run to run)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")} for line in lines]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors (weights, strategy or optimizer, mask, ...) of the newest checkpoint."""
    newest = sorted((run_dir / "checkpoints").glob("ckpt-*.safetensors"))[-1]
    return load_file(newest)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# The summary's wall-clock records (seconds and time stamps) differ from run to run; everything else is a result.
SUMMARY_TIMINGS = ("wall_s", "timeline", "run_wall_s", "startup_s", "startup")


def result_summary(run_dir: Path) -> dict[str, Any]:
    """``summary.json`` without its timings (:data:`SUMMARY_TIMINGS`): what two equal runs must share exactly."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in SUMMARY_TIMINGS}
