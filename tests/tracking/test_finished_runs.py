"""A run directory a team can share: a finished run started again says so and rewrites nothing (centralized,
federated, and the launcher's wall-time record); a run keeps a copy of its log lines in ``log.txt``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedtalos import server_app
from fedtalos.central.trainer import run_centralized
from fedtalos.config import RunConfig
from fedtalos.run.phases import total_units
from fedtalos.tracking.log_setup import LOG_FILE
from fedtalos.tracking.rundir import SUMMARY_FILE, finished_summary, record_launch
from tests.support.fakeruns import train_rows, write_run


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()
    }


def test_a_finished_centralized_run_says_so_and_rewrites_nothing(central_config, fedtalos_log):
    config = RunConfig.from_mapping(dict(central_config, epochs=1, **{"lr-schedule": "constant"}))
    run_dir, summary = run_centralized(config)
    log_text = (run_dir.path / LOG_FILE).read_text()
    assert f"run directory: {run_dir.path}" in log_text and "train    1 |" in log_text, "a copy of the log lines"
    before = snapshot(run_dir.path)
    fedtalos_log.clear()
    again, same = run_centralized(config)
    assert again.path == run_dir.path and same == summary
    assert f"already finished: {run_dir.path}" in fedtalos_log.text
    assert snapshot(run_dir.path) == before, "no file rewritten, not even the log"
    # a longer run of a constant schedule (the length is not in its identity) continues it: not finished
    longer = config.replace(epochs=2)
    assert longer.result_hash() == config.result_hash() and finished_summary(longer, "centralized") is None


def test_a_finished_federated_run_returns_before_the_preflight(tmp_path: Path, monkeypatch, fedtalos_log):
    values = {"model": "vit-tiny-test", "num-clients": 20, "num-server-rounds": 3, "lr-schedule": "constant"}
    values["output-root"] = str(tmp_path)
    run_dir = write_run(values, train_rows(3, 0.4))
    (run_dir / SUMMARY_FILE).write_text(
        json.dumps({"rounds": total_units(RunConfig.from_mapping(values), "federated")})
    )
    before = snapshot(run_dir)

    def no_preflight(*args, **kwargs):
        raise AssertionError("a finished run builds nothing")

    monkeypatch.setattr(server_app, "preflight", no_preflight)
    server_app.main(SimpleNamespace(), SimpleNamespace(run_config=values))
    assert f"already finished: {run_dir}" in fedtalos_log.text
    assert snapshot(run_dir) == before
    longer = {**values, "num-server-rounds": 5}
    assert RunConfig.from_mapping(longer).run_dir("federated") == run_dir, "the same run, to continue"
    with pytest.raises(AssertionError, match="builds nothing"):
        server_app.main(SimpleNamespace(), SimpleNamespace(run_config=longer))


def test_resume_false_is_never_finished(tmp_path: Path):
    values = {"model": "vit-tiny-test", "num-clients": 20, "num-server-rounds": 1, "output-root": str(tmp_path)}
    write_run(values, train_rows(1, 0.4))
    config = RunConfig.from_mapping(values)
    summary = {"rounds": 1}
    (config.run_dir("federated") / SUMMARY_FILE).write_text(json.dumps(summary))
    assert finished_summary(config, "federated") == summary
    assert finished_summary(config.replace(resume=False), "federated") is None
    assert finished_summary(config.replace(seed=1), "federated") is None, "another run"


def test_the_launcher_leaves_a_summary_written_before_its_launch(tmp_path: Path):
    path = tmp_path / SUMMARY_FILE
    path.write_text(json.dumps({"rounds": 3}))
    os.utime(path, (1000.0, 1000.0))
    assert record_launch(tmp_path, 2000.0, 2100.0) == {"rounds": 3}
    assert path.read_text() == json.dumps({"rounds": 3}) and path.stat().st_mtime == 1000.0


def test_a_federated_run_keeps_its_log_lines(fake_cifar_root: Path, tmp_path: Path):
    from tests.support.fakegrid import run_server
    from tests.support.tiny import TINY_FEDERATION, offline_tiny, task_identity

    values = offline_tiny(fake_cifar_root, tmp_path, {**TINY_FEDERATION, "num-server-rounds": 1, "run-name": "r"})
    with task_identity():
        run_dir, _ = run_server(values)
    lines = (run_dir / LOG_FILE).read_text().splitlines()
    assert lines[0].endswith(f"run directory: {run_dir}") and any("train    1 |" in line for line in lines)
