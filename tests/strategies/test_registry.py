"""The strategies that update from the clients' weighted mean, built by ``make_strategy`` from a RunConfig, against
Flower 1.42's class of the same name (those that combine the updates themselves: ``test_combining.py``).

Both sides are fed the same weighted average each round: Flower's ``aggregate_train`` runs on real reply messages,
with its own weighted average (``aggregate_arrayrecords``) replaced by the average fedtalos's server computes
(``federation.aggregate``), so only the update rules are compared. The rounds' uploads are the clients' "training"
from our global model: seeded noise around it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy import fedavg as flwr_fedavg
from safetensors.torch import load, save

from fedtalos.config import RunConfig
from fedtalos.federation.aggregate import ClientUpdate, aggregate
from fedtalos.strategies import make_strategy
from fedtalos.strategies.base import ServerStrategy, Weights

pytestmark = pytest.mark.usefixtures("flower_task_identity")

ROUNDS = 6
EXAMPLES = (3, 5, 8)  # the clients' example counts: unequal weights

# Flower's class of each name, and its keyword arguments from a RunConfig; ``lr`` False leaves Flower's default.
FLOWER: dict[str, tuple[str, Any]] = {
    "fedavg": ("FedAvg", lambda c, lr: {}),
    "fedprox": ("FedProx", lambda c, lr: {"proximal_mu": c.proximal_mu}),
    "fedavgm": (
        "FedAvgM",
        lambda c, lr: {"server_momentum": c.server_momentum, **({"server_learning_rate": c.server_lr} if lr else {})},
    ),
    "fedadam": (
        "FedAdam",
        lambda c, lr: (
            {"beta_1": c.server_beta1, "beta_2": c.server_beta2, "tau": c.server_tau}
            | ({"eta": c.server_lr} if lr else {})
        ),
    ),
    "fedyogi": (
        "FedYogi",
        lambda c, lr: (
            {"beta_1": c.server_beta1, "beta_2": c.server_beta2, "tau": c.server_tau}
            | ({"eta": c.server_lr} if lr else {})
        ),
    ),
    "fedadagrad": ("FedAdagrad", lambda c, lr: {"tau": c.server_tau} | ({"eta": c.server_lr} if lr else {})),
}

# Non-default hyper-parameters, all set explicitly.
EXPLICIT = {
    "server-lr": 0.05,
    "server-momentum": 0.7,
    "server-beta1": 0.8,
    "server-beta2": 0.95,
    "server-tau": 0.01,
    "proximal-mu": 0.3,
}


class _Grid:
    """The one thing Flower's ``configure_train`` asks of a grid: the connected node ids."""

    def get_node_ids(self) -> list[int]:
        return [11, 22, 33]


def _initial_weights() -> Weights:
    g = torch.Generator().manual_seed(0)
    return {"blocks.0.w": torch.randn(6, 4, generator=g), "blocks.0.b": torch.randn(4, generator=g) * 0.1}


def _uploads(weights: Weights, server_round: int) -> list[ClientUpdate]:
    """What the clients send back in ``server_round``: their start (the global model) plus seeded noise."""
    g = torch.Generator().manual_seed(1000 + server_round)
    return [
        ClientUpdate(pid, n, {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in weights.items()})
        for pid, n in enumerate(EXAMPLES)
    ]


def _average(weights: Weights, server_round: int) -> Weights:
    """The average fedtalos's server gets from those uploads (``TrainRounds.run_round``)."""
    return aggregate(_uploads(weights, server_round), weights, coordinates=_size(weights)).average


def _size(weights: Weights) -> int:
    return sum(v.numel() for v in weights.values())


def _records(weights: Weights) -> ArrayRecord:
    return ArrayRecord({k: Array(v.numpy().copy()) for k, v in weights.items()})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def _flower_round(
    strategy: Any, server_round: int, current: Weights, uploads: list[ClientUpdate], average: Weights
) -> dict[str, np.ndarray]:
    """One round of Flower's strategy: configure_train on ``current``, aggregate_train over the ``uploads`` as
    replies, with their weighted average replaced by ours, ``average``."""
    messages = list(strategy.configure_train(server_round, _records(current), ConfigRecord({}), _Grid()))
    replies = [
        Message(
            RecordDict({"arrays": _records(u.tensors), "metrics": MetricRecord({"num-examples": u.num_examples})}),
            reply_to=message,
        )
        for message, u in zip(messages, uploads, strict=True)
    ]
    flowers_own = flwr_fedavg.aggregate_arrayrecords
    seen: list[dict[str, np.ndarray]] = []

    def same_average(records: list[RecordDict], key: str) -> ArrayRecord:
        seen.append(_numpy(flowers_own(records, key)))
        return _records(average)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flwr_fedavg, "aggregate_arrayrecords", same_average)
        arrays, _ = strategy.aggregate_train(server_round, replies)
    assert len(seen) == 1, "Flower's aggregate_train averaged the replies once, by num-examples"
    assert all(np.allclose(seen[0][k], average[k].numpy(), rtol=0, atol=1e-6) for k in average), "same average"
    assert arrays is not None
    return _numpy(arrays)


