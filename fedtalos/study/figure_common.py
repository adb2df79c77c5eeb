"""What every study figure shares: colours, bands, and the picks of configurations (the axes style and the file
are :mod:`fedtalos.tracking.plots`'s, as for every figure; the CSV beside it :mod:`fedtalos.study.figure_data`'s).

The picks (docs/figures.md): :func:`controlled` keeps the configurations that differ only in what the figure
compares, at the longest fine-tuning (so a one-round analysis run never stands in for a trained one);
:func:`one_per_point` draws one of two configurations with the same settings, by a stated rule, and names the
other; :func:`dense_reference` is the matched dense control (same head, no mask file). The figures themselves are
in :mod:`fedtalos.study.figures` (training) and :mod:`fedtalos.study.mask_figures` (sparse fine-tuning).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedtalos.run.phases import MASK_KEYS, SENSITIVITY_RULES
from fedtalos.study.figure_data import Point
from fedtalos.study.results import Group, identity_settings, partition_order, settings_text
from fedtalos.tracking.identity import partition_label

RULE_COLORS = {
    "least-sensitive": "#1f77b4",
    "most-sensitive": "#d62728",
    "lowest-magnitude": "#2ca02c",
    "highest-magnitude": "#9467bd",
    "random": "#7f7f7f",
    "none": "#000000",
}
MAX_LINES = 8  # lines per axes before a figure is split into facets (or cut)
# What the calibration-coverage control of the rules family changes (docs/study.md § Controls): the share of clients
# that calibrate and the samples each scores. The rules figure draws a bar per value, never one bar for both.
CALIBRATION_DATA = ("calibration-fraction", "fisher-samples")
# The settings each accuracy figure compares (its axes; :func:`controlled` holds the rest fixed).
SPARSITY_AXES = ("sparsity", "mask-rule", "calibration-rounds", "mask-scope")
RULES_AXES = ("mask-rule", "mask-scope", *CALIBRATION_DATA)


def palette(n: int) -> list[Any]:
    """``n`` distinct colours: tab10 up to 10, else evenly spaced along viridis."""
    cmap = plt.get_cmap("viridis" if n > 10 else "tab10")
    return [cmap(i / max(n - 1, 1)) if n > 10 else cmap(i % 10) for i in range(n)]


def seeds_note(groups: Sequence[Group]) -> str:
    """``mean ± std over 3 seeds`` (or ``2–3 seeds`` when the configurations differ), for figure titles."""
    counts = sorted({len(g.runs) for g in groups})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean ± std over {n} seed{'s' if counts[-1] > 1 else ''}"


def band(ax: plt.Axes, points: Sequence[Point], **kwargs: Any) -> None:
    """A line through the points' values and a shaded ± std band in its colour (none when every std is 0)."""
    x = np.array([float(p.x) for p in points])
    mean = np.array([p.value for p in points], dtype=float)
    std = np.array([p.std or 0.0 for p in points], dtype=float)
    (line,) = ax.plot(x, mean, marker="o" if len(x) <= 25 else None, ms=3, **kwargs)
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.18, lw=0)


def editing_groups(groups: Sequence[Group]) -> list[Group]:
    """The federated configurations that calibrate their own mask (a rule, a sparsity, R'). Mask-path runs fine-tune
    sparsely too (:attr:`Group.sparse`) but say their rule only in their mask file: they are left out here."""
    return [g for g in groups if g.kind == "federated" and g.run_config.editing]


def _outside(config: dict[str, Any], keys: Collection[str]) -> dict[str, Any]:
    return {k: v for k, v in identity_settings(config).items() if k not in keys}


def dense_reference(groups: Sequence[Group], like: Group) -> Group | None:
    """The matched dense control of ``like``: a federated configuration that fine-tunes densely (no mask rule, no
    mask file) with the same head (:attr:`Group.head`: a frozen ridge head for the editing runs) and every other
    setting of the run's identity equal (partition, J, rounds, clients, lr, ...), the mask's keys aside. Among
    several (the same configuration in two families), the one with the most seeds, then by label."""
    # the partition compares by its label, the head by what the run fine-tunes with (a mask file's head is its own)
    keys = {*MASK_KEYS, "partitioning", "classes-per-client", "head"}
    wanted = (partition_label(like.config), like.head, _outside(like.config, keys))
    matches = [
        g
        for g in groups
        if g.kind == "federated"
        and not g.sparse
        and (partition_label(g.config), g.head, _outside(g.config, keys)) == wanted
    ]
    return min(matches, key=lambda g: (-len(g.runs), g.label), default=None)


def _held_settings(group: Group, axes: Collection[str]) -> dict[str, Any]:
    """The settings a figure holds fixed: the identity outside ``axes`` and the partition (the facet); R' only for
    the rules that calibrate in rounds."""
    dropped = {*axes, "partitioning", "classes-per-client"}
    if not calibrates(group):
        dropped.add("calibration-rounds")
    return _outside(group.config, dropped)


