"""Sparse rounds through every strategy and DP mode: ``TrainRounds.run_round`` on a masked model with a stand-in wire
whose clients upload what real ones do (dense trainable tensors whole, masked ones as the flat vector of their
trainable entries). Frozen entries and the frozen head never move; trainable ones do. The run through the real
clients is ``tests/federation/test_editing_pipeline.py::test_pipeline_freezes_what_the_mask_says``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedtalos.config import RunConfig
from fedtalos.config.strategy_keys import DP_MODES
from fedtalos.editing.sparse import gather_trainable
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.state import ServerState
from fedtalos.federation.train_round import TrainRounds
from fedtalos.federation.wire import Outgoing, Replies
from fedtalos.run.phases import PhaseSpec
from fedtalos.strategies import make_strategy
from fedtalos.strategies.registry import STRATEGIES
from fedtalos.task.model import trains
from fedtalos.tracking.hooks import Hooks

CONFIG = {"num-clients": 7, "fraction-train": 1.0, "num-malicious-nodes": 1, "lr": 0.05, "lr-schedule": "constant"}
SPEC = PhaseSpec(name="train", units=3, frozen="head", evaluates=False, stream="train")


class _Wire:
    """Each cohort client moves every trainable entry by seeded noise, and replies as ``client_app.train`` does."""

    def exchange(self, outgoing: Outgoing, check: Any, *, where: str, needed: int, clock: Any) -> Replies:
        mask = self.mask
        accepted = {}
        for pid in outgoing.cohort:
            g = torch.Generator().manual_seed(100 * outgoing.step + pid)
            trained = {
                k: v + 0.1 * torch.randn(v.shape, generator=g) if trains(k, SPEC.frozen) else v
                for k, v in outgoing.weights.items()
            }
            upload = {k: v for k, v in trained.items() if trains(k, SPEC.frozen) and k not in mask}
            upload[P.MASKED_VALUES] = gather_trainable(trained, mask)
            accepted[pid] = ClientUpdate(pid, 3 + pid, upload, {"train-loss": 1.0 + 0.1 * pid, "norm-bit": 1.0})
        return Replies(accepted, {"clients_ok": len(accepted)})


def _state() -> ServerState:
    g = torch.Generator().manual_seed(0)
    weights = {
        "blocks.0.w": torch.randn(6, 4, generator=g),
        "blocks.0.b": torch.randn(4, generator=g),
        "blocks.1.w": torch.randn(5, generator=g),  # trains whole (not in the mask)
        "head.weight": torch.randn(3, 4, generator=g),
    }
    mask = {
        "blocks.0.w": torch.rand(6, 4, generator=g) < 0.3,
        "blocks.0.b": torch.tensor([True, False, False, True]),
    }
    return ServerState(step=0, phase="train", phase_round=0, weights=weights, mask=mask)


@pytest.mark.parametrize("dp", DP_MODES)
@pytest.mark.parametrize("name", STRATEGIES)
def test_frozen_entries_never_move(name: str, dp: str):
    config = RunConfig.from_mapping(
        {**CONFIG, "strategy": name, "dp": dp, "clipping-norm": 0.5, "noise-multiplier": 0.1}
    )
    rounds = TrainRounds(SPEC, config, Hooks(), make_strategy(config))
    state = _state()
    wire = _Wire()
    wire.mask = state.mask
    start = {k: v.clone() for k, v in state.weights.items()}
    for index in (1, 2):
        rounds.run_round(state, index, wire)
        state.step += 1
    after = state.weights
    for key, m in state.mask.items():
        assert torch.equal(after[key][~m], start[key][~m]), f"{name}/{dp}: frozen entries of {key} moved"
        assert not torch.equal(after[key][m], start[key][m]), f"{name}/{dp}: trainable entries of {key} stayed"
    assert torch.equal(after["head.weight"], start["head.weight"]), "the frozen head stays"
    assert not torch.equal(after["blocks.1.w"], start["blocks.1.w"]), "a dense trainable tensor trains"
