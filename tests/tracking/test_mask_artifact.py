"""The record of a run's mask file: written once, and a file replaced under a run in progress is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedtalos.config import ConfigError, RunConfig
from fedtalos.editing import mask_file as mf
from fedtalos.tracking.mask_artifact import MASK_SOURCE_FILE, read_mask_source, record_mask_source


def a_mask_file(path: Path, keep: float) -> mf.MaskFile:
    mask = {"w": torch.arange(10) < 10 * keep}
    head = {"head.weight": torch.ones(2, 3), "head.bias": torch.zeros(2)}
    info = dict(rule="random", sparsity=1 - keep, scope="global", rounds=1, samples=0, seed=0, head_kind="ridge")
    return mf.write(path, mf.MaskFile(mask, head, "vit-tiny-test", "0" * 64, calibrated="centralized", **info))


def test_the_source_is_recorded_once_and_a_replaced_file_is_refused(tmp_path: Path):
    config = RunConfig.from_mapping({"mask-path": str(tmp_path / "m.safetensors")})
    first = a_mask_file(tmp_path / "m.safetensors", 0.3)
    record = record_mask_source(tmp_path, config, first)
    assert record["hash"] == first.content_hash and record["density"] == pytest.approx(0.3)
    assert read_mask_source(tmp_path) == json.loads((tmp_path / MASK_SOURCE_FILE).read_text()) == record
    assert record_mask_source(tmp_path, config, first) == record, "a resume with the same file"
    replaced = a_mask_file(tmp_path / "m.safetensors", 0.5)
    with pytest.raises(ConfigError, match="changed since this run started"):
        record_mask_source(tmp_path, config, replaced)
    assert read_mask_source(tmp_path / "nowhere") is None
