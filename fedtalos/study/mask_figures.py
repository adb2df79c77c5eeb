"""The study's figures of sparse fine-tuning (mean ± std over seeds): accuracy vs sparsity and vs calibration
rounds, the calibration rules side by side, per-layer mask density, and the mask agreement across clients.

Per-layer densities come from each run's ``mask_density.csv`` (:func:`fedtalos.tracking.mask_report.write_mask_report`),
grouped by :func:`fedtalos.tracking.mask_report.layer_of`. :func:`plot_client_agreement` draws one run's analysis
(:mod:`fedtalos.study.agreement`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedtalos.study.figure_common import (
    CALIBRATION_DATA,
    RULE_COLORS,
    RULES_AXES,
    SPARSITY_AXES,
    by_partition,
    calibrates,
    controlled,
    dense_line,
    dense_reference,
    editing_groups,
    most_common,
    one_per_point,
    palette,
    seeds_note,
)
from fedtalos.study.figure_data import Point, group_point, save_with_data, values_point
from fedtalos.study.results import Group, partition_order
from fedtalos.tracking.identity import partition_label
from fedtalos.tracking.mask_report import DENSITY_FILE, layer_of, read_density_rows
from fedtalos.tracking.plots import save_figure, style_axes

# ---------------------------------------------------------------------------------------------------------------
# Accuracy vs sparsity, vs calibration rounds, and the rules side by side.


def rule_text(group: Group, scopes: bool) -> str:
    """The rule's name, with its threshold's scope when the figure shows both scopes."""
    rule = str(group.config.get("mask-rule"))
    return rule + (" (per tensor)" if group.config.get("mask-scope") == "local" else " (global)") if scopes else rule


def scopes_vary(members: Sequence[Group]) -> bool:
    """Whether the configurations use both mask scopes (a global threshold and one per tensor)."""
    return len({g.config.get("mask-scope", "global") for g in members}) > 1


def _calibration_data(group: Group) -> tuple[Any, ...]:
    return tuple(group.config.get(k) for k in CALIBRATION_DATA)


def _bar(group: Group) -> tuple[Any, ...]:
    """A bar of the rules figure: the rule, its scope and, for the rules that calibrate on client data, the share
    of clients that calibrate and the samples each scores (the data-free rules use none: one bar whatever they say)."""
    data = _calibration_data(group) if calibrates(group) else (None,) * len(CALIBRATION_DATA)
    return (group.config.get("mask-rule"), group.config.get("mask-scope", "global"), *data)


def _calibration_text(group: Group, common: tuple[Any, ...] | None) -> str:
    """``, calibrated on 100 % of clients × 6 samples`` for a sensitivity rule whose calibration data differ from
    the figure's most common; '' otherwise."""
    if not calibrates(group) or _calibration_data(group) == common:
        return ""
    fraction, samples = _calibration_data(group)
    return f", calibrated on {100 * fraction:g} % of clients × {samples} samples"


def _error_bars(ax: plt.Axes, points: Sequence[Point], **kwargs: Any) -> None:
    drawn = [p for p in points if p.value is not None]
    ax.errorbar([p.x for p in drawn], [p.value for p in drawn], yerr=[p.std or 0 for p in drawn], capsize=3, **kwargs)


def _dense_point(panel: str, dense: Group | None) -> list[Point]:
    if dense is None:
        return []
    return [group_point(panel, f"dense FedAvg (no mask), {dense.head} head", "", dense, "final_test_acc", 100.0)]


