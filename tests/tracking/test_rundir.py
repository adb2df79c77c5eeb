"""Run directories: one writer at a time, and a crashed writer never blocks its own resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedtalos.config import RunConfig
from fedtalos.tracking.rundir import RunConfigMismatch, RunDirBusy, is_this_run, open_run_dir, read_record


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


GPU_RUN = {"device": "cuda", "dtype": "bfloat16", "gpu": "NVIDIA L4"}
CPU_HERE = {"device": "cpu", "dtype": "float32", "gpu": ""}


def test_config_json_records_the_resolved_environment_and_a_resume_elsewhere_is_refused(tmp_path: Path):
    import json

    from fedtalos.tracking.rundir import EnvironmentChanged

    config = _config(tmp_path)  # device = precision = 'auto': the hash cannot tell a GPU run from a CPU one
    with open_run_dir(config, "federated", environment=GPU_RUN) as run_dir:
        assert json.loads((run_dir.path / "config.json").read_text())["environment"] == GPU_RUN
    stored = (tmp_path / "r" / "config.json").read_bytes()
    with pytest.raises(EnvironmentChanged, match=r"(?s)device: 'cuda' → 'cpu'.*allow-device-change=true"):
        open_run_dir(config, "federated", environment=CPU_HERE)
    assert (tmp_path / "r" / "config.json").read_bytes() == stored  # nothing written by the refusal
    with open_run_dir(config, "federated", environment=GPU_RUN) as again:  # the same hardware resumes
        assert again.resumed


def test_allow_device_change_resumes_with_a_warning(tmp_path: Path, fedtalos_log):
    import json

    config = _config(tmp_path)
    open_run_dir(config, "federated", environment=GPU_RUN).close()
    with open_run_dir(config.replace(allow_device_change=True), "federated", environment=CPU_HERE) as run_dir:
        assert run_dir.resumed
        assert json.loads((run_dir.path / "config.json").read_text())["environment"] == CPU_HERE
    assert "gpu: 'NVIDIA L4' → ''" in fedtalos_log.text and "continuing" in fedtalos_log.text


def test_record_launch_adds_the_whole_wall_time_and_start_up(tmp_path):
    import json

    from fedtalos.tracking.rundir import SUMMARY_FILE, record_launch

    assert record_launch(tmp_path, 100.0, 200.0) is None, "no summary: nothing to add to"
    timeline = {"main_started": 130.0, "nodes_connected": 140.0, "first_round_done": 142.5}
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({"rounds": 3, "wall_s": 9.0, "timeline": timeline}))
    record_launch(tmp_path, 100.0, 200.0)
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["run_wall_s"] == 100.0 and summary["startup_s"] == 42.5 and summary["rounds"] == 3
    assert summary["startup"] == {"main_started": 30.0, "nodes_connected": 40.0, "first_round_done": 42.5}
    record_launch(tmp_path, 150.0, 160.0)  # a later launch (e.g. one that found the run finished): no old timeline
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["run_wall_s"] == 10.0 and summary["startup_s"] == 42.5, "start-up only from its own timeline"


def test_a_derived_name_is_that_of_the_kind_of_run_and_the_directory_knows_its_run(tmp_path: Path):
    config = RunConfig.from_mapping({"output-root": str(tmp_path), "model": "vit-tiny-test"})
    for kind in ("federated", "centralized"):
        with open_run_dir(config, kind) as run_dir:
            assert run_dir.path == config.run_dir(kind)
            record = read_record(run_dir.path)
            assert record is not None and is_this_run(record, config, kind)
            assert not is_this_run(record, config.replace(seed=1), kind)
    assert config.run_dir("federated").name.startswith("fedavg-iid-J4-seed0-")
    assert config.run_dir("centralized").name.startswith("central-full-cosine-lr0.01-seed0-")
    assert read_record(tmp_path / "absent") is None
    named = config.replace(run_name="same")
    open_run_dir(named, "federated").close()
    with pytest.raises(RunConfigMismatch, match="holds a federated run"):
        open_run_dir(named, "centralized")
