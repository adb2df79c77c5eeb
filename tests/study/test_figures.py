"""The study figures: every one is drawn from the fake study, and the per-layer mask densities are grouped by layer
from the runs' own mask reports."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fedtalos.study.mask_figures import density_by_block
from fedtalos.study.tables import summarize
from fedtalos.tracking.mask_report import DENSITY_FILE, read_density_rows, write_mask_report
from tests.support.fakeruns import write_study

ALL_FIGURES = [
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


def test_every_figure_is_drawn_with_the_data_it_plots(tmp_path: Path):
    root = write_study(tmp_path / "runs")
    result = summarize(root, tmp_path / "summary")
    names = [p.name for p in result["figures"]]
    assert sorted(names) == sorted(ALL_FIGURES)
    finished = {p.name for p in root.iterdir() if (p / "summary.json").is_file()}
    for png in result["figures"]:
        with open(png.with_suffix(".csv")) as f:
            rows = list(csv.DictReader(f))
        assert rows, f"{png.name}: a row per point"
        for row in rows:
            runs = row["runs"].split()
            assert set(runs) <= finished, f"{png.name}: {row}"
            assert int(row["n"]) == len(runs) > 0 or row["value"] == "", f"{png.name}: n is the runs behind it: {row}"
    curves = list(csv.DictReader((tmp_path / "summary" / "figures" / "curves-noniid.csv").read_text().splitlines()))
    last = next(r for r in curves if r["series"].startswith("Nc=1, J=2") and r["metric"] == "test_acc")
    assert (float(last["value"]), int(last["n"])) == (pytest.approx(11.0), 2), "seeds 0, 1: 10 % and 12 %"


def test_densities_are_grouped_by_layer(tmp_path: Path):
    # trainable entries chosen per tensor: (shape, trainable)
    chosen = {
        "cls_token": ((1, 1, 4), 1),
        "pos_embed": ((1, 2, 4), 7),
        "patch_embed.proj.weight": ((4, 12), 12),
        "patch_embed.proj.bias": ((4,), 0),
        "blocks.0.norm1.weight": ((4,), 4),
        "blocks.0.attn.qkv.weight": ((12, 4), 12),
        "blocks.0.attn.qkv.bias": ((12,), 0),
        "blocks.0.ls1.gamma": ((4,), 4),
        "blocks.1.mlp.fc2.weight": ((4, 16), 16),
        "blocks.1.norm2.bias": ((4,), 1),
        "norm.weight": ((4,), 2),
    }
    mask = {n: (torch.arange(torch.Size(s).numel()) < k).reshape(s) for n, (s, k) in chosen.items()}
    write_mask_report(tmp_path, mask)
    kinds, outside = density_by_block(read_density_rows(tmp_path / DENSITY_FILE))
    assert kinds["attn.qkv"] == {0: pytest.approx(12 / 60)}, "weight and bias of a kind together"
    assert kinds["norm"] == {0: 1.0, 1: 0.25}, "the blocks' LayerNorms, by block"
    assert kinds["mlp.fc2"] == {1: 0.25}
    assert kinds["other"] == {0: 1.0}, "a tensor of no kind counts apart"
    assert outside == {
        "cls + position": pytest.approx(8 / 12),
        "patch embedding": pytest.approx(12 / 52),
        "final norm": 0.5,
    }
