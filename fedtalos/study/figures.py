"""The study's figures, from the configurations :mod:`fedtalos.study.summary` collects (mean ± std over seeds).

Each function draws one kind of figure from whatever configurations fit it and returns the PNG paths it wrote
(none when nothing fits): learning curves per family, the Nc × J heat-map, accuracy vs sparsity and vs calibration
rounds, the calibration rules side by side, per-layer mask density, client drift, accuracy vs uploaded bytes and
the mask agreement across clients. Bands and error bars are ± one sample standard deviation over seeds.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from fedtalos.study.summary import Group, mean_std, partition_label, partition_order, settings_text, varied_settings

DPI = 130
RULE_COLORS = {
    "least-sensitive": "#1f77b4",
    "most-sensitive": "#d62728",
    "lowest-magnitude": "#2ca02c",
    "highest-magnitude": "#9467bd",
    "random": "#7f7f7f",
    "none": "#000000",
}
DRIFT_LABEL = "client drift (weighted RMS L2 distance\nof client updates from their mean)"
MAX_LINES = 8


def study_figures(groups: Sequence[Group], out: Path) -> list[Path]:
    """Every figure that the configurations support, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for draw in (
        learning_curves,
        nc_j_heatmap,
        accuracy_vs_sparsity,
        accuracy_vs_calibration_rounds,
        rules_comparison,
        mask_density_per_layer,
        client_drift,
        communication,
        mask_agreement,
    ):
        written += draw(groups, out)
    return written


# ---------------------------------------------------------------------------------------------------------------
# Helpers.


def _style(ax: plt.Axes, xlabel: str, ylabel: str, title: str | None = None, integer_x: bool = False) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if integer_x:  # rounds, epochs, blocks: no round 2.5
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("viridis" if n > 10 else "tab10")
    return [cmap(i / max(n - 1, 1)) if n > 10 else cmap(i % 10) for i in range(n)]


def _seeds_note(groups: Sequence[Group]) -> str:
    counts = sorted({len(g.runs) for g in groups})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean ± std over {n} seed{'s' if counts[-1] > 1 else ''}"


