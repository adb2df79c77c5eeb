"""The data behind each study figure: a CSV beside every PNG, one row per point, bar, cell or curve point, with the
value drawn, its n and the runs behind it, so that a reader (or a test) checks a figure without reading pixels.

Columns (docs/figures.md): ``panel`` (the facet or axes), ``series`` (the line, bar or row), ``x``, ``metric``,
``value`` and ``std`` (mean and sample std over seeds, in the figure's units: accuracies in %), ``n`` (seeds),
``runs`` (the run directories, space-separated), ``reference`` (the configuration the point is compared with, if
any), ``paired_diff``, ``paired_diff_std``, ``paired_n`` (mean and std over seeds of value − reference at the same
seed, and the number of paired seeds) and ``also`` (configurations with the same settings that were not drawn).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from fedtalos.study.results import Group, mean_std
from fedtalos.tracking.plots import save_figure

COLUMNS = (
    "panel",
    "series",
    "x",
    "metric",
    "value",
    "std",
    "n",
    "runs",
    "reference",
    "paired_diff",
    "paired_diff_std",
    "paired_n",
    "also",
)


@dataclass
class Point:
    """One drawn point (or bar, or cell) and where it comes from."""

    panel: str
    series: str
    x: Any
    metric: str
    value: float | None
    std: float | None
    n: int
    runs: Sequence[str]
    reference: str = ""
    paired: tuple[float | None, float | None, int] = (None, None, 0)
    also: Sequence[str] = field(default_factory=tuple)

    def row(self) -> dict[str, Any]:
        diff, diff_std, paired_n = self.paired
        return {
            "panel": self.panel,
            "series": self.series,
            "x": self.x,
            "metric": self.metric,
            "value": self.value,
            "std": self.std,
            "n": self.n,
            "runs": " ".join(self.runs),
            "reference": self.reference,
            "paired_diff": diff,
            "paired_diff_std": diff_std,
            "paired_n": paired_n if self.reference else "",
            "also": " ".join(self.also),
        }


def group_point(
    panel: str,
    series: str,
    x: Any,
    group: Group,
    metric: str,
    scale: float = 1.0,
    reference: Group | None = None,
    also: Sequence[Group] = (),
) -> Point:
    """The point of ``group``'s ``metric`` (mean ± std over seeds, × ``scale``), paired with ``reference``'s."""
    mean, std, n = group.stat(metric)
    paired: tuple[float | None, float | None, int] = (None, None, 0)
    if reference is not None:
        d_mean, d_std, d_n = group.paired(reference, metric)
        paired = (_scaled(d_mean, scale), _scaled(d_std, scale), d_n)
    return Point(
        panel,
        series,
        x,
        metric,
        _scaled(mean, scale),
        _scaled(std, scale),
        n,
        group.run_names(metric),
        reference.label if reference is not None else "",
        paired,
        [g.label for g in also],
    )


def values_point(panel: str, series: str, x: Any, metric: str, values: Sequence[tuple[str, float | None]]) -> Point:
    """The point of per-run values ``(run name, value)`` (None: the run has none): mean ± std over them."""
    present = [(name, v) for name, v in values if v is not None and v == v]  # v == v: not NaN
    mean, std, n = mean_std([v for _, v in present])
    return Point(panel, series, x, metric, mean, std, n, [name for name, _ in present])


def curve_points(
    panel: str,
    series: str,
    group: Group,
    y: str,
    x_of: Callable[[Any, dict[str, Any]], float],
    rows_of: Callable[[Any], list[dict[str, Any]]],
    scale: float = 1.0,
) -> list[Point]:
    """A curve over the group's seeds: at every x where at least one seed has ``y``, its mean ± std (× ``scale``)
    and the runs that have it."""
    values: dict[float, list[tuple[str, float]]] = {}
    for run in group.runs:
        for row in rows_of(run):
            if row.get(y) is not None:
                values.setdefault(x_of(run, row), []).append((run.name, scale * float(row[y])))
    return [values_point(panel, series, x, y, values[x]) for x in sorted(values)]


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def write_points(points: Sequence[Point], path: Path) -> Path:
    """The rows of ``points`` as a CSV at ``path`` (empty cells for missing values)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for point in points:
        writer.writerow({k: "" if v is None else v for k, v in point.row().items()})
    path.write_text(buffer.getvalue())
    return path


def save_with_data(fig: plt.Figure, path: Path, points: Sequence[Point]) -> Path:
    """Save the figure at ``path`` (:func:`save_figure`) and its points beside it (same name, ``.csv``)."""
    written = save_figure(fig, path)
    write_points(points, written.with_suffix(".csv"))
    return written
