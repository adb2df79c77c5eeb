"""Damaged checkpoints, a full disk and malicious files, through the whole ServerApp.

A finished 2-round run has its newest checkpoint damaged, then the same run is continued to 3 rounds: it must
say which file is broken, fall back to checkpoint 1 (one round of work lost, no more), and end bit-identical to an
uninterrupted 3-round run. The learning rate is constant, so a run may be extended without changing its identity.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from fedtalos.config import ConfigError, RunConfig
from fedtalos.federation.cohort import sample_cohort
from fedtalos.task.model import DINO_VIT_S16, TINY_TEST_VIT, WeightsError, build_model, check_weights_file
from fedtalos.testing import faults
from fedtalos.tracking.checkpoint import CheckpointError, CheckpointStore
from fedtalos.tracking.rundir import RunConfigMismatch
from tests.support.corruptions import CORRUPTIONS
from tests.support.fakegrid import run_server
from tests.support.reliability import run_dir_of, train_messages
from tests.support.runs import assert_same_tensors, final_state, rows

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _config(base: dict[str, Any], root: Path, rounds: int = 3) -> dict[str, Any]:
    return dict(
        base,
        **{
            "output-root": str(root),
            "lr-schedule": "constant",
            "num-server-rounds": rounds,
            "eval-every": 100,  # evaluate at the end only
            "checkpoint-keep": 2,
        },
    )


@pytest.fixture(scope="module")
def straight(module_task_identity, tiny_run_config_module, tmp_path_factory) -> tuple[dict, list]:
    """The uninterrupted 3-round run: final tensors and metric rows."""
    run_dir, _ = run_server(_config(tiny_run_config_module, tmp_path_factory.mktemp("straight")))
    return final_state(run_dir), rows(run_dir)


@pytest.fixture(scope="module")
def two_rounds(module_task_identity, tiny_run_config_module, tmp_path_factory) -> Path:
    """A finished 2-round run directory (copied, never modified)."""
    run_dir, _ = run_server(_config(tiny_run_config_module, tmp_path_factory.mktemp("two"), rounds=2))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "ckpt-000000002.safetensors"
    return run_dir


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_damaged_latest_checkpoint_costs_one_round_and_the_result_is_unchanged(
    damage: str, straight, two_rounds: Path, tiny_run_config_module, tmp_path: Path, fedtalos_log
):
    config = _config(tiny_run_config_module, tmp_path / "runs")
    run_dir = run_dir_of(config)
    shutil.copytree(two_rounds, run_dir)
    corrupt, message = CORRUPTIONS[damage]
    corrupt(run_dir / "checkpoints" / "ckpt-000000002.safetensors", run_dir / "checkpoints" / "ckpt-000000002.json")

    _, grid = run_server(config)

    assert message in fedtalos_log.text, "the broken file is named"
    assert "resuming killme after round 1" in fedtalos_log.text
    cohorts = [sample_cohort(0, "train", r, 10, 3) for r in (2, 3)]
    assert train_messages(grid) == cohorts[0] + cohorts[1], "round 2 is redone, round 1 is not"
    ref_state, ref_rows = straight
    assert_same_tensors(final_state(run_dir), ref_state)
    assert rows(run_dir) == ref_rows
    assert not (run_dir / "pwned").exists()


def test_disk_full_while_checkpointing_stops_cleanly_and_the_rerun_completes(
    straight, tiny_run_config_module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    config = _config(tiny_run_config_module, tmp_path / "runs")
    run_dir = run_dir_of(config)
    real_point = faults.point

    def point(name: str, step: int) -> None:
        if name == "checkpoint:after-tensors" and step == 2:  # round 2's tensors written, its JSON not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_point(name, step)

    monkeypatch.setattr(faults, "point", point)
    monkeypatch.setenv(faults.ENV, "on: the disk fills up at checkpoint 2")
    with pytest.raises(CheckpointError) as e:
        run_server(config)
    monkeypatch.undo()
    assert "could not write checkpoint 2" in str(e.value) and "No space left on device" in str(e.value)
    assert "free the space" in str(e.value) and "run the same command again to resume" in str(e.value)
    store = CheckpointStore(run_dir / "checkpoints", RunConfig.from_mapping(config).result_hash())
    assert store.steps() == [1] and store.latest().step == 1, "round 1's checkpoint is intact and verifies"

    run_server(config)  # the same command again
    ref_state, ref_rows = straight
    assert_same_tensors(final_state(run_dir), ref_state)
    assert rows(run_dir) == ref_rows


def test_no_usable_checkpoint_refuses_to_start_over_silently(two_rounds: Path, tiny_run_config_module, tmp_path: Path):
    config = _config(tiny_run_config_module, tmp_path / "runs")
    run_dir = run_dir_of(config)
    shutil.copytree(two_rounds, run_dir)
    for path in (run_dir / "checkpoints").glob("*.safetensors"):
        path.write_bytes(path.read_bytes()[:-1])
    kept = {"config.json", "log.txt"}  # log.txt: appended to (the refusal is logged there too)
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name not in kept}
    log_before = (run_dir / "log.txt").read_text()
    with pytest.raises(CheckpointError, match="no usable checkpoint") as e:
        run_server(config)
    assert "resume=false" in str(e.value)
    after = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name not in kept}
    assert after == before, "nothing deleted or rewritten"
    log_after = (run_dir / "log.txt").read_text()
    assert log_after.startswith(log_before) and "skipping checkpoint" in log_after[len(log_before) :]


def test_run_directory_of_another_config_is_refused_untouched(two_rounds: Path, tiny_run_config_module, tmp_path):
    config = dict(_config(tiny_run_config_module, tmp_path / "runs"), lr=0.07)
    run_dir = run_dir_of(config)
    shutil.copytree(two_rounds, run_dir)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*")) if p.is_file()}
    with pytest.raises(RunConfigMismatch) as e:
        run_server(config)
    assert "lr: 0.05 → 0.07" in str(e.value) and "another run-name" in str(e.value)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*")) if p.is_file()} == before


# ------------------------------------------------------------------------------------------- no code on load
class _Payload:
    """Unpickling this object opens ``path`` for writing, i.e. creates it: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_torch_weights_file_is_refused_without_running_it(
    tiny_run_config_module, tmp_path: Path, flower_task_identity
):
    marker = tmp_path / "pwned"
    weights = tmp_path / "dino_deitsmall16_pretrain.pth"
    state = {k: v.contiguous() for k, v in build_model(TINY_TEST_VIT).state_dict().items()}
    torch.save({**state, "payload": _Payload(marker)}, weights)  # a zip checkpoint, as torch.save writes them
    config = dict(
        _config(tiny_run_config_module, tmp_path / "runs"),
        **{"model": DINO_VIT_S16, "weights-path": str(weights), "image-size": 32},
    )
    with pytest.raises(ConfigError) as e:
        run_server(config)
    assert f"weights-path = '{weights}'" in str(e.value) and "Weights only load failed" in str(e.value)
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "runs").exists()
    torch.load(weights, weights_only=False)  # the control: an unsafe load does run it
    assert marker.exists()


@pytest.mark.parametrize("container", ["torch.save zip", "plain pickle"])
def test_weights_file_check_never_runs_a_pickle(container: str, tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    payload = {"blocks.0.norm1.weight": _Payload(marker)}
    if container == "plain pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(WeightsError, match=r"is not a readable \.safetensors or torch checkpoint"):
        check_weights_file(path)
    assert not marker.exists()
