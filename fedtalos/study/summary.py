"""``fedtalos summarize RUNS_DIR``: one table of every configuration (mean ± std over seeds) and the study figures.

Run directories are the folders directly under ``RUNS_DIR`` that hold a ``config.json``; unfinished ones (no
``summary.json``) are listed and left out. A *configuration* is a run name without its ``-seed<k>`` suffix; the
family comes from the sweep manifests in ``RUNS_DIR/_sweeps`` (else from the name's first part).

Per run, from its ``metrics.jsonl`` (training rows: ``phase`` 'train' federated, 'train'/'epoch' centralized):
final test accuracy and loss (last row with a test evaluation), final and best validation accuracy, uploaded and
downloaded bytes over all phases, mean client drift over the training rounds, wall time; from its outputs: mask
density and the mask-agreement analysis. Per configuration: mean and sample standard deviation (ddof = 1) over its
seeds; a configuration with one seed has no std.

Writes ``<out>/summary.csv`` (mean, std and n of every metric, one row per configuration), ``<out>/summary.md``
(the readable table) and ``<out>/figures/*.png`` (see :mod:`fedtalos.study.figures`); ``<out>`` defaults to
``RUNS_DIR/summary``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtalos.config import NON_RESULT_KEYS
from fedtalos.study.plan import read_manifests, split_name
from fedtalos.tracking.metrics import read_rows
from fedtalos.tracking.rundir import CONFIG_FILE, SUMMARY_FILE

# Metric → (column title in the Markdown table, scale for display, decimals). Accuracies are shown in %.
METRICS: dict[str, tuple[str, float, int]] = {
    "final_test_acc": ("final test acc (%)", 100.0, 2),
    "best_val_acc": ("best val acc (%)", 100.0, 2),
    "final_val_acc": ("final val acc (%)", 100.0, 2),
    "final_test_loss": ("final test loss", 1.0, 3),
    "uploaded_gb": ("uploaded (GB)", 1.0, 2),
    "downloaded_gb": ("downloaded (GB)", 1.0, 2),
    "mean_drift": ("mean drift", 1.0, 4),
    "mask_density": ("trainable (%)", 100.0, 1),
    "mask_jaccard": ("client–aggregate Jaccard", 1.0, 3),
    "wall_min": ("time in rounds (min)", 1.0, 1),
}
# Smaller units for the Markdown table when every value is below 1 of the default one (e.g. a test sweep).
SMALL_UNITS: dict[str, tuple[str, float, int]] = {
    "uploaded_gb": ("uploaded (MB)", 1e3, 2),
    "downloaded_gb": ("downloaded (MB)", 1e3, 2),
    "wall_min": ("time in rounds (s)", 60.0, 1),
}
# Columns of the Markdown table, in order; those no configuration has are left out.
MARKDOWN_METRICS = (
    "final_test_acc",
    "best_val_acc",
    "final_test_loss",
    "uploaded_gb",
    "mean_drift",
    "mask_density",
    "mask_jaccard",
    "wall_min",
)
# Settings shown per configuration when they vary (short names); the CSV has them all.
SETTING_NAMES = {
    "partition": "",
    "local-steps": "J",
    "num-server-rounds": "rounds",
    "epochs": "epochs",
    "mask-rule": "",
    "sparsity": "sparsity",
    "calibration-rounds": "R'",
    "lr-schedule": "",
    "head": "head",
    "strategy": "",
}
CSV_SETTINGS = (
    "partitioning",
    "classes-per-client",
    "num-clients",
    "fraction-train",
    "local-steps",
    "num-server-rounds",
    "epochs",
    "lr",
    "lr-schedule",
    "strategy",
    "head",
    "mask-rule",
    "sparsity",
    "calibration-rounds",
    "image-size",
    "model",
)
# Keys that never tell configurations apart in the table (run bookkeeping, evaluation cadence).
_NOT_SETTINGS = (NON_RESULT_KEYS - {"num-server-rounds", "epochs"}) | {"seed"}


@dataclass
class RunData:
    """One run directory, read."""

    path: Path
    name: str
    family: str
    label: str
    seed: int
    kind: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    finished: bool
    point: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] | None = None
    _metrics: dict[str, float | None] | None = field(default=None, repr=False, compare=False)

    @property
    def x_key(self) -> str:
        return "epoch" if self.kind == "centralized" else "round"

    def train_rows(self) -> list[dict[str, Any]]:
        """The fine-tuning rows: 'train' (federated; also centralized) or 'epoch' (centralized)."""
        return [r for r in self.rows if r.get("phase") in ("train", "epoch")]

    def metrics(self) -> dict[str, float | None]:
        """The per-run numbers of the table (None where the run has no such value); computed once."""
        if self._metrics is None:
            self._metrics = self._compute_metrics()
        return self._metrics

    def _compute_metrics(self) -> dict[str, float | None]:
        rows = self.train_rows()
        tested = [r for r in rows if r.get("test_acc") is not None]
        validated = [r for r in rows if r.get("val_acc") is not None]
        drifts = [r["drift"] for r in rows if r.get("drift") is not None]
        mask = _mask_density(self)
        return {
            "final_test_acc": tested[-1]["test_acc"] if tested else None,
            "final_test_loss": tested[-1].get("test_loss") if tested else None,
            "final_val_acc": validated[-1]["val_acc"] if validated else None,
            "best_val_acc": max(r["val_acc"] for r in validated) if validated else None,
            "uploaded_gb": sum(r.get("bytes_up") or 0 for r in self.rows) / 1e9 if self.kind == "federated" else None,
            "downloaded_gb": (
                sum(r.get("bytes_down") or 0 for r in self.rows) / 1e9 if self.kind == "federated" else None
            ),
            "mean_drift": sum(drifts) / len(drifts) if drifts else None,
            "mask_density": mask,
            "mask_jaccard": self.agreement.get("mean_jaccard") if self.agreement else None,
            "wall_min": sum(r.get("wall_s") or 0.0 for r in self.rows) / 60.0,
        }


def _mask_density(run: RunData) -> float | None:
    summary_file = run.path / SUMMARY_FILE
    if summary_file.is_file():
        mask = json.loads(summary_file.read_text()).get("mask")
        if isinstance(mask, dict) and mask.get("density") is not None:
            return float(mask["density"])
    densities = [r["mask_density"] for r in run.rows if r.get("mask_density") is not None]
    return densities[-1] if densities else None


@dataclass
class Group:
    """A configuration: its runs (one per seed), sharing everything but the seed."""

    family: str
    label: str
    kind: str
    runs: list[RunData]

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def stat(self, metric: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std (ddof = 1; None for one value), n) of ``metric`` over the seeds that have it."""
        return mean_std([r.metrics()[metric] for r in self.runs])

    def setting(self, key: str) -> Any:
        if key == "partition":
            return partition_label(self.config)
        return self.config.get(key)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof = 1) of the values that are not None; std None for n < 2."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None, 0
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return mean, std, len(xs)


