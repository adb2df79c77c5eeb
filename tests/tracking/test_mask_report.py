"""The one mask report: tensor names to layers, the density table written and read back, the files of a run (and
the mask.npz of older runs)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fedtalos.editing.mask_file import read_mask
from fedtalos.tracking.mask_report import (
    DENSITY_COLUMNS,
    DENSITY_FILE,
    MASK_FILE,
    NPZ_MASK_FILE,
    TensorLayer,
    layer_of,
    read_density_rows,
    read_run_mask,
    run_mask_path,
    write_mask_report,
)
from tests.support.masks import make_old_run_dir


def test_layer_of_names_blocks_and_top_level_modules():
    assert layer_of("blocks.3.attn.qkv.weight") == TensorLayer("blocks.3", 3, "attn.qkv.weight")
    assert layer_of("blocks.11.norm1.bias") == TensorLayer("blocks.11", 11, "norm1.bias")
    assert layer_of("patch_embed.proj.weight") == TensorLayer("patch_embed", None, "proj.weight")
    assert layer_of("cls_token") == TensorLayer("cls_token", None, "cls_token")
    assert layer_of("norm.weight") == TensorLayer("norm", None, "weight")


def test_the_report_holds_the_mask_its_densities_and_a_figure(tmp_path: Path):
    mask = {
        "cls_token": torch.tensor([[[True, False, False, False]]]),
        "blocks.0.attn.qkv.weight": torch.arange(12).reshape(3, 4) < 9,
        "blocks.0.norm1.weight": torch.zeros(4, dtype=torch.bool),
    }
    paths = write_mask_report(tmp_path, mask, "test")
    assert paths == [tmp_path / MASK_FILE, tmp_path / DENSITY_FILE, tmp_path / "plots" / "mask_density.png"]
    loaded = read_mask(tmp_path / MASK_FILE)
    assert list(loaded) == list(mask) and all(torch.equal(loaded[k], mask[k]) for k in mask)
    with open(tmp_path / DENSITY_FILE) as f:
        assert tuple(csv.DictReader(f).fieldnames or ()) == DENSITY_COLUMNS
    rows = read_density_rows(tmp_path / DENSITY_FILE)
    assert [(r["tensor"], r["layer"], r["shape"], r["numel"], r["trainable"]) for r in rows] == [
        ("cls_token", "cls_token", "1x1x4", 4, 1),
        ("blocks.0.attn.qkv.weight", "blocks.0", "3x4", 12, 9),
        ("blocks.0.norm1.weight", "blocks.0", "4", 4, 0),
    ]
    assert [r["density"] for r in rows] == [0.25, 0.75, 0.0]
    assert paths[2].stat().st_size > 10_000, "a drawn figure"


def test_reading_another_table_fails_with_the_missing_columns(tmp_path: Path):
    path = tmp_path / DENSITY_FILE
    path.write_text("tensor,entries,trainable,density\nw,4,1,0.25\n")
    with pytest.raises(ValueError, match="missing columns: layer, numel, shape"):
        read_density_rows(path)


def test_an_older_run_directory_is_read_from_its_mask_npz(tmp_path: Path):
    mask = {"blocks.0.attn.qkv.weight": torch.arange(12).reshape(3, 4) < 5, "cls_token": torch.ones(1, 1, 4).bool()}
    write_mask_report(tmp_path, mask)
    make_old_run_dir(tmp_path)
    assert not (tmp_path / MASK_FILE).exists() and run_mask_path(tmp_path) == tmp_path / NPZ_MASK_FILE
    loaded = read_run_mask(tmp_path)
    assert list(loaded) == list(mask) and all(torch.equal(loaded[k], mask[k]) for k in mask)
    write_mask_report(tmp_path, mask)  # a resumed run that writes its report again: the new file is read first
    assert run_mask_path(tmp_path) == tmp_path / MASK_FILE
    with pytest.raises(FileNotFoundError, match="holds no mask"):
        read_run_mask(tmp_path / "dense-run")