def accuracy_vs_sparsity(groups: Sequence[Group], out: Path) -> list[Path]:
    """``accuracy-vs-sparsity.png``: final test accuracy vs the frozen fraction, a line per rule (and R'), beside the
    matched dense reference (:func:`dense_reference`); only configurations that differ in these alone
    (:func:`controlled`)."""
    editing, _ = controlled(editing_groups(groups), SPARSITY_AXES)
    if not any(len({g.config.get("sparsity") for g in m}) > 1 for m in by_partition(editing).values()):
        return []
    # a facet per partition that varies the sparsity
    facets = {p: m for p, m in by_partition(editing).items() if len({g.config.get("sparsity") for g in m}) > 1}
    scopes = scopes_vary(editing)
    points: list[Point] = []
    fig, axes = plt.subplots(1, len(facets), figsize=(5.2 * len(facets), 4.3), squeeze=False, constrained_layout=True)
    for ax, (part, members) in zip(axes[0], facets.items(), strict=True):
        dense = dense_reference(groups, members[0])

        def line_of(g: Group) -> tuple[str, int]:
            return rule_text(g, scopes), g.config.get("calibration-rounds") if calibrates(g) else 0

        picked = one_per_point(members, lambda g: (line_of(g), g.config.get("sparsity")))
        lines: dict[tuple[str, int], list[tuple[Group, list[Group]]]] = {}
        for (line, _), chosen in picked.items():
            lines.setdefault(line, []).append(chosen)
        r_values = sorted({r for _, r in lines if r})
        shades = {r: 0.35 + 0.65 * i / (len(r_values) - 1) for i, r in enumerate(r_values)} if len(r_values) > 1 else {}
        for (rule, rounds), line in sorted(lines.items()):
            line.sort(key=lambda chosen: chosen[0].config.get("sparsity"))
            label = rule + (f", R' = {rounds}" if len(r_values) > 1 and rounds else "")
            drawn = [
                group_point(part, label, 100 * g.config["sparsity"], g, "final_test_acc", 100.0, dense, also)
                for g, also in line
            ]
            points += drawn
            color = RULE_COLORS.get(line[0][0].config.get("mask-rule"))
            _error_bars(ax, drawn, marker="o", ms=4, color=color, alpha=shades.get(rounds, 1.0), label=label)
        dense_line(ax, dense)
        points += _dense_point(part, dense)
        style_axes(ax, "sparsity: frozen fraction of the backbone (%)", "final test accuracy (%)", part)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Sparse fine-tuning: accuracy vs sparsity ({seeds_note(editing)})", fontsize=11)
    return [save_with_data(fig, out / "accuracy-vs-sparsity.png", points)]


def accuracy_vs_calibration_rounds(groups: Sequence[Group], out: Path) -> list[Path]:
    """``accuracy-vs-calibration-rounds.png``: final test accuracy vs R', a line per (rule, sparsity); only
    configurations that differ in these alone (:func:`controlled`)."""
    calibrating = [g for g in editing_groups(groups) if calibrates(g)]
    editing, _ = controlled(calibrating, ("calibration-rounds", "mask-rule", "sparsity", "mask-scope"))
    # a facet per partition that varies R'
    facets = {
        p: m for p, m in by_partition(editing).items() if len({g.config.get("calibration-rounds") for g in m}) > 1
    }
    if not facets:
        return []
    scopes = scopes_vary(editing)
    points: list[Point] = []
    fig, axes = plt.subplots(1, len(facets), figsize=(5.2 * len(facets), 4.3), squeeze=False, constrained_layout=True)
    for ax, (part, members) in zip(axes[0], facets.items(), strict=True):
        dense = dense_reference(groups, members[0])
        picked = one_per_point(
            members, lambda g: (rule_text(g, scopes), g.config.get("sparsity"), g.config.get("calibration-rounds"))
        )
        lines: dict[tuple[str, float], list[tuple[Group, list[Group]]]] = {}
        for (rule, sparsity, _), chosen in picked.items():
            lines.setdefault((rule, sparsity), []).append(chosen)
        colors = palette(len(lines))
        for ((rule, sparsity), line), color in zip(sorted(lines.items()), colors, strict=True):
            line.sort(key=lambda chosen: chosen[0].config.get("calibration-rounds"))
            label = f"{rule}, sparsity {100 * sparsity:g} %"
            drawn = [
                group_point(part, label, g.config["calibration-rounds"], g, "final_test_acc", 100.0, dense, also)
                for g, also in line
            ]
            points += drawn
            _error_bars(ax, drawn, marker="o", ms=4, color=color, label=label)
        points += _dense_point(part, dense)
        ax.set_xscale("log", base=2)
        ticks = sorted({g.config["calibration-rounds"] for g in members})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        style_axes(ax, "calibration rounds R'", "final test accuracy (%)", part)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Mask calibration: accuracy vs calibration rounds ({seeds_note(editing)})", fontsize=11)
    return [save_with_data(fig, out / "accuracy-vs-calibration-rounds.png", points)]


