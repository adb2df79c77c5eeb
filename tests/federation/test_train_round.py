"""Training rounds: the round index the strategy is given across phases and a resume; the client-drift metric over
the whole model, for dense and sparse rounds alike."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedtalos.config import RunConfig
from fedtalos.editing.sparse import gather_trainable
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.state import ServerState
from fedtalos.federation.train_round import TrainRounds
from fedtalos.federation.wire import Outgoing, Replies
from fedtalos.run.phases import run_phases
from fedtalos.strategies.fedavg import FedAvg
from fedtalos.strategies.fedopt import FedAdam
from fedtalos.tracking.hooks import Hooks
from tests.support.fakegrid import run_server


def _final_weights(run_dir: Path) -> dict:
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt-*.safetensors"))
    return {k: v for k, v in load_file(checkpoints[-1]).items() if k.startswith("weights/")}


@pytest.mark.usefixtures("flower_task_identity")
def test_fedadam_counts_the_rounds_of_its_phase_and_resumes_exactly(
    tiny_run_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Two linear-probing rounds (on the head's keys), then fine-tuning (the backbone's): FedAdam's bias correction
    # of the first fine-tuning round must be that of a first round (as in Flower's FedAdam, which only ever serves
    # one phase), not of global step 3.
    given: list[int] = []
    apply = FedAdam.apply

    def recording(self: FedAdam, weights: Any, average: Any, phase_round: int) -> None:
        given.append(phase_round)
        apply(self, weights, average, phase_round)

    monkeypatch.setattr(FedAdam, "apply", recording)
    config = dict(
        tiny_run_config,
        **{"strategy": "fedadam", "head": "probe", "probe-rounds": 2, "num-server-rounds": 2},
        **{"lr-schedule": "constant", "eval-every": 5},
    )
    straight, _ = run_server(dict(config, **{"output-root": str(tmp_path / "a")}))
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["round"], r["step"]) for r in rows] == [
        ("head", 1, 1),
        ("head", 2, 2),
        ("train", 1, 3),
        ("train", 2, 4),
    ]
    assert given == [1, 2, 1, 2]

    # stopped after the first fine-tuning round, then continued: the same rounds, the same weights, bit for bit
    given.clear()
    resumed, _ = run_server(dict(config, **{"output-root": str(tmp_path / "b"), "num-server-rounds": 1}))
    resumed, _ = run_server(dict(config, **{"output-root": str(tmp_path / "b")}))
    assert given == [1, 2, 1, 2]
    a, b = _final_weights(straight), _final_weights(resumed)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


CONFIG = RunConfig.from_mapping({"num-clients": 2, "fraction-train": 1.0, "head": "ridge", "mask-rule": "random"})


class AnsweringWire:
    """A wire whose exchange returns the given updates, as if the clients had sent them and they checked out."""

    def __init__(self, updates: list[ClientUpdate]) -> None:
        self.updates = updates
        self.sent: list[Outgoing] = []

    def exchange(self, outgoing: Outgoing, check: Any, *, where: str, needed: int, clock: Any = None) -> Replies:
        self.sent.append(outgoing)
        return Replies({u.pid: u for u in self.updates})


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
    (spec,) = [s for s in run_phases(CONFIG, "federated") if s.name == "train"]
    phase = TrainRounds(spec, CONFIG, Hooks(), FedAvg())
    updates = []
    for pid, n in enumerate((1, 3)):
        moved = _moved(weights, n)
        upload = {P.MASKED_VALUES: gather_trainable(moved, MASK)} if sparse else moved
        updates.append(ClientUpdate(pid, n, upload))
    wire = AnsweringWire(updates)
    drift = phase.run_round(state, 1, wire)["drift"]  # type: ignore[arg-type]
    assert (wire.sent[0].mask_bits is not None) == sparse, "the mask travels with a sparse round"
    return drift


def test_sparse_and_dense_rounds_measure_drift_over_the_whole_model():
    # u_1 = +1 at a[0], −2 at b[0,2]; u_2 = +0.5 at a[0], +1 at b[1,2]; p = 1/4, 3/4; ū = (0.625, −0.5, 0.75)
    # Σ p‖u − ū‖² = 1/4·(0.375² + 1.5² + 0.75²) + 3/4·(0.125² + 0.5² + 0.25²) = 0.984375,
    # per weight of all 13 (the 10 frozen backbone entries and the frozen head count, unmoved)
    spread = 0.25 * (0.375**2 + 1.5**2 + 0.75**2) + 0.75 * (0.125**2 + 0.5**2 + 0.25**2)
    sparse, dense = _round(sparse=True), _round(sparse=False)
    assert sparse == pytest.approx(math.sqrt(spread / 13), rel=1e-6)
    assert dense == pytest.approx(sparse, rel=1e-6)
    assert sparse != pytest.approx(math.sqrt(spread / 3), rel=1e-3), "not per uploaded coordinate"