def partition_label(config: dict[str, Any]) -> str:
    """'iid' or 'Nc=<classes per client>'."""
    if config.get("partitioning") == "noniid":
        return f"Nc={config.get('classes-per-client')}"
    return "iid"


def partition_order(label: str) -> tuple[int, int]:
    """Sort key: Nc ascending, iid last (the mildest heterogeneity)."""
    m = re.match(r"Nc=(\d+)$", label)
    return (0, int(m.group(1))) if m else (1, 0)


def collect(root: str | Path) -> tuple[list[Group], list[RunData], list[str]]:
    """(configurations with at least one finished run, unfinished runs, warnings) under ``root``."""
    root = Path(root)
    manifests = read_manifests(root)
    finished: list[RunData] = []
    unfinished: list[RunData] = []
    warnings: list[str] = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()):
        if ".old-" in path.name:
            continue  # a run set aside by resume=false
        try:
            stored = json.loads((path / CONFIG_FILE).read_text())
        except ValueError:
            warnings.append(f"{path}: unreadable config.json, skipped")
            continue
        label, seed = split_name(path.name)
        entry = manifests.get(path.name, {})
        agreement_file = path / "analysis" / "mask_agreement.json"
        run = RunData(
            path=path,
            name=path.name,
            family=entry.get("family") or path.name.split("-")[0],
            label=entry.get("label") or label,
            seed=int(stored.get("config", {}).get("seed", seed or 0)),
            kind=stored.get("kind", "federated"),
            config=stored.get("config", {}),
            rows=read_rows(path),
            finished=(path / SUMMARY_FILE).is_file(),
            point=entry.get("point", {}),
            agreement=json.loads(agreement_file.read_text()) if agreement_file.is_file() else None,
        )
        (finished if run.finished else unfinished).append(run)
    groups: dict[tuple[str, str], Group] = {}
    for run in finished:
        key = (run.family, run.label)
        if key not in groups:
            groups[key] = Group(run.family, run.label, run.kind, [])
        groups[key].runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: r.seed)
        reference = _identity(group.runs[0].config)
        for run in group.runs[1:]:
            differing = sorted(k for k, v in _identity(run.config).items() if reference.get(k) != v)
            if differing:
                warnings.append(
                    f"{group.label}: {run.name} differs from {group.runs[0].name} in {', '.join(differing)} "
                    "(averaged anyway)"
                )
        seeds = group.seeds
        if len(set(seeds)) != len(seeds):
            warnings.append(f"{group.label}: repeated seeds {seeds}")
    ordered = sorted(groups.values(), key=lambda g: (g.family, _sort_key(g)))
    return ordered, unfinished, warnings


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NOT_SETTINGS}


def _sort_key(group: Group) -> tuple:
    c = group.config
    return (
        partition_order(partition_label(c)),
        c.get("mask-rule", ""),
        c.get("sparsity", 0) if c.get("mask-rule", "none") != "none" else 0,
        c.get("calibration-rounds", 0) if c.get("mask-rule", "none") != "none" else 0,
        c.get("local-steps", 0),
        str(c.get("lr-schedule", "")),
        group.label,
    )