def rules_comparison(groups: Sequence[Group], out: Path) -> list[Path]:
    """``rules.png``: the calibration rules side by side at equal sparsity, grouped by partition, with the matched
    dense reference as the last bar; only configurations that differ in the rule (and its scope) alone
    (:func:`controlled`)."""
    editing = editing_groups(groups)
    rules_at: dict[float, set[str]] = {}
    for g in editing:
        rules_at.setdefault(g.config.get("sparsity"), set()).add(g.config.get("mask-rule"))
    candidates = [s for s, rules in rules_at.items() if len(rules) > 1]
    if not candidates:
        return []
    sparsity = max(candidates, key=lambda s: len(rules_at[s]))
    chosen, _ = controlled([g for g in editing if g.config.get("sparsity") == sparsity], RULES_AXES)
    r_common = most_common([g.config.get("calibration-rounds") for g in chosen if calibrates(g)])
    facets = by_partition(chosen)
    scopes = scopes_vary(chosen)
    # the calibration data of the sensitivity rules (the coverage control): a bar per value; the most common unnamed
    data_common = most_common([_calibration_data(g) for g in chosen if calibrates(g)])
    order = {rule: i for i, rule in enumerate(RULE_COLORS)}
    bars = sorted({_bar(g) for g in chosen}, key=lambda b: (order.get(b[0], len(order)), b[1] != "global", b))
    width = 0.8 / (len(bars) + 1)
    points: list[Point] = []
    fig, ax = plt.subplots(figsize=(max(6.0, (0.4 * len(bars) + 0.8) * len(facets) + 3), 4.8), constrained_layout=True)
    for i, (part, members) in enumerate(facets.items()):
        dense = dense_reference(groups, members[0])
        picked = one_per_point(members, _bar)
        for j, bar in enumerate([*bars, None]):
            if bar is None:
                g, also, ref = dense, [], None
                label = f"dense FedAvg (no mask), {dense.head} head" if dense is not None else ""
            elif bar in picked:
                (g, also), ref = picked[bar], dense
                label = rule_text(g, scopes) + _calibration_text(g, data_common)
            else:
                continue
            if g is None:
                continue
            point = group_point(part, label, "", g, "final_test_acc", 100.0, ref, also)
            points.append(point)
            if point.value is None:
                continue
            x = i + (j - len(bars) / 2) * width
            control = bar is not None and calibrates(g) and _calibration_data(g) != data_common
            ax.bar(
                x,
                point.value,
                width * 0.95,
                yerr=point.std,
                capsize=2,
                color="white" if bar is None else RULE_COLORS.get(bar[0]),
                edgecolor="black" if bar is None else ("white" if control else None),
                hatch="//" if bar is None else ("xx" if control else "" if bar[1] == "global" else ".."),
                label=label,
            )
            ax.text(x, point.value + (point.std or 0) + 0.5, f"{point.value:.1f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(facets)), list(facets))
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), fontsize=8, frameon=False, ncol=2, loc="outside lower center")
    style_axes(
        ax,
        "",
        "final test accuracy (%)",
        f"Calibration rules at sparsity {100 * sparsity:g} % (frozen fraction), R' = {r_common} for the "
        f"sensitivity rules\n{seeds_note(chosen)}",
    )
    ax.set_xlabel("client data")
    return [save_with_data(fig, out / "rules.png", points)]


# ---------------------------------------------------------------------------------------------------------------
# Per-layer mask density.

# Kinds of tensor within a block (matched in the name within the block; weights and biases together) → panel title.
WEIGHT_KINDS = (
    ("attn.qkv", "attention qkv"),
    ("attn.proj", "attention proj"),
    ("mlp.fc1", "MLP fc1"),
    ("mlp.fc2", "MLP fc2"),
    ("norm", "LayerNorms"),
)


