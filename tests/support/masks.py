"""Masks in tests: ``fedtalos edit``'s command line of run-config values and its federated path on a FakeGrid, and
run directories with the ``mask.npz`` that fedtalos wrote before masks had one file format."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from fedtalos.cli import edit
from fedtalos.editing.mask_file import read_mask
from fedtalos.editing.sparse import pack_mask
from fedtalos.launch import flwr_run as launcher
from fedtalos.tracking.mask_report import MASK_FILE, NPZ_MASK_FILE
from tests.support.fakegrid import run_server
from tests.support.tiny import task_identity

# The editing settings the mask tests share: a frozen ridge head, 2 least-sensitive rounds at sparsity 0.9.
EDIT = {
    "head": "ridge",
    "mask-rule": "least-sensitive",
    "sparsity": 0.9,
    "calibration-rounds": 2,
    "fisher-samples": 16,
}


def argv(values: Mapping[str, Any]) -> list[str]:
    """``--key value`` options (booleans as ``--key`` / ``--no-key``) of run-config values."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            out.append(f"--{key}" if value else f"--no-{key}")
        else:
            out += [f"--{key}", str(value)]
    return out


def fake_flwr_run(app: Path, overrides: Mapping[str, Any], federation_config: str, **_: Any) -> launcher.LaunchResult:
    """What ``flwr run`` does with the app, in process: the ServerApp's main against a FakeGrid of its clients."""
    with task_identity():
        run_server(dict(overrides))
    return launcher.LaunchResult("1", "finished:completed", "", 0)


def run_edit(values: Mapping[str, Any], out: Path, *, central: bool) -> int:
    """``fedtalos edit --out OUT [--central] <values>``; the federated path runs on a FakeGrid instead of Flower."""
    args = ["--out", str(out), *(["--central"] if central else []), *argv(values)]
    with mock.patch.object(launcher, "flwr_run", fake_flwr_run):
        return edit.main(args)


def write_npz_mask(path: Path, mask: Mapping[str, torch.Tensor]) -> None:
    """A mask in the ``mask.npz`` layout of older run directories: packed bits, names, each shape's ndim, and the
    shapes' dims concatenated."""
    shapes = [tuple(m.shape) for m in mask.values()]
    np.savez(
        path,
        bits=pack_mask(mask),
        names=np.array(list(mask), dtype=np.str_),
        ndims=np.array([len(s) for s in shapes], dtype=np.int64),
        dims=np.array([d for s in shapes for d in s], dtype=np.int64),
    )


def make_old_run_dir(run_dir: Path) -> None:
    """Turn a run directory into one written before the mask format: ``mask.npz`` in place of ``mask.safetensors``."""
    write_npz_mask(run_dir / NPZ_MASK_FILE, read_mask(run_dir / MASK_FILE))
    (run_dir / MASK_FILE).unlink()
