"""What every study figure shares: colours, the mean ± std over seeds, and the picks of configurations (the axes
style and the file are :mod:`fedtalos.tracking.plots`'s, as for every figure).

The figures themselves are in :mod:`fedtalos.study.figures` (training) and :mod:`fedtalos.study.mask_figures`
(sparse fine-tuning); their configurations come from :mod:`fedtalos.study.results`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedtalos.study.results import Group, mean_std, partition_order
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


def palette(n: int) -> list[Any]:
    """``n`` distinct colours: tab10 up to 10, else evenly spaced along viridis."""
    cmap = plt.get_cmap("viridis" if n > 10 else "tab10")
    return [cmap(i / max(n - 1, 1)) if n > 10 else cmap(i % 10) for i in range(n)]


def seeds_note(groups: Sequence[Group]) -> str:
    """``mean ± std over 3 seeds`` (or ``2–3 seeds`` when the configurations differ), for figure titles."""
    counts = sorted({len(g.runs) for g in groups})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean ± std over {n} seed{'s' if counts[-1] > 1 else ''}"


def seed_curve(
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


def band(ax: plt.Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float = 1.0, **kwargs: Any) -> None:
    """A line of ``mean`` and a shaded ± ``std`` band in its colour (none when every std is 0), × ``scale``."""
    (line,) = ax.plot(x, mean * scale, marker="o" if len(x) <= 25 else None, ms=3, **kwargs)
    if np.any(std > 0):
        ax.fill_between(x, (mean - std) * scale, (mean + std) * scale, color=line.get_color(), alpha=0.18, lw=0)


Stat = tuple[float | None, float | None, int]  # (mean, sample std, n) over seeds, as Group.stat returns


def error_points(
    stats: Iterable[tuple[float, Stat]], scale: float = 1.0
) -> tuple[list[float], list[float], list[float]]:
    """(xs, ys, errors) for ``ax.errorbar`` from (x, stat) pairs, skipping stats without a mean; ys × ``scale``."""
    xs, ys, es = [], [], []
    for x, (mean, std, _) in stats:
        if mean is not None:
            xs.append(x)
            ys.append(scale * mean)
            es.append(scale * (std or 0))
    return xs, ys, es


def editing_groups(groups: Sequence[Group]) -> list[Group]:
    """The federated configurations that train under a mask."""
    return [g for g in groups if g.kind == "federated" and g.config.get("mask-rule", "none") != "none"]


def dense_reference(groups: Sequence[Group], like: Group) -> Group | None:
    """A dense federated configuration trained like ``like``: same partition, J, rounds and clients."""
    keys = ("local-steps", "num-server-rounds", "num-clients", "fraction-train")
    for g in groups:
        dense = g.kind == "federated" and g.config.get("mask-rule") == "none"
        same_data = partition_label(g.config) == partition_label(like.config)
        if dense and same_data and all(g.config.get(k) == like.config.get(k) for k in keys):
            return g
    return None


def calibrates(group: Group) -> bool:
    """Whether the configuration's rule calibrates in rounds (least- and most-sensitive), so that R' matters."""
    return str(group.config.get("mask-rule", "")).endswith("sensitive")


def most_common(values: Sequence[Any]) -> Any:
    """The most frequent value (the first seen among equals); None for no values."""
    return Counter(values).most_common(1)[0][0] if values else None


def by_partition(members: Sequence[Group]) -> dict[str, list[Group]]:
    """Partition label → its configurations, Nc ascending, iid last (a facet per partition)."""
    facets: dict[str, list[Group]] = {}
    for g in members:
        facets.setdefault(partition_label(g.config), []).append(g)
    return dict(sorted(facets.items(), key=lambda kv: partition_order(kv[0])))


def dense_line(ax: plt.Axes, groups: Sequence[Group], like: Group) -> None:
    """A dashed line (and ± std band) at the final test accuracy of the dense reference of ``like``, if any."""
    dense = dense_reference(groups, like)
    if dense is None:
        return
    mean, std, _ = dense.stat("final_test_acc")
    if mean is None:
        return
    ax.axhline(100 * mean, color="black", ls="--", lw=1.2, label="dense FedAvg (no mask)")
    if std:
        ax.axhspan(100 * (mean - std), 100 * (mean + std), color="black", alpha=0.08, lw=0)