def density_by_block(rows: Sequence[dict[str, object]]) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """Trainable fractions of a mask density table (:func:`read_density_rows`), grouped by :func:`layer_of`:
    (kind of :data:`WEIGHT_KINDS` → block index → fraction, group outside the blocks → fraction). Inside a block,
    tensors of none of the kinds count as "other" (not drawn); outside, the groups are "patch embedding",
    "cls + position" (the class token and the position embedding) and "final norm" (everything else)."""
    blocks: dict[str, dict[int, list[int]]] = {}
    other: dict[str, list[int]] = {}
    for row in rows:
        place = layer_of(str(row["tensor"]))
        if place.block is not None:
            within = place.within
            kind = next((k for k, _ in WEIGHT_KINDS if k in within), "norm" if "norm" in within else "other")
            entry = blocks.setdefault(kind, {}).setdefault(place.block, [0, 0])
        else:
            outside = (
                "patch embedding"
                if place.layer == "patch_embed"
                else "cls + position"
                if "token" in place.layer or place.layer == "pos_embed"
                else "final norm"
            )
            entry = other.setdefault(outside, [0, 0])
        entry[0] += int(row["trainable"])  # type: ignore[call-overload]
        entry[1] += int(row["numel"])  # type: ignore[call-overload]
    return (
        {k: {b: v[0] / v[1] for b, v in sorted(d.items())} for k, d in blocks.items()},
        {k: v[0] / v[1] for k, v in other.items()},
    )


def mask_density_per_layer(groups: Sequence[Group], out: Path) -> list[Path]:
    """Trainable fraction per transformer block and kind of weight, averaged over seeds, for the most common
    partition: ``mask-density-rules.png`` (a line per rule at one sparsity) and ``mask-density-sparsity.png`` (a
    line per sparsity of the most common rule), each when there is more than one line to draw."""
    editing = [g for g in editing_groups(groups) if all((r.path / DENSITY_FILE).is_file() for r in g.runs)]
    if not editing:
        return []
    part = most_common([partition_label(g.config) for g in editing])
    chosen = [g for g in editing if partition_label(g.config) == part]
    chosen, _ = controlled(chosen, ("mask-rule", "sparsity"))  # one mask scope, R', fine-tuning, ...
    r_common = most_common([g.config.get("calibration-rounds") for g in chosen if calibrates(g)])
    picked = one_per_point(chosen, lambda g: (g.config.get("mask-rule"), g.config.get("sparsity")))
    unique = [g for g, _ in picked.values()]
    written = []
    s_common = most_common([g.config.get("sparsity") for g in unique])
    by_rule = [g for g in unique if g.config.get("sparsity") == s_common]
    if len(by_rule) > 1:
        by_rule.sort(key=lambda g: list(RULE_COLORS).index(g.config.get("mask-rule")))
        colors = [RULE_COLORS[g.config["mask-rule"]] for g in by_rule]
        labels = [g.config["mask-rule"] for g in by_rule]
        title = f"Per-layer mask density by rule, sparsity {100 * s_common:g} % ({part}, R' = {r_common})"
        written.append(_density_figure(by_rule, colors, labels, title, out / "mask-density-rules.png"))
    rule_common = most_common([g.config.get("mask-rule") for g in unique])
    by_sparsity = sorted(
        (g for g in unique if g.config.get("mask-rule") == rule_common), key=lambda g: g.config["sparsity"]
    )
    if len(by_sparsity) > 1:
        colors = palette(len(by_sparsity))
        labels = [f"sparsity {100 * g.config['sparsity']:g} %" for g in by_sparsity]
        rounds = f", R' = {r_common}" if rule_common.endswith("sensitive") else ""
        title = f"Per-layer mask density of {rule_common} masks by sparsity ({part}{rounds})"
        written.append(_density_figure(by_sparsity, colors, labels, title, out / "mask-density-sparsity.png"))
    return written


