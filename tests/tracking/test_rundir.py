"""Run directories: one writer at a time, and a crashed writer never blocks its own resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedtalos.config import RunConfig
from fedtalos.tracking.rundir import RunDirBusy, open_run_dir


def _config(tmp_path: Path) -> RunConfig:
    return RunConfig.from_mapping({"output-root": str(tmp_path), "run-name": "r", "model": "vit-tiny-test"})


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path: Path):
    config = _config(tmp_path)
    first = open_run_dir(config, "federated")
    with pytest.raises(RunDirBusy, match="flwr stop"):
        open_run_dir(config, "federated")
    with pytest.raises(RunDirBusy):
        open_run_dir(config.replace(resume=False), "federated")  # nor renamed aside under a live writer
    assert [p.name for p in tmp_path.iterdir()] == ["r"]
    first.close()
    with open_run_dir(config, "federated") as again:
        assert again.resumed


def test_a_killed_writer_releases_the_directory(tmp_path: Path):
    config = _config(tmp_path)
    script = (
        "import time\n"
        "from fedtalos.config import RunConfig\n"
        "from fedtalos.tracking.rundir import open_run_dir\n"
        f"held = open_run_dir(RunConfig.from_mapping({config.to_dict()!r}), 'federated')\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy):
            open_run_dir(config, "federated")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    with open_run_dir(config, "federated") as resumed:
        assert resumed.resumed
