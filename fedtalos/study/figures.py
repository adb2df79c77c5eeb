"""The study's figures (mean ± std over seeds): :func:`study_figures` draws every one the configurations support.

Each function draws one kind of figure from whatever configurations fit it and returns the PNG paths it wrote
(none when nothing fits). This module: learning curves per family, the Nc × J heat-map, client drift, accuracy vs
uploaded bytes; :mod:`fedtalos.study.mask_figures`: accuracy vs sparsity and vs calibration rounds, the calibration
rules side by side, per-layer mask density and the mask agreement across clients. Bands and error bars are ± one
sample standard deviation over seeds. Beside each PNG, a CSV of its points (:mod:`fedtalos.study.figure_data`);
which runs each figure takes: docs/figures.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

from fedtalos.study.figure_common import (
    MAX_LINES,
    RULE_COLORS,
    arm_text,
    arms,
    band,
    by_partition,
    controlled,
    dense_reference,
    editing_groups,
    most_common,
    one_per_point,
    palette,
    seeds_note,
)
from fedtalos.study.figure_data import Point, curve_points, group_point, save_with_data
from fedtalos.study.mask_figures import (
    accuracy_vs_calibration_rounds,
    accuracy_vs_sparsity,
    mask_agreement,
    mask_density_per_layer,
    rule_text,
    rules_comparison,
    scopes_vary,
)
from fedtalos.study.results import Group, RunData, partition_order, settings_text, varied_settings
from fedtalos.tracking.identity import partition_label
from fedtalos.tracking.plots import style_axes

LINE_STYLES = ("-", "--", ":", "-.")
DRIFT_LABEL = "client drift (weighted RMS distance of client\nupdates from their mean, per model weight)"


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
# Learning curves per family.


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
        points: list[Point] = []
        n_cols = len(facets)
        if facet_key:  # accuracy above loss, a column per facet
            fig, axes = plt.subplots(
                2, n_cols, figsize=(4.2 * n_cols, 7.2), squeeze=False, constrained_layout=True, sharex="col"
            )
            pairs = [(axes[0][c], axes[1][c]) for c in range(n_cols)]
        else:  # accuracy beside loss, the legend below
            fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.0), squeeze=False, constrained_layout=True)
            pairs = [(axes[0][0], axes[0][1])]
        for col, (facet, facet_groups) in enumerate(facets.items()):
            ax_acc, ax_loss = pairs[col]
            colors = palette(len(facet_groups))
            for g, color in zip(facet_groups, colors, strict=True):
                label = settings_text(g, line_keys) or g.label
                for ax, metric, scale in ((ax_acc, f"{split}_acc", 100.0), (ax_loss, f"{split}_loss", 1.0)):
                    curve = curve_points(facet, label, g, metric, x_of, train_rows, scale)
                    points += curve
                    if curve:
                        band(ax, curve, color=color, label=label)
                if split == "val":
                    tested = curve_points(facet, label, g, "test_acc", x_of, train_rows, 100.0)[-1:]
                    points += tested
                    for p in tested:
                        ax_acc.errorbar(
                            [p.x],
                            [p.value],
                            yerr=[p.std or 0],
                            fmt="*",
                            ms=10,
                            color=color,
                            capsize=3,
                            mec="white",
                            mew=0.5,
                        )
            title = f"{SETTING_NAMES_TITLE.get(facet_key, facet_key)} {facet}".strip() if facet_key else None
            style_axes(ax_acc, "" if facet_key else xlabel, f"{split} top-1 accuracy (%)", title, integer_x=True)
            style_axes(ax_loss, xlabel, f"{split} cross-entropy loss (nats)", integer_x=True)
            if facet_key:
                ax_acc.legend(fontsize=7, frameon=False, loc="best")
        if not facet_key:
            handles, labels = pairs[0][0].get_legend_handles_labels()
            # below the axes, so that they span the whole width (a column on the right leaves most of it empty)
            fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
        note = "; ★ = final test accuracy" if split == "val" else ""
        fig.suptitle(f"{family}: learning curves ({seeds_note(members)}{note})", fontsize=11)
        written.append(save_with_data(fig, out / f"curves-{family}.png", points))
    return written


def train_rows(run: RunData) -> list[dict[str, Any]]:
    return run.train_rows()


def _round_of(run: RunData, row: dict[str, Any]) -> float:
    return row["round"]


SETTING_NAMES_TITLE = {"partition": "", "local-steps": "J =", "lr-schedule": "schedule:", "mask-rule": "rule:"}


# ---------------------------------------------------------------------------------------------------------------
# Nc × J heat-map.


def _partition_j_families(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """Families of federated configurations without a calibration of their own (dense, or fine-tuning under a mask
    file) that vary both the partition and J."""
    families: dict[str, list[Group]] = {}
    for g in groups:
        if g.kind == "federated" and not g.run_config.editing:
            families.setdefault(g.family, []).append(g)
    return {
        f: m
        for f, m in families.items()
        if len({partition_label(g.config) for g in m}) > 1 and len({g.config.get("local-steps") for g in m}) > 1
    }


def _j_row(g: Group) -> tuple[int, str, str]:
    """(J, head, mask file) of a configuration: a frozen head or a mask file makes an arm of its own."""
    mask_file = g.mask_file_text() or Path(str(g.config.get("mask-path", ""))).name
    return g.config.get("local-steps"), g.head, mask_file


def _j_row_text(row: tuple[int, str, str]) -> str:
    j, head, mask = row
    return f"J = {j}" + ("" if head == "train" else f", {head} head") + (f"\n{mask}" if mask else "")


def _fine_tuning_text(members: Sequence[Group]) -> str:
    """What the family's runs fine-tune, for the title (:attr:`Group.sparse`)."""
    kinds = {g.sparse for g in members}
    if kinds == {False}:
        return "dense fine-tuning"
    return "sparse fine-tuning under a mask file" if kinds == {True} else "dense and sparse (mask file) fine-tuning"


