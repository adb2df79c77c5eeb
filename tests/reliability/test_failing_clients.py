"""Clients that raise, time out, crash or disconnect: the round goes on with the replies that arrived (counted in
the metrics) while at least min-train-clients answered; below that it is retried once, then the run stops with a
clear message and an intact checkpoint. Nothing is ever aggregated from nobody.

Client 6 is in both train cohorts of the 2-round run (rounds 1 and 2 sample [2, 4, 6] and [0, 4, 6]).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from fedtalos.config import RunConfig
from fedtalos.federation.cohort import calibration_cohort, sample_cohort
from fedtalos.federation.wire import RoundFailed
from fedtalos.task.resources import get_resources
from fedtalos.tracking.checkpoint import CheckpointStore
from tests.support.fakegrid import FakeGrid, run_server
from tests.support.reliability import (
    crashed,
    faulty,
    raises,
    run_dir_of,
    silent,
    train_messages,
)
from tests.support.runs import assert_same_tensors, final_state, rows

pytestmark = pytest.mark.usefixtures("flower_task_identity")

BAD = 6


def _config(base: dict[str, Any], root: Path, **changes: Any) -> dict[str, Any]:
    settings = {"output-root": str(root), "lr-schedule": "constant", "num-server-rounds": 2, "eval-every": 100}
    return {**base, **settings, **changes}


@pytest.fixture(scope="module")
def clean(module_task_identity, tiny_run_config_module, tmp_path_factory) -> dict:
    """Final tensors of the run in which every client answers."""
    run_dir, _ = run_server(_config(tiny_run_config_module, tmp_path_factory.mktemp("clean")))
    return final_state(run_dir)


@pytest.fixture(scope="module")
def without_bad(module_task_identity, tiny_run_config_module, tmp_path_factory) -> dict:
    """Final tensors of the run in which client 6 never answers a train message."""
    config = _config(tiny_run_config_module, tmp_path_factory.mktemp("silent"))
    run_dir, _ = run_server(config, faulty={BAD: faulty({"train"}, silent)})
    return final_state(run_dir)


class LeavingGrid(FakeGrid):
    """A federation in which the SuperNode of ``leaver`` disconnects right after registration (it crashed)."""

    def __init__(self, *args: Any, leaver: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leaver_node = next(n for n, p in self.pid_of.items() if p == leaver)
        self.calls = 0

    def get_node_ids(self) -> Iterable[int]:
        self.calls += 1
        nodes = list(self.contexts)
        return nodes if self.calls == 1 else [n for n in nodes if n != self.leaver_node]


FAILURES = {
    "raises": ({"faulty": {BAD: faulty({"train"}, raises)}}, "error: RuntimeError: CUDA error"),
    "times out": ({"faulty": {BAD: faulty({"train"}, silent)}}, "no reply within round-timeout = 3600 s"),
    "process crashed": (
        {"faulty": {BAD: faulty({"train"}, crashed)}},
        "error: ClientAppException: the ClientApp process exited",
    ),
    "node disconnected": ({}, "not connected"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_round_completes_without_the_failing_client(
    failure: str, clean, without_bad, tiny_run_config_module, tmp_path: Path, fedtalos_log
):
    config = _config(tiny_run_config_module, tmp_path / "runs")
    grid_kwargs, reason = FAILURES[failure]
    if failure == "node disconnected":
        grid = LeavingGrid(10, config, leaver=BAD)
        run_dir, _ = run_server(config, grid)
    else:
        run_dir, grid = run_server(config, **grid_kwargs)
    logged = rows(run_dir)
    assert [(r["clients_ok"], r["clients_failed"]) for r in logged] == [(2, 1), (2, 1)], "counted in the metrics"
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 2, "the run went on to the end"
    assert f"client {BAD} failed ({reason}" in fedtalos_log.text
    assert_same_tensors(final_state(run_dir), without_bad)
    with pytest.raises(AssertionError):
        assert_same_tensors(final_state(run_dir), clean)  # (client 6's update does matter)


def _in_round(round_index: int, tamper):
    """Apply ``tamper`` to train replies of one round only."""

    def handler(message: Message, reply: Message) -> Message | None:
        if int(message.content["config"]["round"]) == round_index:
            return tamper(message, reply)
        return reply

    return handler


def test_below_min_train_clients_retries_once_then_stops_with_the_checkpoint_intact(
    clean, tiny_run_config_module, tmp_path: Path, fedtalos_log
):
    config = _config(tiny_run_config_module, tmp_path / "runs", **{"min-train-clients": 3})
    run_dir = run_dir_of(config)
    with pytest.raises(RoundFailed) as e:
        run_server(config, faulty={BAD: faulty({"train"}, _in_round(2, raises))})
    message = str(e.value)
    for fragment in (
        "round train/2: only 2 of 3 clients returned a usable reply after a retry (min-train-clients = 3)",
        f"client {BAD}: error: RuntimeError: CUDA error",
        "The last checkpoint is intact",
        "run the same command to resume",
    ):
        assert fragment in message
    assert "retrying once" in fedtalos_log.text
    store = CheckpointStore(run_dir / "checkpoints", "")
    assert store.steps() == [1], "round 2 was not aggregated or saved"
    assert len(rows(run_dir)) == 1

    _, grid = run_server(config)  # the client is fixed; the same command resumes after round 1
    assert train_messages(grid) == sample_cohort(0, "train", 2, 10, 3)
    assert_same_tensors(final_state(run_dir), clean)


def test_a_client_that_fails_once_is_retried_and_the_result_is_unchanged(clean, tiny_run_config_module, tmp_path: Path):
    config = _config(tiny_run_config_module, tmp_path / "runs", **{"min-train-clients": 3})
    failed_once = []

    def flaky(message: Message, reply: Message) -> Message | None:
        if not failed_once:
            failed_once.append(True)
            return raises(message, reply)
        return reply

    run_dir, grid = run_server(config, faulty={BAD: faulty({"train"}, flaky)})
    assert train_messages(grid) == [2, 4, 6, 6, 0, 4, 6], "round 1 retried client 6 only"
    assert [(r["clients_ok"], r["clients_failed"]) for r in rows(run_dir)] == [(3, 0), (3, 0)]
    assert_same_tensors(final_state(run_dir), clean)


def test_a_round_nobody_answers_is_never_aggregated(tiny_run_config_module, tmp_path: Path):
    config = _config(tiny_run_config_module, tmp_path / "runs")
    everyone = {pid: faulty({"train"}, raises) for pid in range(10)}
    with pytest.raises(RoundFailed, match=r"round train/1: only 0 of 3 clients returned a usable reply"):
        run_server(config, faulty=everyone)
    run_dir = run_dir_of(config)
    assert CheckpointStore(run_dir / "checkpoints", "").steps() == [], "no checkpoint of an empty round"
    assert rows(run_dir) == []


def test_failures_in_the_editing_phases_are_counted_and_left_out(tiny_run_config_module, tmp_path: Path):
    # head = ridge asks every client; calibration-fraction 0.3 samples [2, 4, 6]
    config = _config(
        tiny_run_config_module,
        tmp_path / "runs",
        **{
            "head": "ridge",
            "mask-rule": "least-sensitive",
            "calibration-rounds": 1,
            "calibration-fraction": 0.3,
            "fisher-samples": 8,
            "num-server-rounds": 1,
        },
    )
    assert BAD in calibration_cohort(RunConfig.from_mapping(config), 1)
    run_dir, _ = run_server(config, faulty={BAD: faulty({"query.ridge", "query.fisher"}, raises)})
    head, calibration, train = rows(run_dir)
    assert (head["clients_ok"], head["clients_failed"]) == (9, 1)
    shards = get_resources(RunConfig.from_mapping(config)).partitions
    assert head["ridge_examples"] == sum(len(s) for pid, s in enumerate(shards) if pid != BAD)
    assert (calibration["clients_ok"], calibration["clients_failed"]) == (2, 1)
    assert calibration["fisher_samples"] == 2 * 8
    assert train["clients_failed"] == 0 and train["val_acc"] is not None


# ---------------------------------------------------------------------------------------------------------------
# Resource errors (out of memory, no device) stop the run: never a silent dropout, even with min-train-clients = 1.


def test_a_client_out_of_memory_stops_the_run_with_what_to_lower(tiny_run_config, tmp_path, monkeypatch):
    import torch

    from fedtalos import client_app
    from fedtalos.federation.protocol import ClientResourceError

    calls = []
    real = client_app.train_steps

    def first_client_runs_out_of_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(client_app, "train_steps", first_client_runs_out_of_memory)
    config = _config(tiny_run_config, tmp_path, **{"min-train-clients": 1})
    with pytest.raises(ClientResourceError, match=r"(?s)out of memory in train.*Lower batch-size.*num-gpus"):
        run_server(config)
    assert len(calls) == 3  # the first round's cohort, not retried: the others' replies were not aggregated
    assert not list(run_dir_of(config).glob("checkpoints/ckpt-*"))


def test_a_client_without_its_device_stops_the_run_before_the_first_round(tiny_run_config, tmp_path, monkeypatch):
    from fedtalos import client_app
    from fedtalos.federation.protocol import ClientResourceError
    from fedtalos.task.device import DeviceUnavailable

    def no_gpu(config, pretrained=False, client=False):
        raise DeviceUnavailable("device = 'auto': this machine has NVIDIA GPUs but this process sees none")

    monkeypatch.setattr(client_app, "get_resources", no_gpu)
    config = _config(tiny_run_config, tmp_path, **{"min-train-clients": 1})
    with pytest.raises(ClientResourceError, match=r"identifying the nodes.*sees none"):
        run_server(config)
    assert not list(run_dir_of(config).glob("checkpoints/ckpt-*"))