def _density_figure(
    chosen: Sequence[Group], colors: Sequence[Any], labels: Sequence[str], title: str, path: Path
) -> Path:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.4), constrained_layout=True)
    flat = axes.ravel()
    width = 0.8 / len(chosen)
    points: list[Point] = []
    for idx, (g, color, label) in enumerate(zip(chosen, colors, labels, strict=True)):
        per_seed = [(r.name, density_by_block(read_density_rows(r.path / DENSITY_FILE))) for r in g.runs]
        overall = 100 * (1 - g.config["sparsity"])
        for ax, (kind, kind_title) in zip(flat[:5], WEIGHT_KINDS, strict=True):
            blocks = sorted(set().union(*(s[0].get(kind, {}) for _, s in per_seed)))
            if not blocks:
                continue
            drawn = [
                values_point(
                    kind_title,
                    label,
                    b,
                    "trainable_pct",
                    [(n, 100 * s[0].get(kind, {}).get(b, np.nan)) for n, s in per_seed],
                )
                for b in blocks
            ]
            points += drawn
            _error_bars(ax, drawn, marker="o", ms=3, color=color, label=label)
            ax.axhline(overall, color=color, ls=":", lw=0.8)
            style_axes(ax, "transformer block", "trainable entries (%)", kind_title, integer_x=True)
        others = sorted(set().union(*(s[1] for _, s in per_seed)))
        drawn = [
            values_point(
                "outside the blocks", label, o, "trainable_pct", [(n, 100 * s[1].get(o, np.nan)) for n, s in per_seed]
            )
            for o in others
        ]
        points += drawn
        x = np.arange(len(others)) + (idx - (len(chosen) - 1) / 2) * width
        flat[5].bar(x, [p.value for p in drawn], width, color=color, label=label)
        flat[5].set_xticks(range(len(others)), others, fontsize=8)
    style_axes(flat[5], "", "trainable entries (%)", "outside the blocks")
    handles, names = flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(5, len(names)), fontsize=8, frameon=False)
    fig.suptitle(f"{title}\ndotted: the overall density 1 − sparsity; {seeds_note(chosen)}", fontsize=11)
    return save_with_data(fig, path, points)


# ---------------------------------------------------------------------------------------------------------------
# Mask agreement.


# The agreement record's keys (:mod:`fedtalos.study.agreement`) drawn per partition: (key, line style, marker, what
# it is).
AGREEMENT_LINES = (
    ("mean_jaccard", "-", "o", "clients outside the calibration cohort vs aggregated mask"),
    ("cohort_mean_jaccard", (0, (1, 3)), "x", "calibration-cohort members vs aggregated mask (in-sample)"),
    ("pairwise_jaccard", ":", "s", "client vs client"),
    ("noise_floor_jaccard", "-.", "^", "iid subset vs the aggregate that left it out (noise floor)"),
)


def mask_agreement(groups: Sequence[Group], out: Path) -> list[Path]:
    """``mask-agreement.png``: Jaccard of single-client masks with the aggregated mask vs the partition, the
    clients outside the calibration cohort (out-of-sample) and the cohort's members apart (:data:`AGREEMENT_LINES`),
    the mean Jaccard between clients, the out-of-sample noise floor (an iid subset of one client's size against
    the aggregate of the pooled samples it left out), and the level of independent random masks."""
    with_records = [g for g in groups if any(r.agreement for r in g.runs)]
    if not with_records:
        return []
    lines: dict[tuple[Any, ...], list[Group]] = {}
    for g in with_records:  # a line per rule, sparsity, R' and calibration data: never two configurations in one
        key = (g.config.get("mask-rule"), g.config.get("sparsity"), g.config.get("calibration-rounds"))
        lines.setdefault((*key, _calibration_data(g)), []).append(g)
    data_common = most_common([_calibration_data(g) for g in with_records])
    parts = sorted({partition_label(g.config) for g in with_records}, key=partition_order)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(parts) + 3), 4.8), constrained_layout=True)
    chance = []
    points: list[Point] = []
    for (rule, sparsity, rounds, _), members in sorted(lines.items(), key=lambda kv: json.dumps(kv[0])):
        color = RULE_COLORS.get(rule)
        picked = one_per_point(members, lambda g: partition_label(g.config))
        arm = f"{rule}, sparsity {100 * sparsity:g} %, R' = {rounds}{_calibration_text(members[0], data_common)}"
        for metric, style, marker, what in AGREEMENT_LINES:
            label = f"{what} ({arm})"
            drawn = [
                values_point("", label, part, metric, [(r.name, (r.agreement or {}).get(metric)) for r in g.runs])
                for part in parts
                if (g := picked.get(part, (None,))[0]) is not None
            ]
            points += drawn
            shown = [p for p in drawn if p.value is not None]
            if not shown:
                continue
            ax.errorbar(
                [parts.index(p.x) for p in shown],
                [p.value for p in shown],
                yerr=[p.std or 0 for p in shown],
                ls=style,
                marker=marker,
                capsize=3,
                color=color,
                label=label,
            )
        chance += [r.agreement["chance_jaccard"] for g in members for r in g.runs if r.agreement]
    if chance:
        ax.axhline(float(np.mean(chance)), color="gray", ls="--", lw=1, label="independent random masks")
    ax.set_xticks(range(len(parts)), parts)
    ax.set_ylim(0, 1.02)
    style_axes(
        ax,
        "client data",
        "Jaccard index |A ∩ B| / |A ∪ B|",
        f"Do single clients find the federated mask? ({seeds_note(with_records)})",
    )
    fig.legend(fontsize=7, frameon=False, loc="outside lower center", ncol=1)
    return [save_with_data(fig, out / "mask-agreement.png", points)]


