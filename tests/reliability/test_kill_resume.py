"""Kill the server anywhere (SIGKILL, deterministic injection points), resume, and end bit-identical."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tests.support.runs import result_summary

ROOT = Path(__file__).resolve().parents[2]

# The editing pipeline: head (step 1), calibration (steps 2-3), sparse fine-tuning (steps 4-6).
KILL_POINTS = [
    "round-start@1",  # before anything happened
    "before-checkpoint@1",  # the head is solved and evaluated, not saved
    "checkpoint:after-tensors@2",  # during the checkpoint write: tensors on disk, their JSON companion not
    "after-replies@2",  # mid-calibration: scores received, mask not updated
    "checkpoint:before-tensors@3",  # during the checkpoint write, before anything reached the disk
    "after-checkpoint@3",  # calibration done and saved
    "after-replies@4",  # mid-round: client updates received, not aggregated
    "after-aggregate@4",  # aggregated, not evaluated
    "before-eval@5",  # during evaluation
    "checkpoint:after-json@5",  # checkpoint complete, old ones not yet pruned
    "round-start@6",  # the last round
    "before-checkpoint@6",  # after the final test evaluation, before its checkpoint
    "after-checkpoint@6",  # everything saved, summary not yet written
]


def _config(base: dict[str, Any], root: Path) -> dict[str, Any]:
    return dict(
        base,
        **{
            "output-root": str(root),
            "head": "ridge",
            "mask-rule": "least-sensitive",
            "sparsity": 0.8,
            "calibration-rounds": 2,
            "fisher-samples": 8,
            "calibration-fraction": 0.2,
            "num-server-rounds": 3,
            "eval-every": 2,
            "checkpoint-keep": 2,
        },
    )


class Zygote:
    """The forking runner of ``killrun.py`` (one per test module)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.killrun"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, config: dict[str, Any], tmp: Path, kill_at: str | None = None) -> int:
        path = tmp / "config.json"
        path.write_text(json.dumps(config))
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"config": str(path), "kill_at": kill_at}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["returncode"]

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def zygote():
    runner = Zygote()
    yield runner
    runner.close()


def _outcome(run_dir: Path) -> tuple[dict, list, dict]:
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt-*.safetensors"))
    weights = load_file(checkpoints[-1])
    rows = [
        {k: v for k, v in json.loads(x).items() if not k.endswith("_s")}  # timings (seconds) differ run to run
        for x in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return weights, rows, result_summary(run_dir)


@pytest.fixture(scope="module")
def reference(zygote: Zygote, tiny_run_config_module: dict[str, Any], tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("reference")
    config = _config(tiny_run_config_module, tmp / "runs")
    assert zygote.run(config, tmp) == 0
    return _outcome(tmp / "runs" / config["run-name"])


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_killed_run_resumes_bit_identical(
    kill_at: str, zygote: Zygote, reference, tiny_run_config_module, tmp_path: Path
):
    config = _config(tiny_run_config_module, tmp_path / "runs")
    assert zygote.run(config, tmp_path, kill_at) == -signal.SIGKILL, f"expected to die at {kill_at}"
    assert zygote.run(config, tmp_path) == 0
    weights, rows, summary = _outcome(tmp_path / "runs" / config["run-name"])
    ref_weights, ref_rows, ref_summary = reference
    assert weights.keys() == ref_weights.keys()
    assert all(bool((weights[k] == ref_weights[k]).all()) for k in weights), "final state differs"
    assert rows == ref_rows
    assert summary == ref_summary
