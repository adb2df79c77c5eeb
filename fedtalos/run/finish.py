"""The end of a run, for both kinds: ``summary.json`` (final and best metrics, mask totals, the mask file), the mask
report when the run directory lost it, and the plots."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedtalos.config import RunConfig
from fedtalos.editing.mask_file import MaskFile
from fedtalos.editing.masks import mask_stats
from fedtalos.run.phases import Kind, Row
from fedtalos.tracking.mask_artifact import mask_file_summary
from fedtalos.tracking.mask_report import MASK_FILE, mask_title, write_mask_report
from fedtalos.tracking.metrics import summarize_rows
from fedtalos.tracking.plots import plot_run
from fedtalos.tracking.rundir import RunDir

UNIT = {"federated": "round", "centralized": "epoch"}  # a metric row's index column, by kind of run


def finish_run(
    config: RunConfig,
    run_dir: RunDir,
    kind: Kind,
    *,
    rows: list[Row],
    mask: dict[str, torch.Tensor] | None,
    counts: dict[str, Any],
    extra: dict[str, Any],
    final_weights: Callable[[], Mapping[str, torch.Tensor]],
    initial_weights: Mapping[str, torch.Tensor] | None,
    mask_file: MaskFile | None,
    mask_source: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write the run's ``summary.json`` and its plots; returns the summary.

    Args:
        rows: every metric row of the run; the final and best metrics are those of the fine-tuned model ('train').
        mask: the run's mask, None for a dense run.
        counts: the run's length (``rounds``; ``epochs`` and ``steps``), after the kind, name and config hash.
        extra: what this kind of run adds after the metrics (federated: traffic and timeline; central: the head).
        final_weights: the final model (called only when a mask file is written).
        initial_weights: the built weights (the mask file records their hash).
        mask_file, mask_source: the ``mask-path`` file this run fine-tuned with and its record, else None.
    """
    train_rows = [r for r in rows if r.get("phase") == "train"]
    summary: dict[str, Any] = {
        "kind": kind,
        "run_name": run_dir.path.name,
        "config_hash": config.result_hash(),
        **counts,
        **summarize_rows(train_rows, index=UNIT[kind]),
        **extra,
    }
    if mask is not None:
        summary["mask"] = mask_stats(mask)
        if not (run_dir.path / MASK_FILE).is_file():  # e.g. deleted by hand: the checkpoint has it
            write_mask_report(run_dir.path, mask, mask_title(config, mask_file))
    summary |= mask_file_summary(config, mask, mask_source, final_weights, initial_weights, kind)
    run_dir.write_summary(summary)
    plot_run(run_dir.path)
    return summary
