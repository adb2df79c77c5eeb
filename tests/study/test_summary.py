"""``fedtalos summarize``: the table's rows and mean ± std values against numbers computed here, and every figure."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedtalos.cli.main import main
from fedtalos.study.grid import parse_grid, plan, write_manifest
from fedtalos.study.summary import format_mean_std, mean_std, summarize
from tests.support.fakeruns import train_rows, write_run

COMMON = {"num-clients": 100, "fraction-train": 0.1, "lr-schedule": "constant", "model": "vit-tiny-test"}
PARTITION_ACC = {"iid": 0.6, 1: 0.1, 5: 0.4}  # final test accuracy of J=2, seed 0, by partition


def _noniid_acc(c) -> float:
    part = "iid" if c.partitioning == "iid" else c.classes_per_client
    return PARTITION_ACC[part] - (0.05 if c.local_steps == 4 else 0.0) + 0.02 * c.seed


def _write_noniid(root: Path) -> None:
    grid = parse_grid(
        {
            "sweep": {"family": "noniid", "seeds": [0, 1]},
            "base": COMMON,
            "grid": [
                {"partitioning": "noniid", "classes-per-client": [1, 5], "local-steps": [2, 4]},
                {"partitioning": ["iid"], "local-steps": [2, 4]},
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
        write_run(run.overrides, train_rows(c.num_server_rounds, _noniid_acc(c), drift=drift, bytes_up=4_000_000))


DENSITY_TENSORS = {
    "cls_token": 8,
    "pos_embed": 40,
    "patch_embed.proj.weight": 400,
    "blocks.0.attn.qkv.weight": 300,
    "blocks.0.attn.proj.weight": 100,
    "blocks.0.mlp.fc1.weight": 200,
    "blocks.0.mlp.fc2.weight": 200,
    "blocks.0.norm1.weight": 10,
    "blocks.1.attn.qkv.weight": 300,
    "blocks.1.attn.proj.weight": 100,
    "blocks.1.mlp.fc1.weight": 200,
    "blocks.1.mlp.fc2.weight": 200,
    "blocks.1.norm2.weight": 10,
    "norm.weight": 10,
}


def _density(rule: str, sparsity: float) -> dict[str, tuple[int, int]]:
    out = {}
    for i, (name, n) in enumerate(DENSITY_TENSORS.items()):
        tilt = {"least-sensitive": 1 + 0.5 * math.sin(i), "random": 1.0}.get(rule, 1 - 0.4 * math.cos(i))
        out[name] = (n, min(n, round(n * (1 - sparsity) * tilt)))
    return out


def _write_editing(root: Path) -> None:
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
            path = write_run(run.overrides, rows, mask_density=_density(c.mask_rule, c.sparsity))
            if run.family == "rules" and c.mask_rule == "least-sensitive":
                jac = 0.8 - (0.5 if c.partitioning == "noniid" else 0.0) + 0.02 * c.seed
                record = {"mean_jaccard": jac, "pairwise_jaccard": jac - 0.1, "chance_jaccard": 0.0526}
                (path / "analysis").mkdir()
                (path / "analysis" / "mask_agreement.json").write_text(json.dumps(record))


def _write_central(root: Path) -> None:
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


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study") / "runs"
    _write_noniid(root)
    _write_editing(root)
    _write_central(root)
    # an unfinished run: listed, left out of the table
    write_run({**COMMON, "run-name": "noniid-nc1-J2-seed2", "seed": 2, "output-root": str(root)}, [], finished=False)
    return root


def test_mean_std_and_format():
    assert mean_std([0.5, 0.7, None]) == pytest.approx((0.6, math.sqrt(0.02), 2))
    assert mean_std([0.3]) == (0.3, None, 1) and mean_std([None]) == (None, None, 0)
    assert format_mean_std(0.6, math.sqrt(0.02), 100, 2) == "60.00 ± 14.14"
    assert format_mean_std(0.6, None, 100, 1) == "60.0" and format_mean_std(None, None) == "—"


def test_table_has_one_row_per_configuration_with_mean_and_std(study: Path):
    result = summarize(study, figures=False)
    with open(result["csv"]) as f:
        rows = list(csv.DictReader(f))
    labels = [r["configuration"] for r in rows]
    assert len(labels) == 6 + 2 + 4 + 6 == len(set(labels)), "noniid 6, central 2, sparse 4, rules 6"
    assert [r.name for r in result["unfinished"]] == ["noniid-nc1-J2-seed2"]
    by_label = {r["configuration"]: r for r in rows}
    nc1 = by_label["noniid-nc1-J2"]
    assert (nc1["family"], nc1["seeds"], nc1["n_seeds"]) == ("noniid", "0 1", "2")
    # seeds 0 and 1: 0.10 and 0.12 → mean 0.11, sample std 0.0141421
    assert float(nc1["final_test_acc_mean"]) == pytest.approx(0.11)
    assert float(nc1["final_test_acc_std"]) == pytest.approx(0.02 / math.sqrt(2))
    assert float(nc1["final_test_acc_n"]) == 2
    # 4 rounds × 4 MB uploaded
    assert float(nc1["uploaded_gb_mean"]) == pytest.approx(0.016)
    drift = [0.01 * 2 * 4.0 * s / r for s in (1.0, 1.1) for r in range(1, 5)]
    assert float(nc1["mean_drift_mean"]) == pytest.approx(sum(drift[:4]) / 8 + sum(drift[4:]) / 8)
    sparse = by_label["sparse-s0.9-R2"]
    assert float(sparse["mask_density_mean"]) == pytest.approx(
        sum(t for _, t in _density("least-sensitive", 0.9).values()) / sum(DENSITY_TENSORS.values())
    )
    # head + 2 calibration rounds + 4 sparse rounds (10 % of 4 MB each)
    assert float(sparse["uploaded_gb_mean"]) == pytest.approx(0.010 + 0.040 + 4 * 0.0004)
    central = by_label["central-cosine"]
    assert central["kind"] == "centralized" and float(central["final_test_acc_mean"]) == pytest.approx(0.805)
    assert central["uploaded_gb_mean"] == ""
    md = result["markdown"].read_text()
    assert "| noniid | noniid-nc1-J2 | Nc=1, J=2, rounds=4 | 2 | 11.00 ± 1.41 |" in md
    assert "| central | central-cosine | cosine | 2 | 80.50 ± 0.71 |" in md
    assert "noniid-nc1-J2-seed2" in md, "the unfinished run is named under the table"


def test_every_figure_is_drawn(study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "summary"
    assert main(["summarize", str(study), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert names == sorted(
        [
            "curves-central.png",
            "curves-noniid.png",
            "curves-rules.png",
            "curves-sparse.png",
            "heatmap-noniid.png",
            "accuracy-vs-sparsity.png",
            "accuracy-vs-calibration-rounds.png",
            "rules.png",
            "mask-density-rules.png",
            "mask-density-sparsity.png",
            "drift-noniid.png",
            "drift-rules.png",
            "drift-sparse.png",
            "communication.png",
            "mask-agreement.png",
        ]
    )
    assert all((out / "figures" / n).stat().st_size > 20_000 for n in names), "real figures, not empty canvases"
    assert "| noniid | noniid-iid-J4 |" in printed and f"figure: {out / 'figures' / 'heatmap-noniid.png'}" in printed
