"""Run directories written the way the apps write them (``open_run_dir``, ``MetricsLog``, ``write_summary``), with
metric values chosen by the test, so that tables and figures can be checked against known numbers."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedtalos.config import RunConfig
from fedtalos.tracking.metrics import MetricsLog
from fedtalos.tracking.rundir import open_run_dir


def write_run(
    values: Mapping[str, Any],
    rows: Sequence[dict[str, Any]],
    kind: str = "federated",
    finished: bool = True,
    mask_density: Mapping[str, tuple[int, int]] | None = None,
) -> Path:
    """A run directory for the run config ``values`` holding ``rows``; ``summary.json`` when ``finished``."""
    config = RunConfig.from_mapping(values)
    run_dir = open_run_dir(config, kind)
    log = MetricsLog(run_dir.path)
    log.restore([])
    for row in rows:
        log.append(row)
    if mask_density is not None:
        with open(run_dir.path / "mask_density.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["tensor", "entries", "trainable", "density"])
            for name, (entries, trainable) in mask_density.items():
                writer.writerow([name, entries, trainable, trainable / entries])
    if finished:
        summary: dict[str, Any] = {"kind": kind, "config_hash": config.result_hash(), "rounds": len(rows)}
        if mask_density is not None:
            total = sum(e for e, _ in mask_density.values())
            summary["mask"] = {"density": sum(t for _, t in mask_density.values()) / total}
        run_dir.write_summary(summary)
    return run_dir.path


def train_rows(
    rounds: int,
    final_test_acc: float,
    *,
    val: Sequence[float] | None = None,
    drift: float | Sequence[float] = 0.1,
    bytes_up: int = 1000,
    first_step: int = 1,
    eval_every: int = 1,
) -> list[dict[str, Any]]:
    """``rounds`` training rows: validation every ``eval_every`` rounds, the test at the last round."""
    rows = []
    for r in range(1, rounds + 1):
        row: dict[str, Any] = {
            "phase": "train",
            "round": r,
            "step": first_step + r - 1,
            "train_loss": 2.0 - r * 0.01,
            "drift": drift if isinstance(drift, float | int) else drift[r - 1],
            "bytes_up": bytes_up,
            "bytes_down": 2 * bytes_up,
            "wall_s": 6.0,
        }
        if r % eval_every == 0 or r == rounds:
            acc = val[(r - 1) // eval_every] if val is not None else final_test_acc * r / rounds
            row.update(val_acc=acc, val_loss=3.0 - acc)
        if r == rounds:
            row.update(test_acc=final_test_acc, test_loss=3.0 - final_test_acc)
        rows.append(row)
    return rows
