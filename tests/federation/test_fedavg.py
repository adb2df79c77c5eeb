"""FedAvg rounds: the client-drift metric is over the whole model, for dense and sparse rounds alike."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fedtalos.config import RunConfig
from fedtalos.editing.masks import gather_trainable
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.fedavg import FedAvgRounds
from fedtalos.federation.state import ServerState
from fedtalos.phases import Unit
from fedtalos.strategies.base import ServerStrategy

CONFIG = RunConfig.from_mapping({"num-clients": 2, "fraction-train": 1.0, "head": "ridge", "mask-rule": "random"})
MESSENGER = SimpleNamespace(
    transport=SimpleNamespace(outbound=lambda weights, payload: ({}, {})), expected_examples=lambda pid: None
)


def _weights() -> dict[str, torch.Tensor]:
    # 13 weights: a backbone of 4 + 6 and a head of 2 + 1
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (4,), "b": (2, 3), "head.weight": (1, 2), "head.bias": (1,)}
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


MASK = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([[False, False, True], [False, False, True]])}
# what each client (n = 1 and 3) moves: the three trainable entries, nothing else
MOVES = {1: {"a": (0, 1.0), "b": ((0, 2), -2.0)}, 3: {"a": (0, 0.5), "b": ((1, 2), 1.0)}}


def _moved(weights: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in weights.items()}
    for key, (where, delta) in MOVES[n].items():
        out[key][where] += delta
    return out


def _round(sparse: bool) -> float:
    weights = _weights()
    state = ServerState(step=0, phase="train", phase_round=0, weights=weights, mask=MASK if sparse else None)
    phase = FedAvgRounds(
        "train",
        1,
        config=CONFIG,
        messenger=MESSENGER,
        strategy=ServerStrategy(),
        stream="train",
        trainable="backbone" if sparse else "all",
        sparse=sparse,
    )
    phase.configure(Unit("train", 1, 1), state)
    updates = []
    for pid, n in enumerate((1, 3)):
        moved = _moved(weights, n)
        upload = {P.MASKED_VALUES: gather_trainable(moved, MASK)} if sparse else moved
        updates.append(ClientUpdate(pid, n, upload))
    return phase.aggregate(Unit("train", 1, 1), state, updates)["drift"]


def test_sparse_and_dense_rounds_measure_drift_over_the_whole_model():
    # u_1 = +1 at a[0], −2 at b[0,2]; u_2 = +0.5 at a[0], +1 at b[1,2]; p = 1/4, 3/4; ū = (0.625, −0.5, 0.75)
    # Σ p‖u − ū‖² = 1/4·(0.375² + 1.5² + 0.75²) + 3/4·(0.125² + 0.5² + 0.25²) = 0.984375,
    # per weight of all 13 (the 10 frozen backbone entries and the frozen head count, unmoved)
    spread = 0.25 * (0.375**2 + 1.5**2 + 0.75**2) + 0.75 * (0.125**2 + 0.5**2 + 0.25**2)
    sparse, dense = _round(sparse=True), _round(sparse=False)
    assert sparse == pytest.approx(math.sqrt(spread / 13), rel=1e-6)
    assert dense == pytest.approx(sparse, rel=1e-6)
    assert sparse != pytest.approx(math.sqrt(spread / 3), rel=1e-3), "not per uploaded coordinate"
