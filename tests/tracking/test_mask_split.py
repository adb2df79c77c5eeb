"""A mask file's frozen head was fitted on one seed's train split: a run of another split refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedtalos.config import ConfigError, RunConfig
from fedtalos.editing import mask_file as mf
from fedtalos.tracking.mask_artifact import open_mask_path

WEIGHTS = {"w": torch.arange(10.0), "head.weight": torch.ones(2, 3), "head.bias": torch.zeros(2)}


def _mask_file(path: Path, seed: int, val_fraction: float = 0.1) -> Path:
    head = {k: WEIGHTS[k] for k in mf.HEAD_KEYS}
    record = mf.MaskFile(
        {"w": torch.arange(10) < 3},
        head,
        "vit-tiny-test",
        mf.weights_hash(WEIGHTS),
        rule="least-sensitive",
        sparsity=0.7,
        scope="global",
        rounds=1,
        samples=8,
        seed=seed,
        head_kind="ridge",
        calibrated="federated",
        config={"seed": seed, "val-fraction": val_fraction},
    )
    mf.write(path, record)
    return path


def _config(path: Path, **values) -> RunConfig:
    return RunConfig.from_mapping({"model": "vit-tiny-test", "image-size": 32, "mask-path": str(path), **values})


def test_a_mask_file_of_the_runs_own_split_is_accepted(tmp_path: Path):
    path = _mask_file(tmp_path / "m.safetensors", seed=1)
    assert open_mask_path(_config(path, seed=1), WEIGHTS).seed == 1


@pytest.mark.parametrize(("seed", "val_fraction"), [(2, 0.1), (1, 0.2)])
def test_a_mask_file_fitted_on_another_split_is_refused(tmp_path: Path, seed: int, val_fraction: float):
    path = _mask_file(tmp_path / "m.safetensors", seed=1)
    with pytest.raises(ConfigError, match="train split of seed 1") as refused:
        open_mask_path(_config(path, seed=seed, **{"val-fraction": val_fraction}), WEIGHTS)
    assert f"fedtalos edit --seed {seed}" in str(refused.value) and "mask-any-split" in str(refused.value)
    config = _config(path, seed=seed, **{"val-fraction": val_fraction, "mask-any-split": True})
    assert open_mask_path(config, WEIGHTS).seed == 1, "accepted when asked to"