def _curve(
    group: Group, y: str, x_of: Callable[[Any, dict[str, Any]], float], rows_of: Callable[[Any], list[dict]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, mean and std of ``y`` over the group's seeds, at every x where at least one seed has a value."""
    values: dict[float, list[float]] = {}
    for run in group.runs:
        for row in rows_of(run):
            if row.get(y) is not None:
                values.setdefault(x_of(run, row), []).append(float(row[y]))
    xs = sorted(values)
    stats = [mean_std(values[x]) for x in xs]
    return (
        np.array(xs, dtype=float),
        np.array([s[0] for s in stats], dtype=float),
        np.array([s[1] if s[1] is not None else 0.0 for s in stats], dtype=float),
    )


def _band(ax: plt.Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float = 1.0, **kwargs: Any) -> None:
    (line,) = ax.plot(x, mean * scale, marker="o" if len(x) <= 25 else None, ms=3, **kwargs)
    if np.any(std > 0):
        ax.fill_between(x, (mean - std) * scale, (mean + std) * scale, color=line.get_color(), alpha=0.18, lw=0)


def _errorbar(ax: plt.Axes, x: Any, group: Group, metric: str, scale: float = 100.0, **kwargs: Any) -> bool:
    mean, std, _ = group.stat(metric)
    if mean is None:
        return False
    ax.errorbar(x, mean * scale, yerr=None if std is None else std * scale, capsize=3, **kwargs)
    return True


Stat = tuple[float | None, float | None, int]  # (mean, sample std, n) over seeds, as Group.stat returns


def _points(stats: Iterable[tuple[float, Stat]], scale: float = 1.0) -> tuple[list[float], list[float], list[float]]:
    """(xs, ys, errors) for ``ax.errorbar`` from (x, stat) pairs, skipping stats without a mean; ys × ``scale``."""
    xs, ys, es = [], [], []
    for x, (mean, std, _) in stats:
        if mean is not None:
            xs.append(x)
            ys.append(scale * mean)
            es.append(scale * (std or 0))
    return xs, ys, es


def _editing(groups: Sequence[Group]) -> list[Group]:
    return [g for g in groups if g.kind == "federated" and g.config.get("mask-rule", "none") != "none"]


def _dense_reference(groups: Sequence[Group], like: Group) -> Group | None:
    """A dense federated configuration trained like ``like``: same partition, J, rounds and clients."""
    keys = ("local-steps", "num-server-rounds", "num-clients", "fraction-train")
    for g in groups:
        dense = g.kind == "federated" and g.config.get("mask-rule") == "none"
        same_data = partition_label(g.config) == partition_label(like.config)
        if dense and same_data and all(g.config.get(k) == like.config.get(k) for k in keys):
            return g
    return None


def _most_common(values: Sequence[Any]) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


# ---------------------------------------------------------------------------------------------------------------
# 1. Learning curves per family.


def learning_curves(groups: Sequence[Group], out: Path) -> list[Path]:
    """``curves-<family>.png``: accuracy and loss per evaluation, one line per configuration (faceted when many).

    The x axis is epochs (centralized), rounds, or client steps = round × J when J varies in the family (so that
    runs with the same amount of local computation line up). Test curves are drawn when the runs were tested at
    several evaluations, else validation curves, with the final test accuracy as a star.
    """
    written = []
    families: dict[str, list[Group]] = {}
    for g in groups:
        families.setdefault(g.family, []).append(g)
    for family, members in families.items():
        keys = varied_settings(members)
        facet_key = keys[0] if len(members) > MAX_LINES and keys else None
        facets: dict[str, list[Group]] = {}
        for g in members:
            facets.setdefault(str(g.setting(facet_key)) if facet_key else "", []).append(g)
        if facet_key == "partition":
            facets = dict(sorted(facets.items(), key=lambda kv: partition_order(kv[0])))
        line_keys = [k for k in keys if k != facet_key]
        central = members[0].kind == "centralized"
        j_varies = len({g.config.get("local-steps") for g in members}) > 1
        if central:
            xlabel = "epoch"

            def x_of(run, row):
                return row.get("epoch", row.get("round"))
        elif j_varies:
            xlabel = "client steps (round × J local steps)"

            def x_of(run, row):
                return row["round"] * run.config.get("local-steps", 1)
        else:
            xlabel = "communication round"

            def x_of(run, row):
                return row["round"]

        tested_curves = all(
            sum(r.get("test_acc") is not None for r in run.train_rows()) > 1 for g in members for run in g.runs
        )
        split = "test" if tested_curves else "val"
        n_cols = len(facets)
        if facet_key:  # accuracy above loss, a column per facet
            fig, axes = plt.subplots(
                2, n_cols, figsize=(4.2 * n_cols, 7.2), squeeze=False, constrained_layout=True, sharex="col"
            )
            pairs = [(axes[0][c], axes[1][c]) for c in range(n_cols)]
        else:  # accuracy beside loss, the legend on the right
            fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6), squeeze=False, constrained_layout=True)
            pairs = [(axes[0][0], axes[0][1])]
        for col, (facet, facet_groups) in enumerate(facets.items()):
            ax_acc, ax_loss = pairs[col]
            colors = _colors(len(facet_groups))
            for g, color in zip(facet_groups, colors, strict=True):
                label = settings_text(g, line_keys) or g.label
                x, mean, std = _curve(g, f"{split}_acc", x_of, lambda run: run.train_rows())
                if len(x):
                    _band(ax_acc, x, mean, std, 100.0, color=color, label=label)
                x, mean, std = _curve(g, f"{split}_loss", x_of, lambda run: run.train_rows())
                if len(x):
                    _band(ax_loss, x, mean, std, 1.0, color=color, label=label)
                if split == "val":
                    x, mean, std = _curve(g, "test_acc", x_of, lambda run: run.train_rows())
                    if len(x):
                        ax_acc.errorbar(
                            x[-1:],
                            100 * mean[-1:],
                            yerr=100 * std[-1:],
                            fmt="*",
                            ms=10,
                            color=color,
                            capsize=3,
                            mec="white",
                            mew=0.5,
                        )
            title = f"{SETTING_NAMES_TITLE.get(facet_key, facet_key)} {facet}".strip() if facet_key else None
            _style(ax_acc, "" if facet_key else xlabel, f"{split} top-1 accuracy (%)", title, integer_x=True)
            _style(ax_loss, xlabel, f"{split} cross-entropy loss (nats)", integer_x=True)
            if facet_key:
                ax_acc.legend(fontsize=7, frameon=False, loc="best")
        if not facet_key:
            handles, labels = pairs[0][0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
        note = "; ★ = final test accuracy" if split == "val" else ""
        fig.suptitle(f"{family}: learning curves ({_seeds_note(members)}{note})", fontsize=11)
        written.append(_save(fig, out / f"curves-{family}.png"))
    return written


SETTING_NAMES_TITLE = {"partition": "", "local-steps": "J =", "lr-schedule": "schedule:", "mask-rule": "rule:"}


# ---------------------------------------------------------------------------------------------------------------
# 2. Nc × J heat-map.


def _partition_j_families(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """Families of dense federated configurations that vary both the partition and J."""
    families: dict[str, list[Group]] = {}
    for g in groups:
        if g.kind == "federated" and g.config.get("mask-rule") == "none":
            families.setdefault(g.family, []).append(g)
    return {
        f: m
        for f, m in families.items()
        if len({partition_label(g.config) for g in m}) > 1 and len({g.config.get("local-steps") for g in m}) > 1
    }


def nc_j_heatmap(groups: Sequence[Group], out: Path) -> list[Path]:
    """``heatmap-<family>.png``: final test accuracy for every (partition, J), mean with ± std in each cell."""
    written = []
    for family, members in _partition_j_families(groups).items():
        parts = sorted({partition_label(g.config) for g in members}, key=partition_order)
        steps = sorted({g.config.get("local-steps") for g in members})
        grid = np.full((len(steps), len(parts)), np.nan)
        text = [["—"] * len(parts) for _ in steps]
        for g in members:
            i, j = steps.index(g.config.get("local-steps")), parts.index(partition_label(g.config))
            mean, std, _ = g.stat("final_test_acc")
            if mean is not None:
                grid[i, j] = 100 * mean
                text[i][j] = f"{100 * mean:.1f}" + (f"\n± {100 * std:.1f}" if std is not None else "")
        fig, ax = plt.subplots(figsize=(1.5 * len(parts) + 2.5, 1.0 * len(steps) + 2.0), constrained_layout=True)
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
        finite = grid[np.isfinite(grid)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(len(steps)):
            for j in range(len(parts)):
                dark = np.isfinite(grid[i, j]) and grid[i, j] < middle
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=9, color="white" if dark else "black")
        ax.set_xticks(range(len(parts)), [p.replace("Nc=", "Nc = ") for p in parts])
        ax.set_yticks(range(len(steps)), [f"J = {s}" for s in steps])
        ax.set_xlabel("client data: classes per client (Nc), or iid")
        ax.set_ylabel("local steps per round (J)")
        rounds = {g.config.get("local-steps"): g.config.get("num-server-rounds") for g in members}
        budget = {s * r for s, r in rounds.items()}
        subtitle = (
            f"J × rounds = {budget.pop()}"
            if len(budget) == 1
            else "rounds: " + ", ".join(f"J={s}: {r}" for s, r in sorted(rounds.items()))
        )
        ax.set_title(f"{family}: final test accuracy (%), {_seeds_note(members)}\n{subtitle}", fontsize=10)
        fig.colorbar(image, ax=ax, label="final test accuracy (%)")
        written.append(_save(fig, out / f"heatmap-{family}.png"))
    return written


# ---------------------------------------------------------------------------------------------------------------
# 3-5. Sparse fine-tuning: sparsity, calibration rounds, rules.


def _facets_by_partition(members: Sequence[Group]) -> dict[str, list[Group]]:
    facets: dict[str, list[Group]] = {}
    for g in members:
        facets.setdefault(partition_label(g.config), []).append(g)
    return dict(sorted(facets.items(), key=lambda kv: partition_order(kv[0])))


def _dense_line(ax: plt.Axes, groups: Sequence[Group], like: Group) -> None:
    dense = _dense_reference(groups, like)
    if dense is None:
        return
    mean, std, _ = dense.stat("final_test_acc")
    if mean is None:
        return
    ax.axhline(100 * mean, color="black", ls="--", lw=1.2, label="dense FedAvg (no mask)")
    if std:
        ax.axhspan(100 * (mean - std), 100 * (mean + std), color="black", alpha=0.08, lw=0)


def accuracy_vs_sparsity(groups: Sequence[Group], out: Path) -> list[Path]:
    """``accuracy-vs-sparsity.png``: final test accuracy vs the frozen fraction, a line per rule (and R')."""
    editing = _editing(groups)
    if len({g.config.get("sparsity") for g in editing}) < 2:
        return []
    facets = _facets_by_partition(editing)
    fig, axes = plt.subplots(1, len(facets), figsize=(5.2 * len(facets), 4.3), squeeze=False, constrained_layout=True)
    for ax, (part, members) in zip(axes[0], facets.items(), strict=True):
        lines: dict[tuple[str, int], list[Group]] = {}
        for g in members:
            rounds = g.config.get("calibration-rounds") if g.config.get("mask-rule", "").endswith("sensitive") else 0
            lines.setdefault((g.config.get("mask-rule"), rounds), []).append(g)
        r_values = sorted({r for _, r in lines if r})
        shades = {r: 0.35 + 0.65 * i / (len(r_values) - 1) for i, r in enumerate(r_values)} if len(r_values) > 1 else {}
        for (rule, rounds), line in sorted(lines.items()):
            # one point per sparsity: the same configuration may come from two families (e.g. sparse and rules)
            line = list({g.config.get("sparsity"): g for g in reversed(line)}.values())
            line.sort(key=lambda g: g.config.get("sparsity"))
            xs, ys, es = _points(((100 * g.config["sparsity"], g.stat("final_test_acc")) for g in line), 100)
            label = rule + (f", R' = {rounds}" if len(r_values) > 1 and rounds else "")
            ax.errorbar(
                xs,
                ys,
                yerr=es,
                marker="o",
                ms=4,
                capsize=3,
                color=RULE_COLORS.get(rule),
                alpha=shades.get(rounds, 1.0),
                label=label,
            )
        _dense_line(ax, groups, members[0])
        _style(ax, "sparsity: frozen fraction of the backbone (%)", "final test accuracy (%)", part)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Sparse fine-tuning: accuracy vs sparsity ({_seeds_note(editing)})", fontsize=11)
    return [_save(fig, out / "accuracy-vs-sparsity.png")]


def accuracy_vs_calibration_rounds(groups: Sequence[Group], out: Path) -> list[Path]:
    """``accuracy-vs-calibration-rounds.png``: final test accuracy vs R', a line per (rule, sparsity)."""
    editing = [g for g in _editing(groups) if g.config.get("mask-rule", "").endswith("sensitive")]
    if len({g.config.get("calibration-rounds") for g in editing}) < 2:
        return []
    facets = _facets_by_partition(editing)
    fig, axes = plt.subplots(1, len(facets), figsize=(5.2 * len(facets), 4.3), squeeze=False, constrained_layout=True)
    for ax, (part, members) in zip(axes[0], facets.items(), strict=True):
        lines: dict[tuple[str, float], list[Group]] = {}
        for g in members:
            lines.setdefault((g.config.get("mask-rule"), g.config.get("sparsity")), []).append(g)
        colors = _colors(len(lines))
        for ((rule, sparsity), line), color in zip(sorted(lines.items()), colors, strict=True):
            line.sort(key=lambda g: g.config.get("calibration-rounds"))
            xs, ys, es = _points(((g.config["calibration-rounds"], g.stat("final_test_acc")) for g in line), 100)
            ax.errorbar(
                xs,
                ys,
                yerr=es,
                marker="o",
                ms=4,
                capsize=3,
                color=color,
                label=f"{rule}, sparsity {100 * sparsity:g} %",
            )
        ax.set_xscale("log", base=2)
        ticks = sorted({g.config["calibration-rounds"] for g in members})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        _style(ax, "calibration rounds R'", "final test accuracy (%)", part)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Mask calibration: accuracy vs calibration rounds ({_seeds_note(editing)})", fontsize=11)
    return [_save(fig, out / "accuracy-vs-calibration-rounds.png")]


def rules_comparison(groups: Sequence[Group], out: Path) -> list[Path]:
    """``rules.png``: the calibration rules side by side at equal sparsity, grouped by partition."""
    editing = _editing(groups)
    rules_at: dict[float, set[str]] = {}
    for g in editing:
        rules_at.setdefault(g.config.get("sparsity"), set()).add(g.config.get("mask-rule"))
    candidates = [s for s, rules in rules_at.items() if len(rules) > 1]
    if not candidates:
        return []
    sparsity = max(candidates, key=lambda s: len(rules_at[s]))
    chosen = [g for g in editing if g.config.get("sparsity") == sparsity]
    r_common = _most_common([g.config.get("calibration-rounds") for g in chosen])
    chosen = [
        g
        for g in chosen
        if not g.config.get("mask-rule", "").endswith("sensitive") or g.config.get("calibration-rounds") == r_common
    ]
    facets = _facets_by_partition(chosen)
    rules = [r for r in RULE_COLORS if any(g.config.get("mask-rule") == r for g in chosen)]
    bars = [*rules, "none"]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(facets) + 3), 4.5), constrained_layout=True)
    for j, rule in enumerate(bars):
        for i, members in enumerate(facets.values()):
            g = next((m for m in members if m.config.get("mask-rule") == rule), None)
            if rule == "none":
                g = _dense_reference(groups, members[0])
            if g is None:
                continue
            mean, std, _ = g.stat("final_test_acc")
            if mean is None:
                continue
            x = i + (j - (len(bars) - 1) / 2) * width
            dense = rule == "none"
            ax.bar(
                x,
                100 * mean,
                width * 0.95,
                yerr=None if std is None else 100 * std,
                capsize=2,
                color="white" if dense else RULE_COLORS[rule],
                edgecolor="black" if dense else None,
                hatch="//" if dense else None,
                label="dense FedAvg (no mask)" if dense else rule,
            )
            top = 100 * (mean + (std or 0))
            ax.text(x, top + 0.5, f"{100 * mean:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(facets)), list(facets))
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(
        unique.values(),
        unique.keys(),
        fontsize=8,
        frameon=False,
        ncol=3,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
    )
    _style(
        ax,
        "",
        "final test accuracy (%)",
        f"Calibration rules at sparsity {100 * sparsity:g} % (frozen fraction), R' = {r_common} for the "
        f"sensitivity rules\n{_seeds_note(chosen)}",
    )
    ax.set_xlabel("client data")
    return [_save(fig, out / "rules.png")]


# ---------------------------------------------------------------------------------------------------------------
# 6. Per-layer mask density.

_KINDS = (
    ("attn.qkv", "attention qkv"),
    ("attn.proj", "attention proj"),
    ("mlp.fc1", "MLP fc1"),
    ("mlp.fc2", "MLP fc2"),
    ("norm", "LayerNorms"),
)


def _read_density(path: Path) -> dict[str, tuple[int, int]]:
    with open(path) as f:
        return {r["tensor"]: (int(r["trainable"]), int(r["entries"])) for r in csv.DictReader(f)}


def _by_block(density: dict[str, tuple[int, int]]) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """(kind → block → trainable fraction, other tensor group → trainable fraction)."""
    blocks: dict[str, dict[int, list[int]]] = {}
    other: dict[str, list[int]] = {}
    for name, (kept, total) in density.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", name)
        if m:
            kind = next((k for k, _ in _KINDS if k in m.group(2)), "norm" if "norm" in m.group(2) else "other")
            entry = blocks.setdefault(kind, {}).setdefault(int(m.group(1)), [0, 0])
        else:
            group = (
                "patch embedding"
                if "patch_embed" in name
                else "cls + position"
                if "token" in name or "pos_embed" in name
                else "final norm"
            )
            entry = other.setdefault(group, [0, 0])
        entry[0] += kept
        entry[1] += total
    return (
        {k: {b: v[0] / v[1] for b, v in sorted(d.items())} for k, d in blocks.items()},
        {k: v[0] / v[1] for k, v in other.items()},
    )


def mask_density_per_layer(groups: Sequence[Group], out: Path) -> list[Path]:
    """Trainable fraction per transformer block and kind of weight, averaged over seeds, for the most common
    partition: ``mask-density-rules.png`` (a line per rule at one sparsity) and ``mask-density-sparsity.png`` (a
    line per sparsity of the most common rule), each when there is more than one line to draw."""
    editing = [g for g in _editing(groups) if all((r.path / "mask_density.csv").is_file() for r in g.runs)]
    if not editing:
        return []
    part = _most_common([partition_label(g.config) for g in editing])
    chosen = [g for g in editing if partition_label(g.config) == part]
    r_common = _most_common([g.config.get("calibration-rounds") for g in chosen])
    chosen = [g for g in chosen if not _calibrates(g) or g.config.get("calibration-rounds") == r_common]
    # one configuration per (rule, sparsity): the same one may come from two families
    unique = list({(g.config.get("mask-rule"), g.config.get("sparsity")): g for g in reversed(chosen)}.values())
    written = []
    s_common = _most_common([g.config.get("sparsity") for g in unique])
    by_rule = [g for g in unique if g.config.get("sparsity") == s_common]
    if len(by_rule) > 1:
        by_rule.sort(key=lambda g: list(RULE_COLORS).index(g.config.get("mask-rule")))
        colors = [RULE_COLORS[g.config["mask-rule"]] for g in by_rule]
        labels = [g.config["mask-rule"] for g in by_rule]
        title = f"Per-layer mask density by rule, sparsity {100 * s_common:g} % ({part}, R' = {r_common})"
        written.append(_density_figure(by_rule, colors, labels, title, out / "mask-density-rules.png"))
    rule_common = _most_common([g.config.get("mask-rule") for g in unique])
    by_sparsity = sorted(
        (g for g in unique if g.config.get("mask-rule") == rule_common), key=lambda g: g.config["sparsity"]
    )
    if len(by_sparsity) > 1:
        colors = _colors(len(by_sparsity))
        labels = [f"sparsity {100 * g.config['sparsity']:g} %" for g in by_sparsity]
        rounds = f", R' = {r_common}" if rule_common.endswith("sensitive") else ""
        title = f"Per-layer mask density of {rule_common} masks by sparsity ({part}{rounds})"
        written.append(_density_figure(by_sparsity, colors, labels, title, out / "mask-density-sparsity.png"))
    return written


def _calibrates(group: Group) -> bool:
    return str(group.config.get("mask-rule", "")).endswith("sensitive")


def _density_figure(
    chosen: Sequence[Group], colors: Sequence[Any], labels: Sequence[str], title: str, path: Path
) -> Path:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    flat = axes.ravel()
    width = 0.8 / len(chosen)
    for idx, (g, color, label) in enumerate(zip(chosen, colors, labels, strict=True)):
        per_seed = [_by_block(_read_density(r.path / "mask_density.csv")) for r in g.runs]
        overall = 100 * (1 - g.config["sparsity"])
        for ax, (kind, kind_title) in zip(flat[:5], _KINDS, strict=True):
            series = [s[0].get(kind, {}) for s in per_seed]
            blocks = sorted(set().union(*series))
            if not blocks:
                continue
            values = np.array([[s.get(b, np.nan) for b in blocks] for s in series]) * 100
            std = np.nanstd(values, 0, ddof=1) if len(series) > 1 else None
            ax.errorbar(blocks, np.nanmean(values, 0), yerr=std, marker="o", ms=3, capsize=2, color=color, label=label)
            ax.axhline(overall, color=color, ls=":", lw=0.8)
            _style(ax, "transformer block", "trainable entries (%)", kind_title, integer_x=True)
        others = sorted(set().union(*(s[1] for s in per_seed)))
        values = np.array([[s[1].get(o, np.nan) for o in others] for s in per_seed]) * 100
        x = np.arange(len(others)) + (idx - (len(chosen) - 1) / 2) * width
        flat[5].bar(x, np.nanmean(values, 0), width, color=color, label=label)
        flat[5].set_xticks(range(len(others)), others, fontsize=8)
    _style(flat[5], "", "trainable entries (%)", "outside the blocks")
    handles, names = flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{title}\ndotted: the overall density 1 − sparsity; {_seeds_note(chosen)}", fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# 7. Client drift.


def client_drift(groups: Sequence[Group], out: Path) -> list[Path]:
    """``drift-<family>.png``: drift per round, a panel per J with a line per partition, and the mean drift
    over training vs the partition, a line per J (why large J hurts under non-iid data)."""
    written = []
    families: dict[str, list[Group]] = {}
    for g in groups:
        if g.kind == "federated" and any(r.get("drift") is not None for run in g.runs for r in run.train_rows()):
            families.setdefault(g.family, []).append(g)
    for family, members in families.items():
        if len(members) < 2:
            continue
        steps = sorted({g.config.get("local-steps") for g in members})
        parts = sorted({partition_label(g.config) for g in members}, key=partition_order)
        fig, axes = plt.subplots(
            1, len(steps) + 1, figsize=(4.3 * (len(steps) + 1), 4.2), squeeze=False, constrained_layout=True
        )
        for ax in axes[0][1:-1]:
            ax.sharey(axes[0][0])  # one drift scale for every J
        colors = dict(zip(parts, _colors(len(parts)), strict=True))
        extra_keys = [k for k in varied_settings(members) if k not in ("partition", "local-steps", "num-server-rounds")]
        for ax, j in zip(axes[0], steps, strict=False):
            for g in members:
                if g.config.get("local-steps") != j:
                    continue
                x, mean, std = _curve(g, "drift", lambda run, row: row["round"], lambda run: run.train_rows())
                label = partition_label(g.config) + (f", {settings_text(g, extra_keys)}" if extra_keys else "")
                _band(ax, x, mean, std, color=colors[partition_label(g.config)], label=label)
            ax.set_yscale("log")
            _style(ax, "communication round", DRIFT_LABEL if j == steps[0] else "", f"J = {j} local steps", True)
            ax.legend(fontsize=7, frameon=False)
        ax = axes[0][-1]
        for j, color in zip(steps, _colors(len(steps)), strict=True):
            at_j = [m for m in members if m.config.get("local-steps") == j]
            xs, ys, es = _points(
                (i, g.stat("mean_drift"))
                for i, part in enumerate(parts)
                if (g := next((m for m in at_j if partition_label(m.config) == part), None)) is not None
            )
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=color, label=f"J = {j}")
        ax.set_xticks(range(len(parts)), parts)
        ax.set_yscale("log")
        _style(ax, "client data", "mean drift over training rounds", "mean drift vs heterogeneity")
        ax.legend(fontsize=8, frameon=False)
        fig.suptitle(f"{family}: client-update drift per round ({_seeds_note(members)})", fontsize=11)
        written.append(_save(fig, out / f"drift-{family}.png"))
    return written


