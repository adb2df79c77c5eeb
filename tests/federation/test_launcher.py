"""The launcher reads Flower's final status from `flwr ls --format json`, also when that JSON comes coloured (as it
does under a Jupyter kernel: the Colab notebook's sweep saw a completed run as 'unknown')."""

from __future__ import annotations

import json
import subprocess

import pytest

from fedtalos.federation import launcher


def test_run_status_reads_coloured_json(monkeypatch: pytest.MonkeyPatch):
    record = {"success": True, "runs": [{"run-id": 7, "status": "finished:completed", "status-details": ""}]}
    plain = json.dumps(record, indent=2)
    coloured = plain.replace('"status"', '\x1b[1;34m"status"\x1b[0m').replace("{", "\x1b[1m{\x1b[0m")
    seen = {}

    def fake_run(command, env, **kwargs):
        seen["env"] = env
        return subprocess.CompletedProcess(command, 0, stdout=coloured, stderr="")

    monkeypatch.setattr(launcher.subprocess, "run", fake_run)
    assert launcher.run_status("7", {"FLWR_HOME": "/x"}) == ("finished:completed", "")
    assert seen["env"]["NO_COLOR"] == "1" and seen["env"]["FLWR_HOME"] == "/x"
