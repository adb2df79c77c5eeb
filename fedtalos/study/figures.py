"""The study's figures (mean ± std over seeds): :func:`study_figures` draws every one the configurations support.

Each function draws one kind of figure from whatever configurations fit it and returns the PNG paths it wrote
(none when nothing fits). This module: learning curves per family, the Nc × J heat-map, client drift, accuracy vs
uploaded bytes; :mod:`fedtalos.study.mask_figures`: accuracy vs sparsity and vs calibration rounds, the calibration
rules side by side, per-layer mask density and the mask agreement across clients. Bands and error bars are ± one
sample standard deviation over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

from fedtalos.study.figure_common import (
    MAX_LINES,
    RULE_COLORS,
    band,
    by_partition,
    calibrates,
    dense_reference,
    editing_groups,
    error_points,
    most_common,
    palette,
    seed_curve,
    seeds_note,
)
from fedtalos.study.mask_figures import (
    accuracy_vs_calibration_rounds,
    accuracy_vs_sparsity,
    mask_agreement,
    mask_density_per_layer,
    rules_comparison,
)
from fedtalos.study.results import Group, partition_order, settings_text, varied_settings
from fedtalos.tracking.identity import partition_label
from fedtalos.tracking.plots import save_figure, style_axes

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
            colors = palette(len(facet_groups))
            for g, color in zip(facet_groups, colors, strict=True):
                label = settings_text(g, line_keys) or g.label
                x, mean, std = seed_curve(g, f"{split}_acc", x_of, lambda run: run.train_rows())
                if len(x):
                    band(ax_acc, x, mean, std, 100.0, color=color, label=label)
                x, mean, std = seed_curve(g, f"{split}_loss", x_of, lambda run: run.train_rows())
                if len(x):
                    band(ax_loss, x, mean, std, 1.0, color=color, label=label)
                if split == "val":
                    x, mean, std = seed_curve(g, "test_acc", x_of, lambda run: run.train_rows())
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
            style_axes(ax_acc, "" if facet_key else xlabel, f"{split} top-1 accuracy (%)", title, integer_x=True)
            style_axes(ax_loss, xlabel, f"{split} cross-entropy loss (nats)", integer_x=True)
            if facet_key:
                ax_acc.legend(fontsize=7, frameon=False, loc="best")
        if not facet_key:
            handles, labels = pairs[0][0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
        note = "; ★ = final test accuracy" if split == "val" else ""
        fig.suptitle(f"{family}: learning curves ({seeds_note(members)}{note})", fontsize=11)
        written.append(save_figure(fig, out / f"curves-{family}.png"))
    return written


SETTING_NAMES_TITLE = {"partition": "", "local-steps": "J =", "lr-schedule": "schedule:", "mask-rule": "rule:"}


# ---------------------------------------------------------------------------------------------------------------
# Nc × J heat-map.


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


def _j_row(g: Group) -> tuple[int, str]:
    """(J, step-0 head) of a dense configuration: the brief's frozen ridge head is an arm of its own."""
    return g.config.get("local-steps"), g.config.get("head", "train")