def _agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal where both have the key (only R' may be missing: see :func:`_held_settings`)."""
    return all(b[k] == v for k, v in a.items() if k in b)


def controlled(members: Sequence[Group], axes: Collection[str]) -> tuple[list[Group], list[Group]]:
    """(kept, left out): the configurations of a figure that differ only in ``axes`` and the partition.

    The settings held fixed are those of the longest fine-tuning (J × rounds), then of the most runs: a configuration
    that trained less (a one-round analysis run, a smoke run) or with other settings (another lr) is left out, never
    drawn in the place of one that trained what the figure compares, however many runs it has."""
    if not members:
        return [], []
    held = [_held_settings(g, axes) for g in members]

    def rank(ref: dict[str, Any]) -> tuple[int, int, str]:
        steps = int(ref.get("num-server-rounds", 0)) * int(ref.get("local-steps", 1))
        runs = sum(len(g.runs) for g, h in zip(members, held, strict=True) if _agree(h, ref))
        return steps, runs, json.dumps(ref, sort_keys=True, default=str)

    # a rule that does not calibrate in rounds holds no R' and agrees with any: the reference comes from one that does
    complete = [h for g, h in zip(members, held, strict=True) if calibrates(g)] or held
    best = max(complete, key=rank)
    kept = [g for g, h in zip(members, held, strict=True) if _agree(h, best)]
    return kept, [g for g in members if g not in kept]


def arms(members: Sequence[Group], axes: Collection[str]) -> tuple[list[str], dict[int, tuple]]:
    """(the keys that tell the arms apart, id(configuration) → its arm): configurations of a figure that differ in
    a setting outside ``axes`` and the partition (e.g. the local-momentum control of the Nc × J family: momentum 0
    and another lr) are arms of their own, drawn apart, never in one cell or point with another arm."""
    dropped = {*axes, "partitioning", "classes-per-client"}
    settings = {k for g in members for k in identity_settings(g.config) if k not in dropped}
    keys = sorted(k for k in settings if len({json.dumps(g.config.get(k), default=str) for g in members}) > 1)
    return keys, {id(g): tuple(json.dumps(g.config.get(k), default=str) for k in keys) for g in members}


def arm_text(group: Group, keys: Sequence[str]) -> str:
    """What sets an arm apart, for a title or legend: the local momentum said with what it does to the step (a
    client restarts its momentum every round, so with momentum the step of a round grows with J; without, the
    run's step mass is lr × J × rounds), then the other keys as ``name=value``."""
    parts = []
    if "momentum" in keys:
        momentum = group.config.get("momentum")
        parts.append(
            "plain local SGD (momentum 0): step mass ∝ J × rounds"
            if not momentum
            else f"local momentum {momentum:g} restarted every round: step grows with J"
        )
    rest = settings_text(group, [k for k in keys if k != "momentum"])
    return ", ".join(p for p in (*parts, rest) if p)


def one_per_point(members: Sequence[Group], point: Callable[[Group], Any]) -> dict[Any, tuple[Group, list[Group]]]:
    """Point key → (the configuration drawn, the others at that point). Two configurations at one point after
    :func:`controlled` have the same settings (e.g. a run that two families plan); the one drawn has the most
    seeds, then comes from the family with the most configurations in the figure, then by label."""
    size = Counter(g.family for g in members)
    found: dict[Any, list[Group]] = {}
    for g in members:
        found.setdefault(point(g), []).append(g)
    out = {}
    for key, at in found.items():
        at = sorted(at, key=lambda g: (-len(g.runs), -size[g.family], g.family, g.label))
        out[key] = (at[0], at[1:])
    return out


def calibrates(group: Group) -> bool:
    """Whether the configuration's rule calibrates in rounds (least- and most-sensitive), so that R' matters."""
    return group.config.get("mask-rule") in SENSITIVITY_RULES


def most_common(values: Sequence[Any]) -> Any:
    """The most frequent value (the first seen among equals); None for no values."""
    return Counter(values).most_common(1)[0][0] if values else None


def by_partition(members: Sequence[Group]) -> dict[str, list[Group]]:
    """Partition label → its configurations, Nc ascending, iid last (a facet per partition)."""
    facets: dict[str, list[Group]] = {}
    for g in members:
        facets.setdefault(partition_label(g.config), []).append(g)
    return dict(sorted(facets.items(), key=lambda kv: partition_order(kv[0])))


def dense_line(ax: plt.Axes, dense: Group | None) -> None:
    """A dashed line (and ± std band) at the final test accuracy of the dense reference ``dense``, if any."""
    if dense is None:
        return
    mean, std, _ = dense.stat("final_test_acc")
    if mean is None:
        return
    ax.axhline(100 * mean, color="black", ls="--", lw=1.2, label=f"dense FedAvg (no mask), {dense.head} head")
    if std:
        ax.axhspan(100 * (mean - std), 100 * (mean + std), color="black", alpha=0.08, lw=0)
