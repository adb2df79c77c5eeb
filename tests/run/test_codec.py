"""The state ↔ checkpoint codec: both kinds of state round-trip, and checkpoints in the format runs already wrote
(a killed run's last one) read back to the same state and write back the same JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedtalos.central.state import TrainState
from fedtalos.federation.state import ServerState
from fedtalos.run.codec import checkpoint_mask, checkpoint_weights, state_tensors
from fedtalos.task.train import LoopStats
from fedtalos.tracking.checkpoint import Checkpoint, CheckpointStore
from tests.support.runs import assert_same_tensors

WEIGHTS = {"b": torch.arange(3.0), "a": torch.ones(2, 2)}  # not in sorted order: the saved order must survive
MASK = {"b": torch.tensor([True, False, True]), "a": torch.ones(2, 2, dtype=torch.bool)}


def saved(tmp_path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Checkpoint:
    store = CheckpointStore(tmp_path / "checkpoints", "hash")
    store.save(1, tensors, meta)
    checkpoint = store.latest()
    assert checkpoint is not None
    return checkpoint


def trained_optimizer() -> dict[str, Any]:
    """An SGD state dict with momentum buffers (tensors) after one step."""
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    return optimizer.state_dict()


def test_a_centralized_state_round_trips_through_a_checkpoint(tmp_path: Path):
    state = TrainState(saves=3, phase="train", epoch=1, step_in_epoch=20, global_step=77, weights=dict(WEIGHTS))
    state.optimizer, state.mask, state.rng = trained_optimizer(), dict(MASK), {"cpu": torch.get_rng_state()}
    state.scheduler, state.rows, state.extras = {"last_epoch": 20}, [{"phase": "train", "epoch": 1}], {"x": 1}
    state.epoch_sums, state.epoch_lr, state.epoch_wall_s = LoopStats(12.5, 7, 640, 20), 0.05, 3.25
    back = TrainState.from_checkpoint(saved(tmp_path, state.tensors(), state.meta()))
    assert back.meta() == json.loads(json.dumps(state.meta()))
    assert list(back.weights) == ["b", "a"] and list(back.mask or {}) == ["b", "a"]
    assert_same_tensors(back.tensors(), state.tensors())
    assert back.epoch_sums == LoopStats(12.5, 7, 640, 20) and back.epoch_lr == 0.05 and back.epoch_wall_s == 3.25
    assert back.optimizer is not None and state.optimizer is not None
    assert back.optimizer["param_groups"] == state.optimizer["param_groups"]
    for index, entry in state.optimizer["state"].items():
        assert torch.equal(back.optimizer["state"][index]["momentum_buffer"], entry["momentum_buffer"])


def test_a_centralized_checkpoint_as_runs_already_wrote_it_reads_back_and_writes_the_same(tmp_path: Path):
    # the layout of a mid-epoch checkpoint of the previous code, spelled out: the epoch's sums as a JSON object
    tensors = {
        **{f"weights/{k}": v for k, v in WEIGHTS.items()},
        "optimizer/0/momentum_buffer": torch.full((3,), 0.5),
        "rng/cpu": torch.get_rng_state(),
    }
    meta = {
        "saves": 2,
        "phase": "train",
        "epoch": 0,
        "step_in_epoch": 20,
        "global_step": 20,
        "weight_keys": ["b", "a"],
        "mask_keys": None,
        "optimizer": {"param_groups": [{"lr": 0.1, "params": [0]}], "scalars": {"0": {}}},
        "scheduler": {"last_epoch": 20},
        "partial": {"loss_sum": 92.125, "correct": 13, "count": 640, "steps": 20, "lr": 0.1, "wall_s": 1.5},
        "rows": [],
        "extras": {"mask": {"trainable": 3}},
    }
    state = TrainState.from_checkpoint(saved(tmp_path, tensors, meta))
    assert state.epoch_sums == LoopStats(92.125, 13, 640, 20) and (state.epoch_lr, state.epoch_wall_s) == (0.1, 1.5)
    assert state.mask is None and list(state.weights) == ["b", "a"]
    assert state.optimizer is not None and state.optimizer["param_groups"] == meta["optimizer"]["param_groups"]
    assert list(state.optimizer["state"]) == [0] and list(state.optimizer["state"][0]) == ["momentum_buffer"]
    assert torch.equal(state.optimizer["state"][0]["momentum_buffer"], torch.full((3,), 0.5))
    assert json.dumps(state.meta()) == json.dumps(meta), "the same JSON, key for key and in order"
    assert_same_tensors(state.tensors(), tensors)


def test_a_server_state_encodes_through_the_codec_and_reads_back(tmp_path: Path):
    strategy = {"m": torch.zeros(3)}
    for mask in (None, dict(MASK)):
        state = ServerState(step=4, phase="train", phase_round=2, weights=dict(WEIGHTS), strategy=strategy, mask=mask)
        assert_same_tensors(state_tensors(state.weights, strategy=strategy, mask=mask), state.tensors())
        checkpoint = saved(tmp_path / str(mask is None), state.tensors(), state.meta())
        assert list(checkpoint_weights(checkpoint)) == ["b", "a"]
        assert_same_tensors(checkpoint_weights(checkpoint), WEIGHTS)
        got = checkpoint_mask(checkpoint)
        assert got is None if mask is None else list(got or {}) == ["b", "a"]
        back = ServerState.from_checkpoint(checkpoint)
        assert back.meta() == state.meta() and (back.mask is None) == (mask is None)


def test_checkpoint_weights_and_mask_read_a_centralized_checkpoint(tmp_path: Path):
    state = TrainState(saves=1, phase="train", weights=dict(WEIGHTS), mask=dict(MASK))
    checkpoint = saved(tmp_path, state.tensors(), state.meta())
    assert_same_tensors(checkpoint_weights(checkpoint), WEIGHTS)
    assert_same_tensors(checkpoint_mask(checkpoint) or {}, MASK)
    dense = TrainState(saves=1, phase="train", weights=dict(WEIGHTS))
    assert checkpoint_mask(saved(tmp_path / "dense", dense.tensors(), dense.meta())) is None
