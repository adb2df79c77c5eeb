"""``fedtalos summarize RUNS_DIR``: one table of every configuration (mean ± std over seeds) and the study figures.

The configurations and their numbers come from :mod:`fedtalos.study.results`. Writes ``<out>/summary.csv`` (mean,
std and n of every metric, one row per configuration, and for a configuration that fine-tunes sparsely its matched
dense control and the paired difference to it over seeds), ``<out>/summary.md`` (the readable table) and
``<out>/figures/*.png`` with a CSV of the drawn points beside each (see :mod:`fedtalos.study.figures` and
docs/figures.md); ``<out>`` defaults to ``RUNS_DIR/summary``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedtalos.study.figure_common import CALIBRATION_DATA, SPARSITY_AXES, controlled, dense_reference, editing_groups
from fedtalos.study.figures import study_figures
from fedtalos.study.results import Group, collect, settings_text, varied_settings

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
    "mask_jaccard": ("client–aggregate Jaccard (clients outside the calibration cohort)", 1.0, 3),
    "mask_jaccard_cohort": ("client–aggregate Jaccard (calibration-cohort members, in-sample)", 1.0, 3),
    "mask_jaccard_floor": ("iid subset–left-out aggregate Jaccard (noise floor)", 1.0, 3),
    "wall_min": ("time in rounds (min)", 1.0, 1),
    "run_min": ("run time (min)", 1.0, 1),
}
# Smaller units for the Markdown table when every value is below 1 of the default one (e.g. a test sweep).
SMALL_UNITS: dict[str, tuple[str, float, int]] = {
    "uploaded_gb": ("uploaded (MB)", 1e3, 2),
    "downloaded_gb": ("downloaded (MB)", 1e3, 2),
    "wall_min": ("time in rounds (s)", 60.0, 1),
    "run_min": ("run time (s)", 60.0, 1),
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
    "mask_jaccard_floor",
    "wall_min",
    "run_min",
)
# Settings in the CSV, one column each (the Markdown table shows only those that vary, see results.varied_settings).
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
    "mask-path",
)


def format_mean_std(mean: float | None, std: float | None, scale: float = 1.0, decimals: int = 2) -> str:
    """``74.12 ± 0.35``; ``74.12`` for one seed; ``—`` when missing."""
    if mean is None:
        return "—"
    text = f"{mean * scale:.{decimals}f}"
    return text + (f" ± {std * scale:.{decimals}f}" if std is not None else "")


# Metrics also reported as paired differences against the configuration's reference (same seeds).
PAIRED_METRICS = ("final_test_acc", "best_val_acc")


def references(groups: Sequence[Group]) -> dict[int, Group]:
    """id(configuration) → its reference: for a configuration that fine-tunes sparsely, its matched dense control
    (:func:`~fedtalos.study.figure_common.dense_reference`: same head, partition, J, rounds and the rest)."""
    found = {}
    for group in groups:
        reference = dense_reference(groups, group) if group.kind == "federated" and group.sparse else None
        if reference is not None:
            found[id(group)] = reference
    return found


def table_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One CSV row per configuration: identity, settings, mean/std/n of every metric, and the paired differences
    (mean/std/n over seeds of the per-seed difference) of :data:`PAIRED_METRICS` against its reference."""
    out = []
    refs = references(groups)
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
        row["mask_source"] = group.setting("mask-path")  # where a mask-path run's mask was calibrated, its hash
        for metric in METRICS:
            mean, std, n = group.stat(metric)
            row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"] = mean, std, n
        reference = refs.get(id(group))
        row["reference"] = reference.label if reference is not None else None
        for metric in PAIRED_METRICS:
            mean, std, n = group.paired(reference, metric) if reference is not None else (None, None, None)
            row[f"{metric}_paired_diff_mean"], row[f"{metric}_paired_diff_std"] = mean, std
            row[f"{metric}_paired_diff_n"] = n
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
    refs = references(groups)
    paired = ["Δ final test acc vs dense (pp, paired over seeds)"] if refs else []
    header = ["family", "configuration", "settings", "seeds", *(units[m][0] for m in metrics), *paired]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 4 + ["---:"] * (len(metrics) + len(paired))) + "|",
    ]
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
            if paired:
                cells.append(_paired_cell(group, refs.get(id(group))))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def left_out_of_figures(groups: Sequence[Group]) -> list[str]:
    """A note naming the editing configurations the accuracy figures leave out (:func:`controlled`), with their
    fine-tuning length, e.g. the one-round runs of an analysis family."""
    _, left = controlled(editing_groups(groups), (*SPARSITY_AXES, *CALIBRATION_DATA))
    if not left:
        return []
    names = ", ".join(
        f"{g.label} (J × rounds = {g.config.get('local-steps', 1) * g.config.get('num-server-rounds', 0)})"
        for g in left
    )
    return [
        "Left out of the accuracy figures (they compare configurations that differ only in rule and its scope, "
        "sparsity, R' and the calibration's clients and samples, "
        f"at the longest fine-tuning; docs/figures.md): {names}."
    ]


def _paired_cell(group: Group, reference: Group | None) -> str:
    """``−3.10 ± 0.40 (n = 3) vs noniid-iid-J4-head-ridge``: the paired difference of the final test accuracy."""
    if reference is None:
        return "—"
    mean, std, n = group.paired(reference, "final_test_acc")
    return f"{format_mean_std(mean, std, 100.0, 2)} (n = {n}) vs {reference.label}" if mean is not None else "—"


def summarize(
    root: str | Path | Sequence[str | Path], out: str | Path | None = None, figures: bool = True
) -> dict[str, Any]:
    """Write the table and the figures for the runs under ``root`` (one output root, or several: their runs are
    pooled, see :func:`~fedtalos.study.results.collect`); returns what was written and left out.

    ``out`` defaults to ``<the first root>/summary``."""
    roots = [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]
    root = ", ".join(f"{r}" for r in roots)
    out = Path(out) if out else roots[0] / "summary"
    groups, unfinished, warnings = collect(roots)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(groups, out / "summary.csv")
    md = markdown_table(groups)
    n_runs = len({r.path for g in groups for r in g.runs})  # a run shared by two families counts once
    notes = [
        f"{len(groups)} configurations, {n_runs} finished runs under `{root}`. Metrics: mean ± sample std (ddof = 1) "
        "over seeds; accuracies in %; uploaded = bytes sent by clients over all phases; drift = weighted RMS "
        "distance of client updates from their mean per weight of the whole model (frozen weights count, so dense and "
        "sparse runs compare), averaged over training rounds; trainable = mask density "
        "(1 − sparsity); time in rounds = the rounds' own wall time (start-up not included); run time = the "
        "whole wall time of the launch that finished the run, from `flwr run` to its end (start-up included); "
        "Δ vs dense = mean ± std over seeds of (this configuration − its matched dense control) at the same seed, "
        "the control fine-tuning densely with the same head, partition, J and rounds (docs/figures.md)."
    ]
    if unfinished:
        notes.append(f"Left out, unfinished: {', '.join(r.name for r in unfinished)}.")
    notes += [f"Note: {w}" for w in warnings]
    if figures:
        notes += left_out_of_figures(groups)
    md_path = out / "summary.md"
    md_path.write_text("# Results\n\n" + md + "\n" + "\n\n".join(notes) + "\n")
    written = study_figures(groups, out / "figures") if figures and groups else []
    return {
        "csv": csv_path,
        "markdown": md_path,
        "figures": written,
        "groups": groups,
        "unfinished": unfinished,
        "warnings": warnings,
        "table": md,
    }