# The heat-map's own axes (partition, J) and its rows (J, head, mask file); every other setting that varies makes an
# arm of its own (:func:`arms`), a panel apart. The rounds scale with J (J × rounds fixed).
HEATMAP_AXES = ("local-steps", "num-server-rounds", "head", "mask-path")


def nc_j_heatmap(groups: Sequence[Group], out: Path) -> list[Path]:
    """``heatmap-<family>.png``: final test accuracy for every (partition, J), mean with ± std in each cell; a row
    per J and head (and mask file), a panel per arm (e.g. the local-momentum control: momentum 0 at its own lr), one
    colour scale for all; the title says whether the runs fine-tune densely or under a mask file."""
    written = []
    for family, members in _partition_j_families(groups).items():
        keys, arm_of = arms(members, HEATMAP_AXES)
        panels: dict[tuple, list[Group]] = {}
        for g in members:
            panels.setdefault(arm_of[id(g)], []).append(g)
        ordered = sorted(panels.values(), key=lambda m: (-len(m), arm_text(m[0], keys)))
        parts = sorted({partition_label(g.config) for g in members}, key=partition_order)
        points: list[Point] = []
        grids, texts, rows_of = [], [], []
        for panel_groups in ordered:
            panel = arm_text(panel_groups[0], keys)
            steps = sorted({_j_row(g) for g in panel_groups}, key=lambda row: (row[1] != "train", row))
            grid = np.full((len(steps), len(parts)), np.nan)
            text = [["—"] * len(parts) for _ in steps]
            cells = one_per_point(panel_groups, lambda g: (_j_row(g), partition_label(g.config)))
            for (row, part), (g, also) in cells.items():
                i, j = steps.index(row), parts.index(part)
                series = _j_row_text(row).replace("\n", ", ")
                point = group_point(panel, series, part, g, "final_test_acc", 100.0, also=also)
                points.append(point)
                if point.value is not None:
                    grid[i, j] = point.value
                    text[i][j] = f"{point.value:.1f}" + (f"\n± {point.std:.1f}" if point.std is not None else "")
            grids.append(grid)
            texts.append(text)
            rows_of.append(steps)
        finite = np.concatenate([g[np.isfinite(g)] for g in grids])
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        height = max(len(steps) for steps in rows_of)
        fig, axes = plt.subplots(
            1,
            len(ordered),
            figsize=(len(ordered) * (1.5 * len(parts) + 2.5) + 1.5, 1.0 * height + 2.4),
            squeeze=False,
            constrained_layout=True,
        )
        for ax, panel_groups, grid, text, steps in zip(axes[0], ordered, grids, texts, rows_of, strict=True):
            image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", vmin=low, vmax=high)
            for i in range(len(steps)):
                for j in range(len(parts)):
                    dark = np.isfinite(grid[i, j]) and grid[i, j] < (low + high) / 2
                    ax.text(j, i, text[i][j], ha="center", va="center", fontsize=9, color="white" if dark else "black")
            ax.set_xticks(range(len(parts)), [p.replace("Nc=", "Nc = ") for p in parts])
            ax.set_yticks(range(len(steps)), [_j_row_text(row) for row in steps], fontsize=8)
            ax.set_xlabel("client data: classes per client (Nc), or iid")
            ax.set_ylabel("local steps per round (J)")
            rounds = {g.config.get("local-steps"): g.config.get("num-server-rounds") for g in panel_groups}
            budget = {s * r for s, r in rounds.items()}
            subtitle = (
                f"J × rounds = {budget.pop()}"
                if len(budget) == 1
                else "rounds: " + ", ".join(f"J={s}: {r}" for s, r in sorted(rounds.items()))
            )
            title = arm_text(panel_groups[0], keys)
            ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=9)
        fig.colorbar(image, ax=axes[0].tolist(), label="final test accuracy (%)")
        fig.suptitle(
            f"{family}: final test accuracy (%), {_fine_tuning_text(members)}; {seeds_note(members)}", fontsize=10
        )
        written.append(save_with_data(fig, out / f"heatmap-{family}.png", points))
    return written


