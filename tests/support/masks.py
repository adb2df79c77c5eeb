"""``fedtalos edit`` in tests: the command line of run-config values, and its federated path on a FakeGrid."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from fedtalos.cli import edit
from fedtalos.launch import flwr_run as launcher
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
