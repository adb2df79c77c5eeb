"""Run directories written the way the apps write them (``open_run_dir``, ``MetricsLog``, ``write_mask_report``,
``write_summary``), with metric values and masks chosen by the test, so that tables and figures can be checked
against known numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedtalos.config import RunConfig
from fedtalos.editing.masks import mask_stats
from fedtalos.study.grid import parse_grid
from fedtalos.study.plan import plan, write_manifest
from fedtalos.tracking.mask_report import write_mask_report
from fedtalos.tracking.metrics import MetricsLog
from fedtalos.tracking.rundir import open_run_dir


def write_run(
    values: Mapping[str, Any],
    rows: Sequence[dict[str, Any]],
    kind: str = "federated",
    finished: bool = True,
    mask: Mapping[str, Tensor] | None = None,
) -> Path:
    """A run directory for the run config ``values`` holding ``rows``; ``summary.json`` when ``finished``.

    ``mask`` (name → bool tensor, True = trainable): the run's mask report (``mask.npz``, ``mask_density.csv``,
    ``plots/mask_density.png``) and the mask totals of its ``summary.json``, as an editing run writes them."""
    config = RunConfig.from_mapping(values)
    run_dir = open_run_dir(config, kind)
    log = MetricsLog(run_dir.path)
    log.restore([])
    for row in rows:
        log.append(row)
    if mask is not None:
        write_mask_report(run_dir.path, mask, config.run_name)
    if finished:
        summary: dict[str, Any] = {"kind": kind, "config_hash": config.result_hash(), "rounds": len(rows)}
        if mask is not None:
            summary["mask"] = mask_stats(mask)
        run_dir.write_summary(summary)
    return run_dir.path


def train_rows(
    rounds: int,
    final_test_acc: float,
    *,
    val: Sequence[float] | None = None,
    drift: float | Sequence[float] = 0.1,
    bytes_up: int = 1000,
    first_step: int = 1,
    eval_every: int = 1,
) -> list[dict[str, Any]]:
    """``rounds`` training rows: validation every ``eval_every`` rounds, the test at the last round."""
    rows = []
    for r in range(1, rounds + 1):
        row: dict[str, Any] = {
            "phase": "train",
            "round": r,
            "step": first_step + r - 1,
            "train_loss": 2.0 - r * 0.01,
            "drift": drift if isinstance(drift, float | int) else drift[r - 1],
            "bytes_up": bytes_up,
            "bytes_down": 2 * bytes_up,
            "wall_s": 6.0,
        }
        if r % eval_every == 0 or r == rounds:
            acc = val[(r - 1) // eval_every] if val is not None else final_test_acc * r / rounds
            row.update(val_acc=acc, val_loss=3.0 - acc)
        if r == rounds:
            row.update(test_acc=final_test_acc, test_loss=3.0 - final_test_acc)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# A whole study: four families (dense non-iid, sparse, rules, centralized), two seeds each, with known numbers.

COMMON = {"num-clients": 100, "fraction-train": 0.1, "lr-schedule": "constant", "model": "vit-tiny-test"}
PARTITION_ACC = {"iid": 0.6, 1: 0.1, 5: 0.4}  # final test accuracy of J=2, seed 0, by partition
# The masked tensors of the fake runs (a two-block ViT in miniature) and their shapes.
MASK_SHAPES: dict[str, tuple[int, ...]] = {
    "cls_token": (1, 1, 8),
    "pos_embed": (1, 5, 8),
    "patch_embed.proj.weight": (8, 50),
    "blocks.0.attn.qkv.weight": (30, 10),
    "blocks.0.attn.proj.weight": (10, 10),
    "blocks.0.mlp.fc1.weight": (20, 10),
    "blocks.0.mlp.fc2.weight": (10, 20),
    "blocks.0.norm1.weight": (10,),
    "blocks.1.attn.qkv.weight": (30, 10),
    "blocks.1.attn.proj.weight": (10, 10),
    "blocks.1.mlp.fc1.weight": (20, 10),
    "blocks.1.mlp.fc2.weight": (10, 20),
    "blocks.1.norm2.weight": (10,),
    "norm.weight": (10,),
}


def study_mask(rule: str, sparsity: float) -> dict[str, Tensor]:
    """A mask over :data:`MASK_SHAPES` whose per-tensor density leans a different way per rule: tensor i keeps
    ``min(n, round(n (1 − s) tilt_i))`` entries (the first ones in row-major order)."""
    mask = {}
    for i, (name, shape) in enumerate(MASK_SHAPES.items()):
        n = math.prod(shape)
        tilt = {"least-sensitive": 1 + 0.5 * math.sin(i), "random": 1.0}.get(rule, 1 - 0.4 * math.cos(i))
        kept = min(n, round(n * (1 - sparsity) * tilt))
        mask[name] = (torch.arange(n) < kept).reshape(shape)
    return mask


def noniid_acc(c: RunConfig) -> float:
    """The final test accuracy of a run of the non-iid family."""
    part = "iid" if c.partitioning == "iid" else c.classes_per_client
    return (
        PARTITION_ACC[part]
        - (0.05 if c.local_steps == 4 else 0.0)
        + (0.03 if c.head == "ridge" else 0.0)
        + 0.02 * c.seed
    )


def write_noniid_family(root: Path) -> None:
    """Dense FedAvg over Nc ∈ {1, 5} and iid × J ∈ {2, 4}, J × rounds = 8; drift grows with J and heterogeneity."""
    grid = parse_grid(
        {
            "sweep": {"family": "noniid", "seeds": [0, 1]},
            "base": COMMON,
            "grid": [
                {"partitioning": "noniid", "classes-per-client": [1, 5], "local-steps": [2, 4]},
                {"partitioning": ["iid"], "local-steps": [2, 4]},
                # the matched dense control of the editing families: their frozen ridge head, J and rounds
                {"partitioning": ["iid"], "local-steps": [2], "head": ["ridge"]},
                {"partitioning": "noniid", "classes-per-client": [5], "local-steps": [2], "head": ["ridge"]},
            ],
            "scale": {"num-server-rounds": {"per": "local-steps", "product": 8}},
        }
    )
    runs = plan(grid, output_root=root)
    write_manifest(runs)
    for run in runs:
        c = run.config
        heterogeneity = {1: 4.0, 5: 2.0}.get(c.classes_per_client, 1.0) if c.partitioning == "noniid" else 1.0
        scale = 0.01 * c.local_steps * heterogeneity * (1 + 0.1 * c.seed)
        drift = [scale / r for r in range(1, c.num_server_rounds + 1)]
        write_run(run.overrides, train_rows(c.num_server_rounds, noniid_acc(c), drift=drift, bytes_up=4_000_000))


def write_editing_families(root: Path) -> None:
    """Sparse fine-tuning (sparsity × R') and the rules side by side (iid and Nc = 5), with mask reports, and a
    mask-agreement record for the least-sensitive rules."""
    editing = {**COMMON, "head": "ridge", "local-steps": 2, "num-server-rounds": 4}
    sparse = parse_grid(
        {
            "sweep": {"family": "sparse", "seeds": [0, 1]},
            "base": {**editing, "partitioning": "iid", "mask-rule": "least-sensitive"},
            "grid": {"sparsity": [0.5, 0.9], "calibration-rounds": [1, 2]},
        }
    )
    rules = parse_grid(
        {
            "sweep": {"family": "rules", "seeds": [0, 1]},
            "base": {**editing, "sparsity": 0.9, "calibration-rounds": 2},
            "grid": [
                {"partitioning": ["iid"], "mask-rule": ["least-sensitive", "random", "lowest-magnitude"]},
                {
                    "partitioning": "noniid",
                    "classes-per-client": [5],
                    "mask-rule": ["least-sensitive", "random", "lowest-magnitude"],
                },
            ],
        }
    )
    for grid in (sparse, rules):
        runs = plan(grid, output_root=root)
        write_manifest(runs)
        for run in runs:
            c = run.config
            calibration = c.calibration_rounds if c.mask_rule.endswith("sensitive") else 1
            rows: list[dict[str, Any]] = [{"phase": "head", "round": 1, "step": 1, "bytes_up": 10_000_000}]
            rows += [
                {"phase": "calibration", "round": r, "step": 1 + r, "bytes_up": 20_000_000, "mask_density": 0.5}
                for r in range(1, calibration + 1)
            ]
            acc = 0.55 - 0.2 * c.sparsity + 0.01 * c.calibration_rounds + 0.01 * c.seed
            acc -= {"random": 0.05, "lowest-magnitude": 0.03}.get(c.mask_rule, 0.0)
            acc -= 0.2 if c.partitioning == "noniid" else 0.0
            rows += train_rows(4, acc, bytes_up=int(4_000_000 * (1 - c.sparsity)), first_step=2 + calibration)
            path = write_run(run.overrides, rows, mask=study_mask(c.mask_rule, c.sparsity))
            if run.family == "rules" and c.mask_rule == "least-sensitive":
                jac = 0.8 - (0.5 if c.partitioning == "noniid" else 0.0) + 0.02 * c.seed
                record = {"mean_jaccard": jac, "pairwise_jaccard": jac - 0.1, "chance_jaccard": 0.0526}
                (path / "analysis").mkdir()
                (path / "analysis" / "mask_agreement.json").write_text(json.dumps(record))


def write_central_family(root: Path) -> None:
    """Centralized runs with a cosine and a step schedule, five epochs each."""
    grid = parse_grid(
        {
            "sweep": {"family": "central", "kind": "centralized", "seeds": [0, 1]},
            "base": {"epochs": 5, "model": "vit-tiny-test"},
            "grid": {"lr-schedule": ["cosine", "step"]},
        }
    )
    runs = plan(grid, output_root=root)
    write_manifest(runs)
    for run in runs:
        top = 0.8 if run.config.lr_schedule == "cosine" else 0.75
        rows = [
            {
                "phase": "train",
                "epoch": e,
                "step": 100 * e,
                "val_acc": top * e / 5,
                "val_loss": 3 - 2 * e / 5,
                "test_acc": top * e / 5 + 0.01 * run.seed,
                "test_loss": 3.1 - 2 * e / 5,
                "wall_s": 60.0,
            }
            for e in range(1, 6)
        ]
        write_run(run.overrides, rows, kind="centralized")


def write_study(root: Path) -> Path:
    """Every family above under ``root``, and one unfinished run (listed, left out of the table)."""
    write_noniid_family(root)
    write_editing_families(root)
    write_central_family(root)
    write_run({**COMMON, "run-name": "noniid-nc1-J2-seed2", "seed": 2, "output-root": str(root)}, [], finished=False)
    return root