# ---------------------------------------------------------------------------------------------------------------
# Client drift.


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
        colors = dict(zip(parts, palette(len(parts)), strict=True))
        extra_keys = [k for k in varied_settings(members) if k not in ("partition", "local-steps", "num-server-rounds")]
        # an arm (e.g. the local-momentum control) and a frozen head each get a line style: never one line for two
        keys, arm_of = arms(members, HEATMAP_AXES)
        size = Counter(arm_of.values())
        kinds = sorted({(arm_of[id(g)], g.head) for g in members}, key=lambda k: (k[1] != "train", -size[k[0]], k))
        styles = {kind: LINE_STYLES[i % len(LINE_STYLES)] for i, kind in enumerate(kinds)}
        points: list[Point] = []
        for ax, j in zip(axes[0], steps, strict=False):
            for g in members:
                if g.config.get("local-steps") != j:
                    continue
                label = partition_label(g.config) + (f", {settings_text(g, extra_keys)}" if extra_keys else "")
                curve = curve_points(f"J = {j}", label, g, "drift", _round_of, train_rows)
                points += curve
                style = styles[(arm_of[id(g)], g.head)]
                band(ax, curve, color=colors[partition_label(g.config)], ls=style, label=label)
            ax.set_yscale("log")
            style_axes(ax, "communication round", DRIFT_LABEL if j == steps[0] else "", f"J = {j} local steps", True)
            ax.legend(fontsize=7, frameon=False)
        ax = axes[0][-1]
        series = sorted(
            {(_j_row(g), arm_of[id(g)]) for g in members},
            key=lambda s: (-size[s[1]], s[0][1] != "train", s),
        )
        cells = one_per_point(members, lambda g, arm_of=arm_of: (_j_row(g), arm_of[id(g)], partition_label(g.config)))
        for (row, arm), color in zip(series, palette(len(series)), strict=True):
            example = next(g for g in members if arm_of[id(g)] == arm)
            label = ", ".join(t for t in (_j_row_text(row).replace("\n", ", "), settings_text(example, keys)) if t)
            drawn = [
                group_point("mean drift vs heterogeneity", label, part, g, "mean_drift", also=also)
                for part in parts
                if (row, arm, part) in cells
                for g, also in [cells[(row, arm, part)]]
            ]
            points += drawn
            shown = [p for p in drawn if p.value is not None]
            ax.errorbar(
                [parts.index(p.x) for p in shown],
                [p.value for p in shown],
                yerr=[p.std or 0 for p in shown],
                marker="o",
                capsize=3,
                color=color,
                ls=styles[(arm, row[1])],
                label=label,
            )
        ax.set_xticks(range(len(parts)), parts)
        ax.set_yscale("log")
        style_axes(ax, "client data", "mean drift over training rounds", "mean drift vs heterogeneity")
        ax.legend(fontsize=7, frameon=False)
        fig.suptitle(f"{family}: client-update drift per round ({seeds_note(members)})", fontsize=11)
        written.append(save_with_data(fig, out / f"drift-{family}.png", points))
    return written


