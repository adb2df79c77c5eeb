"""Figures of one run or a comparison of runs, from their ``metrics.jsonl``: loss and accuracy curves; and the one
look of every figure of the package (:func:`style_axes`, :func:`save_figure`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from fedtalos.tracking.metrics import read_rows

DPI = 130

X_AXES = {
    "round": "communication round",
    "client-steps": "local SGD steps per client (round × J)",
    "epoch": "epoch",
}
SPLIT_STYLE = {"train": ":", "val": "-", "test": "--"}


def _run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _x_values(rows: list[dict[str, Any]], axis: str, config: dict[str, Any]) -> list[float]:
    # Centralized rows count epochs, federated rows rounds: each falls back on the other, so any run plots.
    if axis == "epoch":
        return [r.get("epoch", r.get("round")) for r in rows]
    if axis == "client-steps":
        steps = config.get("local-steps", 1)
        return [r.get("round", r.get("epoch")) * steps for r in rows]
    return [r.get("round", r.get("epoch")) for r in rows]


def default_x(run_dirs: Sequence[Path]) -> str:
    """'epoch' when every run is centralized, else 'round'."""
    kinds = {_run_info(Path(d)).get("kind") for d in run_dirs}
    return "epoch" if kinds == {"centralized"} else "round"


def _training_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # the fine-tuning phase ("train", federated and centralized) is what the curves show; a run that has not
    # reached it yet (only head or calibration rows) shows what it has
    if any(r.get("phase") == "train" for r in rows):
        return [r for r in rows if r.get("phase") == "train"]
    return rows


def style_axes(ax: plt.Axes, xlabel: str, ylabel: str, title: str | None = None, integer_x: bool = False) -> None:
    """Labels, an optional title, a light grid, no top and right spines; integer ticks for counts."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if integer_x:  # rounds, epochs, blocks: no round 2.5
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` and close it; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_runs(
    run_dirs: Sequence[Path],
    out: Path,
    x: str = "round",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """One PNG with loss (left) and accuracy (right) of every run: validation solid, test dashed, train dotted.

    ``x`` is 'round', 'client-steps' (to compare different J fairly) or 'epoch'. Returns the PNG path.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for i, run_dir in enumerate(map(Path, run_dirs)):
        info = _run_info(run_dir)
        rows = _training_rows(read_rows(run_dir))
        label = labels[i] if labels else run_dir.name
        color = colors[i % len(colors)]
        for split, style in SPLIT_STYLE.items():
            points = [
                (xv, r)
                for xv, r in zip(_x_values(rows, x, info.get("config", {})), rows, strict=True)
                if r.get(f"{split}_acc") is not None
            ]
            if not points or (split == "train" and len(run_dirs) > 1):
                continue  # train curves only for a single run: they clutter comparisons
            xs = [p[0] for p in points]
            marker = "o" if len(points) < 30 else None
            ax_loss.plot(
                xs,
                [p[1][f"{split}_loss"] for p in points],
                style,
                color=color,
                marker=marker,
                ms=3,
                label=f"{label} ({split})",
            )
            ax_acc.plot(
                xs,
                [100 * p[1][f"{split}_acc"] for p in points],
                style,
                color=color,
                marker=marker,
                ms=3,
                label=f"{label} ({split})",
            )
            drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError("no evaluated rounds or epochs in these runs yet: nothing to plot")
    style_axes(ax_loss, X_AXES[x], "cross-entropy loss (nats)")
    style_axes(ax_acc, X_AXES[x], "top-1 accuracy (%)")
    ax_acc.legend(fontsize=8, frameon=False, loc="lower right")
    fig.suptitle(title or (Path(run_dirs[0]).name if len(run_dirs) == 1 else f"{len(run_dirs)} runs"))
    return save_figure(fig, out)


def plot_run(run_dir: Path) -> list[Path]:
    """The standard figures of one run into ``run_dir/plots/`` (nothing if no round was evaluated yet)."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    x = "epoch" if info.get("kind") == "centralized" else "round"
    try:
        return [plot_runs([run_dir], run_dir / "plots" / "curves.png", x=x)]
    except ValueError:
        return []