# ---------------------------------------------------------------------------------------------------------------
# 8. Communication.


def communication(groups: Sequence[Group], out: Path) -> list[Path]:
    """``communication.png``: validation accuracy vs cumulative bytes uploaded by clients (all phases: head,
    calibration scores, training), dense FedAvg against sparse fine-tuning; ★ = final test accuracy."""
    editing = _editing(groups)
    if not editing:
        return []
    facets = _facets_by_partition(editing)
    fig, axes = plt.subplots(1, len(facets), figsize=(5.6 * len(facets), 4.5), squeeze=False, constrained_layout=True)
    for ax, (part, members) in zip(axes[0], facets.items(), strict=True):
        r_common = _most_common([g.config.get("calibration-rounds") for g in members])
        members = [
            g
            for g in members
            if not g.config.get("mask-rule", "").endswith("sensitive") or g.config.get("calibration-rounds") == r_common
        ]
        members = sorted(members, key=lambda g: (g.config.get("mask-rule"), g.config.get("sparsity")))[:MAX_LINES]
        dense = _dense_reference(groups, members[0])
        lines = ([dense] if dense else []) + members
        sparsities = sorted({g.config.get("sparsity") for g in members})
        for g in lines:
            rule = g.config.get("mask-rule")
            x, mean, std = _cumulative_accuracy(g)
            if not len(x):
                continue
            label = "dense FedAvg" if rule == "none" else f"{rule}, sparsity {100 * g.config.get('sparsity'):g} %"
            shade = (
                1.0
                if rule == "none" or len(sparsities) < 2
                else 0.4 + 0.6 * sparsities.index(g.config.get("sparsity")) / (len(sparsities) - 1)
            )
            _band(
                ax,
                x,
                mean,
                std,
                100.0,
                color=RULE_COLORS.get(rule),
                alpha=shade,
                label=label,
                lw=2.0 if rule == "none" else 1.3,
            )
            final, fstd, _ = g.stat("final_test_acc")
            total, _, _ = g.stat("uploaded_gb")
            if final is not None and total is not None:
                ax.errorbar(
                    [total],
                    [100 * final],
                    yerr=None if fstd is None else [100 * fstd],
                    fmt="*",
                    ms=10,
                    color=RULE_COLORS.get(rule),
                    alpha=shade,
                    mec="white",
                    mew=0.5,
                    capsize=3,
                )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        _style(ax, "cumulative upload by all clients (GB, log scale)", "validation accuracy (%)", part)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Communication: accuracy vs uploaded bytes (★ = final test; {_seeds_note(editing)})", fontsize=11)
    return [_save(fig, out / "communication.png")]