def varied_settings(groups: Sequence[Group]) -> list[str]:
    """The keys (and 'partition') that differ between these configurations, in a readable order."""
    keys = []
    for key in ("partition", *SETTING_NAMES, *sorted({k for g in groups for k in _identity(g.config)})):
        if key in keys or key in ("partitioning", "classes-per-client"):
            continue
        if len({json.dumps(g.setting(key)) for g in groups}) > 1:
            keys.append(key)
    return keys


def settings_text(group: Group, keys: Sequence[str]) -> str:
    """``Nc=5, J=8, rounds=200``: the group's values of ``keys``."""
    parts = []
    for key in keys:
        value = group.setting(key)
        name = SETTING_NAMES.get(key, key)
        if key == "mask-rule" and value == "none":
            value = "dense"
        rule = group.config.get("mask-rule", "none")
        if key == "sparsity" and rule == "none":
            continue  # a dense run has no sparsity
        if key == "calibration-rounds" and rule not in ("least-sensitive", "most-sensitive"):
            continue  # only the sensitivity rules calibrate in rounds
        text = value if isinstance(value, str) else _fmt_value(value)
        parts.append(f"{name}={text}" if name else str(text))
    return ", ".join(parts)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    return str(value).lower() if isinstance(value, bool) else str(value)


def format_mean_std(mean: float | None, std: float | None, scale: float = 1.0, decimals: int = 2) -> str:
    """``74.12 ± 0.35``; ``74.12`` for one seed; ``—`` when missing."""
    if mean is None:
        return "—"
    text = f"{mean * scale:.{decimals}f}"
    return text + (f" ± {std * scale:.{decimals}f}" if std is not None else "")


# ---------------------------------------------------------------------------------------------------------------
# The table.


def table_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One CSV row per configuration: identity, settings, and mean/std/n of every metric."""
    out = []
    for group in groups:
        row: dict[str, Any] = {
            "family": group.family,
            "configuration": group.label,
            "kind": group.kind,
            "seeds": " ".join(str(s) for s in group.seeds),
            "n_seeds": len(group.runs),
        }
        for key in CSV_SETTINGS:
            row[key] = group.config.get(key)
        for metric in METRICS:
            mean, std, n = group.stat(metric)
            row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"] = mean, std, n
        out.append(row)
    return out


def write_csv(groups: Sequence[Group], path: Path) -> Path:
    rows = table_rows(groups)
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue())
    return path


def markdown_table(groups: Sequence[Group]) -> str:
    """The readable table: one row per configuration, metrics as mean ± std over seeds, accuracies in %."""
    metrics = [m for m in MARKDOWN_METRICS if any(g.stat(m)[0] is not None for g in groups)]
    units = {}
    for m in metrics:
        largest = max(abs(g.stat(m)[0] or 0.0) for g in groups)
        units[m] = SMALL_UNITS[m] if m in SMALL_UNITS and largest < 1.0 else METRICS[m]
    header = ["family", "configuration", "settings", "seeds", *(units[m][0] for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(metrics)) + "|"]
    by_family: dict[str, list[Group]] = {}
    for group in groups:
        by_family.setdefault(group.family, []).append(group)
    for family, members in by_family.items():
        keys = varied_settings(members)
        for group in members:
            cells = [family, group.label, settings_text(group, keys) or "—", str(len(group.runs))]
            for metric in metrics:
                _, scale, decimals = units[metric]
                mean, std, _ = group.stat(metric)
                cells.append(format_mean_std(mean, std, scale, decimals))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarize(root: str | Path, out: str | Path | None = None, figures: bool = True) -> dict[str, Any]:
    """Write the table and the figures for the runs under ``root``; returns what was written and left out."""
    from fedtalos.study import figures as fig

    root = Path(root)
    out = Path(out) if out else root / "summary"
    groups, unfinished, warnings = collect(root)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(groups, out / "summary.csv")
    md = markdown_table(groups)
    n_runs = sum(len(g.runs) for g in groups)
    notes = [
        f"{len(groups)} configurations, {n_runs} finished runs under `{root}`. Metrics: mean ± sample std (ddof = 1) "
        "over seeds; accuracies in %; uploaded = bytes sent by clients over all phases; drift = weighted RMS "
        "distance of client updates from their mean, averaged over training rounds; trainable = mask density "
        "(1 − sparsity); time in rounds = the rounds' own wall time (start-up not included)."
    ]
    if unfinished:
        notes.append(f"Left out, unfinished: {', '.join(r.name for r in unfinished)}.")
    notes += [f"Note: {w}" for w in warnings]
    md_path = out / "summary.md"
    md_path.write_text("# Results\n\n" + md + "\n" + "\n\n".join(notes) + "\n")
    written = fig.study_figures(groups, out / "figures") if figures and groups else []
    return {
        "csv": csv_path,
        "markdown": md_path,
        "figures": written,
        "groups": groups,
        "unfinished": unfinished,
        "warnings": warnings,
        "table": md,
    }