def _relative(ours: Weights, theirs: dict[str, np.ndarray], start: Weights) -> float:
    """‖(ours − start) − (theirs − start)‖ / ‖theirs − start‖ over all tensors: the difference of the models'
    displacements, so that small server steps are not hidden behind the weights' own size."""
    diff = sum(float(((ours[k].double() - torch.from_numpy(theirs[k]).double()) ** 2).sum()) for k in ours)
    moved = sum(float(((torch.from_numpy(theirs[k]).double() - start[k].double()) ** 2).sum()) for k in ours)
    assert moved > 0, "the model moved"
    return (diff / moved) ** 0.5


def _run_side_by_side(name: str, values: dict[str, Any], flower_lr: bool) -> list[float]:
    config = RunConfig.from_mapping({"strategy": name, **values})
    ours = make_strategy(config)
    class_name, kwargs = FLOWER[name]
    theirs = getattr(flwr_strategy, class_name)(min_train_nodes=3, min_available_nodes=3, **kwargs(config, flower_lr))
    start = _initial_weights()
    weights = {k: v.clone() for k, v in start.items()}
    flower_weights = {k: v.clone() for k, v in start.items()}
    differences = []
    for server_round in range(1, ROUNDS + 1):
        uploads = _uploads(weights, server_round)
        average = aggregate(uploads, weights, coordinates=_size(weights)).average
        flower_next = _flower_round(theirs, server_round, flower_weights, uploads, average)
        ours.apply(weights, {k: v.clone() for k, v in average.items()}, server_round)
        differences.append(_relative(weights, flower_next, start))
        flower_weights = {k: torch.from_numpy(v.astype(np.float32)) for k, v in flower_next.items()}
    return differences


def test_the_registry_loads_without_the_config():
    # config.py may then take its choice of strategies from the registry's names without an import cycle
    code = "import sys, fedtalos.strategies.registry; print('fedtalos.config' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", FLOWER)
def test_matches_flowers_class_with_explicit_hyper_parameters(name: str):
    differences = _run_side_by_side(name, EXPLICIT, flower_lr=True)
    assert max(differences) < 1e-5, [f"{d:.2e}" for d in differences]


@pytest.mark.parametrize("name", FLOWER)
def test_an_unset_server_lr_is_flowers_default(name: str):
    # Flower's class is built without a server lr, ours from a config that does not set server-lr
    differences = _run_side_by_side(name, {k: v for k, v in EXPLICIT.items() if k != "server-lr"}, flower_lr=False)
    assert max(differences) < 1e-5, [f"{d:.2e}" for d in differences]


def test_fedprox_sends_flowers_proximal_term():
    config = RunConfig.from_mapping({"strategy": "fedprox", "proximal-mu": 0.3})
    theirs = flwr_strategy.FedProx(proximal_mu=0.3, min_train_nodes=3, min_available_nodes=3)
    messages = list(theirs.configure_train(1, _records(_initial_weights()), ConfigRecord({}), _Grid()))
    sent = messages[0].content.config_records["config"]
    assert make_strategy(config).client_config() == {"proximal-mu": sent["proximal-mu"]} == {"proximal-mu": 0.3}


def _checkpointed(strategy: ServerStrategy) -> Weights:
    """The strategy's state as it comes back from a checkpoint file (safetensors, as ``tracking.checkpoint``)."""
    state = strategy.state_dict()
    return load(save(state)) if state else {}


@pytest.mark.parametrize("name", FLOWER)
def test_state_dict_resumes_mid_run_identically(name: str):
    config = RunConfig.from_mapping({"strategy": name, **EXPLICIT})
    straight, first = make_strategy(config), make_strategy(config)
    a = _initial_weights()
    b = {k: v.clone() for k, v in a.items()}
    for server_round in range(1, ROUNDS + 1):
        if server_round == ROUNDS // 2 + 1:
            state = _checkpointed(first)
            first = make_strategy(config)  # a fresh object: a restarted server
            first.load_state_dict(state)
        straight.apply(a, _average(a, server_round), server_round)
        first.apply(b, _average(b, server_round), server_round)
        assert all(torch.equal(a[k], b[k]) for k in a), f"round {server_round}"
    if name in ("fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        assert straight.state_dict(), "it keeps state, so the resume above was a real test of it"


def test_fedadagrad_keeps_no_first_moment():
    # beta 1 = 0: m = Δ, nothing to checkpoint but v
    strategy = make_strategy(RunConfig.from_mapping({"strategy": "fedadagrad", "server-beta1": 0.9}))
    weights = _initial_weights()
    strategy.apply(weights, _average(weights, 1), 1)
    assert sorted(strategy.state_dict()) == ["v/blocks.0.b", "v/blocks.0.w"]
