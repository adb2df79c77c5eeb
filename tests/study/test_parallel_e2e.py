"""Parallel sweeps through the real commands (real `flwr run`s on private SuperLinks, tiny ViT, generated data).

1. ``fedtalos sweep --parallel 2``: 2 runs on 2 slots, each run once, the two slots' runs overlap in time.
2. Two ``fedtalos sweep`` processes started at once on another output root: the runs are split between them, one
   worker is SIGKILLed in the middle of a run, its claim is taken over (by the other worker or by the same command
   run again) and the run resumes; every run ends exactly once.
3. Every run of 2 ends bit-identical to the same run of 1 (weights, metric rows, summary): the slot, the sweep
   worker and the interruption change nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedtalos.cli.main import main
from fedtalos.study.claims import Claims
from fedtalos.study.grid import load_grid
from fedtalos.study.plan import plan
from tests.support.runs import assert_same_tensors, final_weights, result_summary, rows

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]  # 4-5 real runs: over the suite's 600 s on a loaded box

GRID = """
[sweep]
kind = "federated"
family = "par"
seeds = [0]

[base]
dataset-root = "{cifar}"
dataset-verify = false
dataset-download = false
model = "vit-tiny-test"
image-size = 16
device = "cpu"
num-clients = 2
fraction-train = 1.0
batch-size = 8
eval-every = 1
eval-batch-size = 64
lr-schedule = "constant"
num-server-rounds = 4
progress = false

[grid]
local-steps = [1, 2]
"""

FEDERATION = ["--federation-config", "client-resources-num-cpus=1"]


def _journal(run) -> list[dict]:
    path = run.sweep_dir / f"{run.name}.claims.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _kill_a_worker_mid_run(
    runs, workers: list[subprocess.Popen], timeout: float = 300.0
) -> tuple[str, subprocess.Popen]:
    """SIGKILL the worker holding the first run seen with a finished round and no summary: (that run, worker)."""
    pids = {w.pid: w for w in workers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in runs:
            metrics = run.run_dir / "metrics.jsonl"
            holder = Claims.read(run)
            started = metrics.is_file() and metrics.read_text().strip()
            if holder and holder.get("pid") in pids and started and not (run.run_dir / "summary.json").exists():
                victim = pids[holder["pid"]]
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                return run.name, victim
        if all(w.poll() is not None for w in workers):
            break
        time.sleep(0.05)
    raise AssertionError("no run was caught between its first round and its end")


def test_parallel_slots_and_two_workers_with_a_kill_end_bit_identical(
    fake_cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    grid = tmp_path / "par.toml"
    grid.write_text(GRID.format(cifar=fake_cifar_root))
    env = {"HF_HUB_OFFLINE": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    # 1. --parallel 2 on one output root.
    parallel = tmp_path / "parallel"
    assert main(["sweep", str(grid), "--output-root", str(parallel), "--parallel", "2", *FEDERATION]) == 0
    out = capsys.readouterr().out
    runs = plan(load_grid(grid), output_root=parallel)
    assert len(runs) == 2 and "2 slots: slot 1, slot 2" in out and "sweep finished: 2/2 runs complete" in out
    spans = {}
    for run in runs:
        journal = _journal(run)
        assert [e["event"] for e in journal] == ["claim", "release"] and journal[1]["outcome"] == "done"
        spans[run.name] = (journal[0]["slot"], journal[0]["time"], journal[1]["time"])
    assert {slot for slot, _, _ in spans.values()} == {1, 2}
    assert any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in spans.values() for b in spans.values()), (
        f"no two runs of different slots overlapped: {spans}"
    )

    # 2. Two sweep processes at once on another root; one of them is killed in the middle of a run.
    shared = tmp_path / "shared"
    command = [sys.executable, "-m", "fedtalos.cli", "sweep", str(grid), "--output-root", str(shared), *FEDERATION]
    process_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]  # noqa: SIM115 (closed below)
    workers = [
        subprocess.Popen(command, cwd=ROOT, env=process_env, stdout=log, stderr=subprocess.STDOUT) for log in logs
    ]
    shared_runs = plan(load_grid(grid), output_root=shared)
    try:
        killed, victim = _kill_a_worker_mid_run(shared_runs, workers)
        survivor = next(w for w in workers if w is not victim)
        assert survivor.wait(timeout=600) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
    # The same command again: whatever the killed worker left is taken over and finished.
    assert main(["sweep", str(grid), "--output-root", str(shared), *FEDERATION]) == 0
    capsys.readouterr()
    texts = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert all(" start par-" in text for text in texts), "both workers ran runs"
    for run in shared_runs:
        journal = _journal(run)
        done = [e for e in journal if e["event"] == "release" and e.get("outcome") == "done"]
        assert len(done) == 1, f"{run.name} ran to its end once: {journal}"
        if run.name == killed:
            assert "takeover" in [e["event"] for e in journal], journal
            assert "(resuming)" in run.log_path.read_text()
        else:
            assert [e["event"] for e in journal] == ["claim", "release"], journal

    # 3. Bit-identical across slots, workers and the kill.
    for a, b in zip(runs, shared_runs, strict=True):
        assert a.name == b.name
        assert_same_tensors(final_weights(a.run_dir), final_weights(b.run_dir))
        assert rows(a.run_dir) == rows(b.run_dir), a.name
        assert result_summary(a.run_dir) == result_summary(b.run_dir), a.name