def plot_client_agreement(record: dict[str, Any], out: Path) -> Path:
    """One run's analysis: Jaccard of each analysed client's mask with the aggregated mask."""
    rows = record["clients"]
    fig, ax = plt.subplots(figsize=(max(9.0, 0.35 * len(rows) + 2.5), 4.4), constrained_layout=True)
    values = [r["jaccard"] for r in rows]
    color = RULE_COLORS.get(record["mask_rule"], "#1f77b4")
    # the cohort's members scored for the aggregate: in-sample, drawn hatched and left out of the clients' mean
    for cohort, label in ((False, "outside the calibration cohort"), (True, "calibration-cohort member (in-sample)")):
        at = [i for i, r in enumerate(rows) if bool(r.get("in_cohort")) == cohort]
        bars = [values[i] for i in at]
        style = {"alpha": 0.45, "hatch": "//", "edgecolor": "white"} if cohort else {}
        ax.bar(at, bars, color=color, width=0.7, label=label if at else None, **style)
    if len(rows) <= 25:
        for i, v in enumerate(values):
            ax.text(i, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(record["chance_jaccard"], color="gray", ls="--", lw=1, label="independent random masks")
    if record.get("mean_jaccard") is not None:
        ax.axhline(record["mean_jaccard"], color=color, lw=1, label="mean of the clients outside the cohort")
    if record.get("pairwise_jaccard") is not None:
        ax.axhline(record["pairwise_jaccard"], color="black", ls=":", lw=1, label="mean client vs client")
    floor = record.get("noise_floor_jaccard")
    if floor is not None:
        size = record["noise_floor"][0]["samples"]
        label = (
            f"noise floor: iid subsets of {size} pooled samples vs the aggregate that left them out "
            f"({len(record['noise_floor'])})"
        )
        ax.axhline(floor, color="#d62728", ls="-.", lw=1.2, label=label)
        if record.get("noise_floor_std") is not None:
            std = record["noise_floor_std"]
            ax.axhspan(floor - std, floor + std, color="#d62728", alpha=0.12, lw=0)
    ax.set_xticks(range(len(rows)), [str(r["client"]) for r in rows], fontsize=7)
    ax.set_ylim(0, 1.05)
    part = "iid" if record["partitioning"] == "iid" else f"Nc = {record['classes_per_client']}"
    style_axes(
        ax,
        "client (partition id): its mask calibrated on its own shard alone",
        "Jaccard with the aggregated mask",
        f"{record['run']}: {record['mask_rule']}, sparsity {100 * record['sparsity']:g} %, {part}, "
        f"R' = {record['calibration_rounds']}",
    )
    fig.legend(fontsize=8, frameon=False, loc="outside lower center", ncol=2)
    return save_figure(fig, out)