def _cumulative_accuracy(group: Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation accuracy at each evaluated training round against the bytes uploaded up to it (mean over
    seeds, by round: seeds send (nearly) the same bytes per round)."""
    gb: dict[int, list[float]] = {}
    for run in group.runs:
        total = 0.0
        for row in run.rows:
            total += (row.get("bytes_up") or 0) / 1e9
            if row.get("phase") == "train" and row.get("val_acc") is not None:
                gb.setdefault(row["round"], []).append(total)
    rounds, mean, std = _curve(group, "val_acc", lambda run, row: row["round"], lambda run: run.train_rows())
    x = np.array([float(np.mean(gb[int(r)])) for r in rounds])
    return x, mean, std


# ---------------------------------------------------------------------------------------------------------------
# 9. Mask agreement.


def mask_agreement(groups: Sequence[Group], out: Path) -> list[Path]:
    """``mask-agreement.png``: Jaccard of single-client masks with the aggregated mask vs the partition (and
    the mean Jaccard between clients, and the level of independent random masks)."""
    with_records = [g for g in groups if any(r.agreement for r in g.runs)]
    if not with_records:
        return []
    lines: dict[tuple[str, float, int], list[Group]] = {}
    for g in with_records:
        key = (g.config.get("mask-rule"), g.config.get("sparsity"), g.config.get("calibration-rounds"))
        lines.setdefault(key, []).append(g)
    parts = sorted({partition_label(g.config) for g in with_records}, key=partition_order)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(parts) + 3), 4.5), constrained_layout=True)
    chance = []
    for (rule, sparsity, rounds), members in sorted(lines.items()):
        color = RULE_COLORS.get(rule)
        for metric, style, what in (
            ("mean_jaccard", "-", "client vs aggregated mask"),
            ("pairwise_jaccard", ":", "client vs client"),
        ):
            xs, ys, es = _points(
                (i, mean_std([r.agreement.get(metric) for r in g.runs if r.agreement]))
                for i, part in enumerate(parts)
                if (g := next((m for m in members if partition_label(m.config) == part), None)) is not None
            )
            ax.errorbar(
                xs,
                ys,
                yerr=es,
                ls=style,
                marker="o",
                capsize=3,
                color=color,
                label=f"{what} ({rule}, sparsity {100 * sparsity:g} %, R' = {rounds})",
            )
        chance += [r.agreement["chance_jaccard"] for g in members for r in g.runs if r.agreement]
    if chance:
        ax.axhline(float(np.mean(chance)), color="gray", ls="--", lw=1, label="independent random masks")
    ax.set_xticks(range(len(parts)), parts)
    ax.set_ylim(0, 1.02)
    _style(
        ax,
        "client data",
        "Jaccard index |A ∩ B| / |A ∪ B|",
        f"Do single clients find the federated mask? ({_seeds_note(with_records)})",
    )
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return [_save(fig, out / "mask-agreement.png")]


def plot_client_agreement(record: dict[str, Any], out: Path) -> Path:
    """One run's analysis: Jaccard of each analysed client's mask with the aggregated mask."""
    rows = record["clients"]
    fig, ax = plt.subplots(figsize=(max(5.5, 0.35 * len(rows) + 2.5), 4.0), constrained_layout=True)
    values = [r["jaccard"] for r in rows]
    ax.bar(range(len(rows)), values, color=RULE_COLORS.get(record["mask_rule"], "#1f77b4"), width=0.7)
    if len(rows) <= 25:
        for i, v in enumerate(values):
            ax.text(i, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(record["chance_jaccard"], color="gray", ls="--", lw=1, label="independent random masks")
    if record.get("pairwise_jaccard") is not None:
        ax.axhline(record["pairwise_jaccard"], color="black", ls=":", lw=1, label="mean client vs client")
    ax.set_xticks(range(len(rows)), [str(r["client"]) for r in rows], fontsize=7)
    ax.set_ylim(0, 1.05)
    part = "iid" if record["partitioning"] == "iid" else f"Nc = {record['classes_per_client']}"
    _style(
        ax,
        "client (partition id): its mask calibrated on its own shard alone",
        "Jaccard with the aggregated mask",
        f"{record['run']}: {record['mask_rule']}, sparsity {100 * record['sparsity']:g} %, {part}, "
        f"R' = {record['calibration_rounds']}",
    )
    fig.legend(fontsize=8, frameon=False, loc="outside lower center", ncol=2)
    return _save(fig, out)