# ---------------------------------------------------------------------------------------------------------------
# Communication.


def communication(groups: Sequence[Group], out: Path) -> list[Path]:
    """``communication.png``: validation accuracy vs cumulative bytes uploaded by clients (all phases: head,
    calibration scores, training), the matched dense reference against sparse fine-tuning (only configurations
    that differ in the rule and sparsity alone, :func:`controlled`); ★ = final test accuracy."""
    editing, _ = controlled(editing_groups(groups), ("mask-rule", "sparsity", "mask-scope"))
    if not editing:
        return []
    facets = by_partition(editing)
    points: list[Point] = []
    fig, axes = plt.subplots(1, len(facets), figsize=(5.6 * len(facets), 4.5), squeeze=False, constrained_layout=True)
    for ax, (part, members) in zip(axes[0], facets.items(), strict=True):
        dense = dense_reference(groups, members[0])
        picked = one_per_point(
            members, lambda g: (g.config.get("mask-rule"), g.config.get("mask-scope"), g.config.get("sparsity"))
        )
        # every rule and scope at the most common sparsity first, then the other sparsities; a per-tensor arm dashed
        common = most_common([g.config.get("sparsity") for g in members])
        order = {rule: i for i, rule in enumerate(RULE_COLORS)}
        keys = sorted(picked, key=lambda k: (k[2] != common, order.get(k[0], len(order)), k[1] != "global", k[2]))
        chosen = [picked[key] for key in keys][: 2 * MAX_LINES]
        sparsities = sorted({g.config.get("sparsity") for g, _ in chosen})
        scopes = scopes_vary([g for g, _ in chosen])
        lines = ([(dense, [])] if dense else []) + chosen
        for g, also in lines:
            sparse = g is not dense
            label = (
                f"{rule_text(g, scopes)}, sparsity {100 * g.config.get('sparsity'):g} %"
                if sparse
                else f"dense FedAvg, {g.head} head"
            )
            shade = (
                0.4 + 0.6 * sparsities.index(g.config.get("sparsity")) / (len(sparsities) - 1)
                if sparse and len(sparsities) > 1
                else 1.0
            )
            color = RULE_COLORS.get(g.config.get("mask-rule")) if sparse else RULE_COLORS["none"]
            curve = _cumulative_accuracy(part, label, g)
            points += curve
            if not curve:
                continue
            dashed = sparse and g.config.get("mask-scope") == "local"
            band(
                ax, curve, color=color, alpha=shade, label=label, lw=1.3 if sparse else 2.0, ls="--" if dashed else "-"
            )
            star = group_point(part, label, "", g, "final_test_acc", 100.0, dense if sparse else None, also)
            total, _, _ = g.stat("uploaded_gb")
            star.x = total
            points.append(star)
            if star.value is not None and total is not None:
                ax.errorbar(
                    [total],
                    [star.value],
                    yerr=None if star.std is None else [star.std],
                    fmt="*",
                    ms=10,
                    color=color,
                    alpha=shade,
                    mec="white",
                    mew=0.5,
                    capsize=3,
                )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        style_axes(ax, "cumulative upload by all clients (GB, log scale)", "validation accuracy (%)", part)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Communication: accuracy vs uploaded bytes (★ = final test; {seeds_note(editing)})", fontsize=11)
    return [save_with_data(fig, out / "communication.png", points)]


def _cumulative_accuracy(panel: str, series: str, group: Group) -> list[Point]:
    """Validation accuracy (%) at each evaluated training round, at the bytes uploaded up to it (GB; mean over
    seeds, by round: seeds send (nearly) the same bytes per round)."""
    gb: dict[int, list[float]] = {}
    for run in group.runs:
        total = 0.0
        for row in run.rows:
            total += (row.get("bytes_up") or 0) / 1e9
            if row.get("phase") == "train" and row.get("val_acc") is not None:
                gb.setdefault(row["round"], []).append(total)
    curve = curve_points(panel, series, group, "val_acc", _round_of, train_rows, 100.0)
    for point in curve:
        point.x = float(np.mean(gb[int(point.x)]))
    return curve
