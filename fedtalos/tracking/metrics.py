"""Metric logs: one row per round (or epoch) and phase, as ``metrics.jsonl`` and ``metrics.csv``.

The rows so far are also stored in every checkpoint; on resume :meth:`MetricsLog.restore` rewrites both files
from the checkpoint's rows, so rows written after that checkpoint by a killed process are dropped, and the
re-run round appends them again: a resumed run never duplicates or loses a row. Optional sinks (TensorBoard,
Weights & Biases) receive each row too.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from fedtalos.fsutil import atomic_write_bytes

# Columns that come first in the CSV, in this order; any others follow in order of first appearance.
LEADING_COLUMNS = (
    "phase",
    "round",
    "step",
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_top5",
    "test_loss",
    "test_acc",
    "test_top5",
    "clients_ok",
    "clients_failed",
    "bytes_up",
    "bytes_down",
    "drift",
    "wall_s",
)

Row = dict[str, Any]
WANDB_ID_NAME_CHARS = 48  # of the run name in a W&B id, before the place hash (ids stay under 64 characters)
# Columns shown in the one-line log of a row, when present and finite.
LOG_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr", "mask_density", "drift", "wall_s")


class MetricSink(Protocol):
    """Something that receives each logged row (TensorBoard, W&B, a progress display)."""

    def log(self, row: Row) -> None: ...

    def close(self) -> None: ...


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricsLog:
    """The metric rows of one run directory."""

    def __init__(self, run_dir: Path, sinks: Iterable[MetricSink] = ()) -> None:
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        self.rows: list[Row] = []
        self.sinks = list(sinks)

    def restore(self, rows: list[Row]) -> None:
        """Make the files hold exactly ``rows`` (from a checkpoint, or [] for a fresh run)."""
        self.rows = [dict(r) for r in rows]
        atomic_write_bytes(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows).encode())
        self._write_csv()

    def append(self, row: Row) -> None:
        """Add one row to both files and every sink."""
        row = {k: _json_value(v) for k, v in row.items()}
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._write_csv()
        for sink in self.sinks:
            sink.log(row)

    def _write_csv(self) -> None:
        columns = [c for c in LEADING_COLUMNS if any(c in r for r in self.rows)]
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.csv, buffer.getvalue().encode())

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read_rows(run_dir: Path) -> list[Row]:
    """The rows of ``run_dir/metrics.jsonl`` (a trailing partial line from a kill is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


class TensorBoardSink:
    """Writes every numeric column as a scalar ``<phase>/<column>`` at step ``round`` (or ``epoch``)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise RuntimeError(
                "tensorboard = true needs `pip install tensorboard` (extra: fedtalos[tensorboard])"
            ) from e
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, row: Row) -> None:
        step = row.get("step", row.get("round", row.get("epoch", 0)))
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("round", "step", "epoch"):
                self.writer.add_scalar(f"{row.get('phase', 'run')}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_identity(run_dir: Path, result_hash: str, configuration_hash: str) -> dict[str, str]:
    """W&B's ``id``, ``name``, ``group`` and ``job_type`` of the run in ``run_dir``.

    ``result_hash``: the run's (``RunConfig.result_hash``); ``configuration_hash``: the same without the seed, shared by
    a configuration's seeds. The name ends with the result hash (a sweep's ``noniid-nc5-J4-seed0`` does not, and a
    smoke sweep names its runs as the real one does); the id adds the run directory's place, so that no two run
    directories, even of one configuration, resume into each other's W&B run, while a resumed run continues its own.
    The group is the configuration (its seeds together), the job type the family or kind (the name's first word).
    """
    run_dir = Path(run_dir)
    name = run_dir.name
    if not name.endswith(result_hash[:6]):
        name = f"{name}-{result_hash[:6]}"
    label = name[: -len(result_hash[:6]) - 1]  # without the hash
    label = re.sub(r"-seed\d+$", "", label)  # the configuration: its seeds in one group
    place = hashlib.sha256(f"{run_dir.resolve()}\n{result_hash}".encode()).hexdigest()[:8]
    return {
        "id": f"{name[:WANDB_ID_NAME_CHARS]}-{place}",
        "name": name,
        "group": f"{label}-{configuration_hash[:6]}",
        "job_type": label.split("-")[0],
    }


class WandbSink:
    """Logs rows to Weights & Biases under :func:`wandb_identity`: a resumed run continues its W&B run, and runs of
    other directories or configurations never share one."""

    def __init__(self, run_dir: Path, project: str, config: dict[str, Any], identity: dict[str, str]) -> None:
        try:
            import wandb
        except ImportError as e:
            raise RuntimeError(
                "wandb = true needs `pip install wandb` (extra: fedtalos[wandb]) and `wandb login`"
            ) from e
        run_dir = Path(run_dir)
        self.run = wandb.init(project=project, resume="allow", config=config, dir=str(run_dir), **identity)

    def log(self, row: Row) -> None:
        step = row.get("step", row.get("round", row.get("epoch")))
        self.run.log({k: v for k, v in row.items() if v is not None}, step=step)

    def close(self) -> None:
        self.run.finish()


def make_sinks(
    run_dir: Path,
    *,
    tensorboard: bool,
    wandb: bool,
    project: str,
    config: dict[str, Any],
    wandb_ids: dict[str, str] | None = None,
) -> list[MetricSink]:
    """The optional sinks a run config asks for (``tensorboard``, ``wandb``), writing into ``run_dir``;
    ``wandb_ids``: :func:`wandb_identity`."""
    sinks: list[MetricSink] = []
    if tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    if wandb:
        sinks.append(WandbSink(run_dir, project, config, wandb_ids or {}))
    return sinks


def format_row(row: Row, index: str = "round") -> str:
    """One log line for a metric row: ``<phase> <index> | key value | ...`` (``index`` = 'round' or 'epoch')."""
    parts = [f"{row['phase']} {row.get(index, ''):>4}"]
    for key in LOG_COLUMNS:
        value = row.get(key)
        if isinstance(value, float) and math.isfinite(value):
            parts.append(f"{key} {value:.4g}" if key == "lr" else f"{key} {value:.4f}")
    if row.get("clients_failed"):
        parts.append(f"failed {row['clients_failed']}")
    return " | ".join(parts)


def last_with(rows: Sequence[Row], key: str) -> Row | None:
    """The last row that has a value for ``key`` (e.g. the final test evaluation); None if none has."""
    return next((r for r in reversed(rows) if r.get(key) is not None), None)


def best_row(rows: Sequence[Row], key: str = "val_acc") -> Row | None:
    """The first row with the highest ``key`` (the best validation); None if no row has one."""
    return max((r for r in rows if r.get(key) is not None), key=lambda r: r[key], default=None)


def summarize_rows(rows: list[Row], index: str = "step") -> dict[str, Any]:
    """``final`` (val/test metrics of the last row), ``best`` (highest ``val_acc`` and its ``index``) and ``wall_s``."""
    best = best_row(rows)
    final = rows[-1] if rows else {}
    return {
        "final": {k: final.get(k) for k in ("val_loss", "val_acc", "test_loss", "test_acc")},
        "best": {"val_acc": best["val_acc"], index: best[index]} if best else None,
        "wall_s": sum(r.get("wall_s", 0.0) for r in rows),
    }
