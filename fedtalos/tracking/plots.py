"""Figures of one run or a comparison of runs, from their ``metrics.jsonl``: loss and accuracy curves; and the one
look of every figure of the package (:func:`style_axes`, :func:`save_figure`).

The output format follows the file's suffix: ``.png`` (at :data:`DPI`), ``.pdf`` or ``.svg`` (vector, for papers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from fedtalos.config import RunConfig
from fedtalos.config.kinds import keys_read_by
from fedtalos.task.backbones import BACKBONES
from fedtalos.tracking.figure_options import X_AXES
from fedtalos.tracking.identity import SHORT_NAMES, format_value, partition_label, short_label
from fedtalos.tracking.metrics import read_rows

DPI = 130
SPLIT_STYLE = {"train": ":", "val": "-", "test": "--"}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
SPLIT_COLORS = {"train": "#7f7f7f", "val": "#1f77b4", "test": "#d62728"}  # one run: a colour per split
# hollow test squares around the filled validation dots: a test point at the last validation point hides neither
SPLIT_MARKERS = {
    "train": dict(marker="^", ms=4),
    "val": dict(marker="o", ms=4),
    "test": dict(marker="s", ms=7, mfc="none"),
}
# keys that never tell runs apart in a legend: where a run writes, not what it computes
NOT_SETTINGS = {"run-name", "output-root", "dataset-root", "weights-path"}
MAX_LABEL_SETTINGS = 4  # settings named in one legend label before it is cut with '…'


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


def x_label(x: str, kinds: set[str | None]) -> str:
    """The x-axis label of ``x`` for runs of these kinds; ValueError for an axis the runs do not have (a
    centralized run has no rounds and no client steps)."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}")
    centralized = "centralized" in kinds
    federated = bool(kinds - {"centralized"})
    if centralized and x == "client-steps":
        raise ValueError("--x client-steps counts local steps of federated clients; a centralized run has none")
    if centralized and not federated:
        if x != "epoch":
            raise ValueError("a centralized run counts epochs, not communication rounds: use --x epoch")
        return X_AXES["epoch"]
    if centralized:  # a comparison of both kinds: each run on its own count
        return "communication round (federated) / epoch (centralized)"
    return X_AXES["client-steps" if x == "client-steps" else "round"]