def nc_j_heatmap(groups: Sequence[Group], out: Path) -> list[Path]:
    """``heatmap-<family>.png``: final test accuracy for every (partition, J), mean with ± std in each cell."""
    written = []
    for family, members in _partition_j_families(groups).items():
        parts = sorted({partition_label(g.config) for g in members}, key=partition_order)
        steps = sorted({_j_row(g) for g in members}, key=lambda row: (row[1] != "train", row))  # (J, head)
        grid = np.full((len(steps), len(parts)), np.nan)
        text = [["—"] * len(parts) for _ in steps]
        for g in members:
            i, j = steps.index(_j_row(g)), parts.index(partition_label(g.config))
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
        ax.set_yticks(range(len(steps)), [f"J = {s}" + ("" if h == "train" else f", {h} head") for s, h in steps])
        ax.set_xlabel("client data: classes per client (Nc), or iid")
        ax.set_ylabel("local steps per round (J)")
        rounds = {g.config.get("local-steps"): g.config.get("num-server-rounds") for g in members}
        budget = {s * r for s, r in rounds.items()}
        subtitle = (
            f"J × rounds = {budget.pop()}"
            if len(budget) == 1
            else "rounds: " + ", ".join(f"J={s}: {r}" for s, r in sorted(rounds.items()))
        )
        ax.set_title(f"{family}: final test accuracy (%), {seeds_note(members)}\n{subtitle}", fontsize=10)
        fig.colorbar(image, ax=ax, label="final test accuracy (%)")
        written.append(save_figure(fig, out / f"heatmap-{family}.png"))
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
        for ax, j in zip(axes[0], steps, strict=False):
            for g in members:
                if g.config.get("local-steps") != j:
                    continue
                x, mean, std = seed_curve(g, "drift", lambda run, row: row["round"], lambda run: run.train_rows())
                label = partition_label(g.config) + (f", {settings_text(g, extra_keys)}" if extra_keys else "")
                band(ax, x, mean, std, color=colors[partition_label(g.config)], label=label)
            ax.set_yscale("log")
            style_axes(ax, "communication round", DRIFT_LABEL if j == steps[0] else "", f"J = {j} local steps", True)
            ax.legend(fontsize=7, frameon=False)
        ax = axes[0][-1]
        arms = sorted({_j_row(g) for g in members}, key=lambda row: (row[1] != "train", row))
        for (j, head), color in zip(arms, palette(len(arms)), strict=True):
            at_j = [m for m in members if _j_row(m) == (j, head)]
            xs, ys, es = error_points(
                (i, g.stat("mean_drift"))
                for i, part in enumerate(parts)
                if (g := next((m for m in at_j if partition_label(m.config) == part), None)) is not None
            )
            label = f"J = {j}" + ("" if head == "train" else f", {head} head")
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=color, label=label)
        ax.set_xticks(range(len(parts)), parts)
        ax.set_yscale("log")
        style_axes(ax, "client data", "mean drift over training rounds", "mean drift vs heterogeneity")
        ax.legend(fontsize=8, frameon=False)
        fig.suptitle(f"{family}: client-update drift per round ({seeds_note(members)})", fontsize=11)
        written.append(save_figure(fig, out / f"drift-{family}.png"))
    return written


# ---------------------------------------------------------------------------------------------------------------
# Communication.


def communication(groups: Sequence[Group], out: Path) -> list[Path]:
    """``communication.png``: validation accuracy vs cumulative bytes uploaded by clients (all phases: head,
    calibration scores, training), dense FedAvg against sparse fine-tuning; ★ = final test accuracy."""
    editing = editing_groups(groups)
    if not editing:
        return []
    facets = by_partition(editing)
    fig, axes = plt.subplots(1, len(facets), figsize=(5.6 * len(facets), 4.5), squeeze=False, constrained_layout=True)
    for ax, (part, members) in zip(axes[0], facets.items(), strict=True):
        r_common = most_common([g.config.get("calibration-rounds") for g in members])
        members = [g for g in members if not calibrates(g) or g.config.get("calibration-rounds") == r_common]
        members = sorted(members, key=lambda g: (g.config.get("mask-rule"), g.config.get("sparsity")))[:MAX_LINES]
        dense = dense_reference(groups, members[0])
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
            band(
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
        style_axes(ax, "cumulative upload by all clients (GB, log scale)", "validation accuracy (%)", part)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Communication: accuracy vs uploaded bytes (★ = final test; {seeds_note(editing)})", fontsize=11)
    return [save_figure(fig, out / "communication.png")]


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
    rounds, mean, std = seed_curve(group, "val_acc", lambda run, row: row["round"], lambda run: run.train_rows())
    x = np.array([float(np.mean(gb[int(r)])) for r in rounds])
    return x, mean, std