def _settings(info: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the run ran with (``config``; ``result_config`` for a record without it) that its kind of run
    reads (a centralized run has no ``local-steps``), and its kind."""
    kind = info.get("kind")
    read, known = keys_read_by(str(kind)), RunConfig.facts()
    values = dict(info.get("config") or info.get("result_config") or {})
    values = {k: v for k, v in values.items() if k not in known or k in read}
    values["kind"] = kind
    return values


def _result_keys(info: Mapping[str, Any]) -> set[str]:
    # the keys that decide a run's numbers; where runs write is no difference between them
    return set(info.get("result_config") or info.get("config") or {}) - NOT_SETTINGS | {"kind"}


def _setting_text(key: str, values: Mapping[str, Any]) -> str:
    if key in ("partitioning", "classes-per-client"):
        return partition_label(values)
    if key == "kind":
        return str(values.get("kind"))
    label = short_label(key)
    value = format_value(values.get(key))
    return f"{label}={value}" if label else value


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short legend labels: the settings in which the runs differ (``J=8``, ``Nc=5, lr=0.05``), the run names
    where the settings cannot tell them apart."""
    infos = [_run_info(Path(d)) for d in run_dirs]
    settings = [_settings(i) for i in infos]
    # the order of run names (identity.SHORT_NAMES: partition, J, …), then the other keys alphabetically
    order = ["kind", "partitioning", "classes-per-client", *SHORT_NAMES]
    keys = sorted(
        set().union(*map(_result_keys, infos)), key=lambda k: (order.index(k) if k in order else len(order), k)
    )
    # a key differs when the runs that read it disagree on it
    differ = [k for k in keys if len({json.dumps(s[k], sort_keys=True) for s in settings if k in s}) > 1]
    if "partitioning" in differ and "classes-per-client" in differ:
        differ.remove("classes-per-client")  # one partition label names both
    labels = []
    for values in settings:
        parts = list(dict.fromkeys(_setting_text(k, values) for k in differ if k in values))
        cut = parts[:MAX_LABEL_SETTINGS] + (["…"] if len(parts) > MAX_LABEL_SETTINGS else [])
        labels.append(", ".join(cut))
    if len(set(labels)) < len(labels) or not all(labels):
        return [Path(d).name for d in run_dirs]
    return labels


def _title_parts(info: Mapping[str, Any]) -> list[str]:
    values = _settings(info)
    if not values.get("kind"):
        return [str(info.get("run_name", ""))]
    backbone = BACKBONES.get(values.get("model"))
    if values["kind"] == "centralized":
        parts = ["centralized", "linear probe" if values.get("freeze") == "backbone" else "fine-tuning"]
    else:
        parts = [str(values.get("strategy", "fedavg")), partition_label(values), f"J={values.get('local-steps')}"]
    if values.get("mask-rule", "none") != "none":
        parts.append(f"{values['mask-rule']} mask, sparsity={format_value(values.get('sparsity'))}")
    return [*parts, backbone.label if backbone else str(values.get("model")), f"seed {values.get('seed')}"]


def run_title(infos: Sequence[Mapping[str, Any]]) -> str:
    """A readable title: what the runs share of what trained and how, without a hash (one run: ``fedavg, iid, J=4,
    DINO ViT-S/16, seed 0``); ``N runs`` when they share none of it."""
    parts = [_title_parts(i) for i in infos]
    shared = [p for p in parts[0] if all(p in other for other in parts[1:])]
    return ", ".join(shared) if shared else f"{len(infos)} runs"


def _training_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # the fine-tuning phase ("train", federated and centralized) is what the curves show; a run that has not
    # reached it yet (only head or calibration rows) shows what it has
    if any(r.get("phase") == "train" for r in rows):
        return [r for r in rows if r.get("phase") == "train"]
    return rows


def style_axes(ax: plt.Axes, xlabel: str, ylabel: str, title: str | None = None, integer_x: bool = False) -> None:
    """Labels, an optional title, a light grid, no top and right spines; integer ticks for counts; plain tick
    labels (no '1e-5+4.608' offset)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if integer_x:  # rounds, epochs, blocks: no round 2.5
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):  # log and categorical axes have no offset
            formatter.set_useOffset(False)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` in the format of ``path``'s suffix (PNG at :data:`DPI`, PDF, SVG) and close it; returns
    ``path``."""
    path = Path(path)
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
    """One figure with loss (left) and accuracy (right) of every run; returns its path (PNG, PDF or SVG by suffix).

    One run: train, validation and test, a colour and a line style each. Several runs: a colour per run, labelled by
    the settings in which they differ (:func:`run_labels`), validation solid and test dashed (no train curves: they
    clutter comparisons). ``x`` is 'round', 'client-steps' (to compare different J fairly) or 'epoch'; an axis the
    runs do not have raises ValueError (:func:`x_label`).
    """
    run_dirs = [Path(d) for d in run_dirs]
    infos = [_run_info(d) for d in run_dirs]
    xlabel = x_label(x, {i.get("kind") for i in infos})
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs: give one label per run")
    single = len(run_dirs) == 1
    labels = list(labels) if labels else run_labels(run_dirs)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn_splits: list[str] = []
    drawn_runs: list[tuple[str, Any]] = []
    for i, (run_dir, info) in enumerate(zip(run_dirs, infos, strict=True)):
        rows = _training_rows(read_rows(run_dir))
        xs_all = _x_values(rows, x, info.get("config", {}))
        run_color = colors[i % len(colors)]
        drawn = False
        for split, style in SPLIT_STYLE.items():
            if split == "train" and not single:
                continue
            points = [(xv, r) for xv, r in zip(xs_all, rows, strict=True) if r.get(f"{split}_acc") is not None]
            if not points:
                continue
            color = SPLIT_COLORS[split] if single else run_color
            xs = [p[0] for p in points]
            kwargs = dict(color=color, clip_on=False, **(SPLIT_MARKERS[split] if len(points) < 30 else {}))
            label = SPLIT_NAMES[split] if single else f"{labels[i]} ({SPLIT_NAMES[split]})"
            ax_loss.plot(xs, [p[1][f"{split}_loss"] for p in points], style, label=label, **kwargs)
            ax_acc.plot(xs, [100 * p[1][f"{split}_acc"] for p in points], style, label=label, **kwargs)
            drawn = True
            if split not in drawn_splits:
                drawn_splits.append(split)
        if drawn:
            drawn_runs.append((labels[i], run_color))
    if not drawn_runs:
        plt.close(fig)
        raise ValueError("no evaluated rounds or epochs in these runs yet: nothing to plot")
    style_axes(ax_loss, xlabel, "cross-entropy loss (nats)", integer_x=True)
    style_axes(ax_acc, xlabel, "top-1 accuracy (%)", integer_x=True)
    if single:
        handles = [Line2D([], [], color=SPLIT_COLORS[s], ls=SPLIT_STYLE[s], **SPLIT_MARKERS[s]) for s in drawn_splits]
        names = [SPLIT_NAMES[s] for s in drawn_splits]
    else:  # colours name the runs, line styles the splits: one entry each instead of runs × splits
        handles = [Line2D([], [], color=c, lw=2) for _, c in drawn_runs]
        handles += [Line2D([], [], color="black", ls=SPLIT_STYLE[s], **SPLIT_MARKERS[s]) for s in drawn_splits]
        names = [label for label, _ in drawn_runs] + [SPLIT_NAMES[s] for s in drawn_splits]
    # outside the axes, below them: a legend never hides a point
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 4), frameon=False, fontsize=9)
    fig.suptitle(title or run_title(infos), fontsize=11)
    return save_figure(fig, out)


def plot_run(run_dir: Path) -> list[Path]:
    """The standard figures of one run into ``run_dir/plots/`` (nothing if no round was evaluated yet)."""
    run_dir = Path(run_dir)
    try:
        return [plot_runs([run_dir], run_dir / "plots" / "curves.png", x=default_x([run_dir]))]
    except ValueError:
        return []
