"""The strategies that combine the cohort's updates themselves (robust rules, q-FedAvg), built by ``make_strategy``
from a RunConfig, against Flower 1.42's class of the same name: each round both get the same uploads as replies,
and Flower's own ``aggregate_train`` combines them (nothing of it replaced)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import arrayrecord as flwr_arrayrecord
from flwr.serverapp import strategy as flwr_strategy

from fedtalos.config import RunConfig, strategy_keys
from fedtalos.config.strategy_keys import DP_MODES
from fedtalos.federation.aggregate import ClientUpdate, aggregate
from fedtalos.strategies import make_strategy
from fedtalos.strategies.registry import STRATEGIES
from tests.strategies.test_registry import FLOWER, _checkpointed, _initial_weights, _numpy, _records, _relative

pytestmark = pytest.mark.usefixtures("flower_task_identity")

ROUNDS = 5
EXAMPLES = (3, 5, 8, 2, 6, 4, 7, 5)  # up to eight clients: Bulyan with f = 1 needs 4f + 3; even counts: medians of two
# a cohort of all seven clients, non-default hyper-parameters
CONFIG = {
    "num-clients": 7,
    "fraction-train": 1.0,
    "lr": 0.05,
    "num-malicious-nodes": 1,
    "num-nodes-to-select": 3,
    "beta": 0.3,
    "q": 0.5,
}
COMBINING: dict[str, Any] = {
    "fedmedian": lambda c: flwr_strategy.FedMedian(),
    "fedtrimmedavg": lambda c: flwr_strategy.FedTrimmedAvg(beta=c.beta),
    "krum": lambda c: flwr_strategy.Krum(num_malicious_nodes=c.num_malicious_nodes),
    "multikrum": lambda c: flwr_strategy.MultiKrum(
        num_malicious_nodes=c.num_malicious_nodes, num_nodes_to_select=c.num_nodes_to_select
    ),
    "bulyan": lambda c: flwr_strategy.Bulyan(num_malicious_nodes=c.num_malicious_nodes),
    "qfedavg": lambda c: flwr_strategy.QFedAvg(client_learning_rate=c.lr, q=c.q, train_loss_key="train-loss"),
}


class _Grid:
    def __init__(self, clients: int) -> None:
        self.clients = clients

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.clients + 1))


def _uploads(weights: dict[str, torch.Tensor], server_round: int, clients: int = 7) -> list[ClientUpdate]:
    """Seeded noise around ``weights``, with one far-off client (the case robust rules exist for) and a train loss."""
    g = torch.Generator().manual_seed(2000 + server_round)
    updates = []
    for pid, n in enumerate(EXAMPLES[:clients]):
        scale = 1.0 if pid == 2 else 0.05
        tensors = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in weights.items()}
        metrics = {"train-loss": 0.5 + float(torch.rand(1, generator=g)), "norm-bit": float(pid % 2)}
        updates.append(ClientUpdate(pid, n, tensors, metrics))
    return updates


def _flower_round(strategy: Any, server_round: int, current: dict, uploads: list[ClientUpdate]) -> dict:
    messages = list(strategy.configure_train(server_round, _records(current), ConfigRecord({}), _Grid(len(uploads))))
    assert len(messages) == len(uploads), "Flower asked every client"
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": _records(u.tensors),
                    "metrics": MetricRecord({"num-examples": u.num_examples, **u.metrics}),
                }
            ),
            reply_to=message,
        )
        for message, u in zip(messages, uploads, strict=True)
    ]
    with pytest.MonkeyPatch.context() as patch:
        # Flower's to_numpy_ndarrays(keep_input=False) runs gc.collect() per array (0.2 s each here); it computes
        # nothing, so it is skipped to keep the test fast
        patch.setattr(flwr_arrayrecord.gc, "collect", lambda *args: 0)
        arrays, _ = strategy.aggregate_train(server_round, replies)
    assert arrays is not None
    return _numpy(arrays)


def test_every_strategy_is_compared_with_flower():
    assert set(FLOWER) | set(COMBINING) == set(STRATEGIES) == set(strategy_keys.STRATEGIES)
    config = {**CONFIG, "num-malicious-nodes": 0}
    assert {
        n for n in STRATEGIES if make_strategy(RunConfig.from_mapping({**config, "strategy": n})).combines_updates
    } == set(COMBINING), "only the combining strategies hold the cohort's updates; the others keep the weighted mean"


@pytest.mark.parametrize(
    ("name", "clients"), [(name, 7) for name in COMBINING] + [("fedmedian", 6), ("fedtrimmedavg", 6), ("bulyan", 8)]
)
def test_matches_flowers_class_round_by_round(name: str, clients: int):
    config = RunConfig.from_mapping({**CONFIG, "num-clients": clients, "strategy": name})
    ours, theirs = make_strategy(config), COMBINING[name](config)
    start = _initial_weights()
    weights = {k: v.clone() for k, v in start.items()}
    flower_weights = {k: v.clone() for k, v in start.items()}
    differences = []
    for server_round in range(1, ROUNDS + 1):
        uploads = _uploads(weights, server_round, clients)
        flower_next = _flower_round(theirs, server_round, flower_weights, uploads)
        ours.apply(weights, ours.combine(uploads, weights), server_round)
        differences.append(_relative(weights, flower_next, start))
        flower_weights = {k: torch.from_numpy(v.astype(np.float32)) for k, v in flower_next.items()}
    assert max(differences) < 1e-5, [f"{d:.2e}" for d in differences]


def test_robust_rules_resist_the_far_off_client():
    # the test above compares like with like; this shows the inputs made the robust rules differ from a mean
    weights = _initial_weights()
    uploads = _uploads(weights, 1)
    config = RunConfig.from_mapping({**CONFIG, "strategy": "krum"})
    chosen = make_strategy(config).combine(uploads, weights)
    assert not any(torch.equal(chosen[k], uploads[2].tensors[k]) for k in weights)
    assert any(torch.equal(chosen["blocks.0.w"], u.tensors["blocks.0.w"]) for u in uploads), "krum picks one"


@pytest.mark.parametrize("name", COMBINING)
def test_combine_leaves_the_updates_as_they_were(name: str):
    weights = _initial_weights()
    uploads = _uploads(weights, 1)
    before = [{k: v.clone() for k, v in u.tensors.items()} for u in uploads]
    make_strategy(RunConfig.from_mapping({**CONFIG, "strategy": name})).combine(uploads, weights)
    assert all(torch.equal(u.tensors[k], b[k]) for u, b in zip(uploads, before, strict=True) for k in b)


def _round(strategy: Any, weights: dict[str, torch.Tensor], server_round: int) -> None:
    uploads = _uploads(weights, server_round)
    if strategy.combines_updates:
        combined = strategy.combine(uploads, weights)
    else:
        combined = aggregate(uploads, weights, coordinates=sum(v.numel() for v in weights.values())).average
    strategy.apply(weights, combined, server_round)


@pytest.mark.parametrize("dp", DP_MODES)
@pytest.mark.parametrize("name", [*COMBINING, "fedavg", "fedadam"])
def test_state_dict_resumes_mid_run_identically(name: str, dp: str):
    values = {"strategy": name, "dp": dp, "noise-multiplier": 0.5, "clipped-count-stddev": 1.0}
    config = RunConfig.from_mapping({**CONFIG, **values})
    straight, first = make_strategy(config), make_strategy(config)
    a = _initial_weights()
    b = {k: v.clone() for k, v in a.items()}
    for server_round in range(1, ROUNDS + 1):
        if server_round == ROUNDS // 2 + 1:
            state = _checkpointed(first)
            first = make_strategy(config)  # a restarted server
            first.load_state_dict(state)
        _round(straight, a, server_round)
        _round(first, b, server_round)
        assert all(torch.equal(a[k], b[k]) for k in a), f"round {server_round}"
    state = straight.state_dict()
    if dp != "none":
        assert int(state["dp/releases"]) == ROUNDS, "the noise stream's position is in the checkpoint"
    if dp.endswith("-adaptive"):
        assert float(state["dp/clipping-norm"]) != config.initial_clipping_norm, "the adapted norm is checkpointed"


def test_bulyan_with_too_few_replies_keeps_the_model():
    config = RunConfig.from_mapping({**CONFIG, "strategy": "bulyan", "min-train-clients": 1})
    weights = _initial_weights()
    combined = make_strategy(config).combine(_uploads(weights, 1)[:6], weights)  # 6 < 4f + 3 = 7
    assert all(torch.equal(combined[k], weights[k]) for k in weights)


def test_qfedavg_needs_the_train_loss():
    weights = _initial_weights()
    uploads = [ClientUpdate(u.pid, u.num_examples, u.tensors) for u in _uploads(weights, 1)]
    with pytest.raises(ValueError, match="train-loss"):
        make_strategy(RunConfig.from_mapping({**CONFIG, "strategy": "qfedavg"})).combine(uploads, weights)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"strategy": "krum", "num-malicious-nodes": 3}, "num-malicious-nodes = 3"),  # 7 < 2·3 + 3
        ({"strategy": "multikrum", "num-malicious-nodes": 3}, "num-malicious-nodes = 3"),
        ({"strategy": "bulyan", "num-malicious-nodes": 2}, "num-malicious-nodes = 2"),  # 7 < 4·2 + 3
        ({"strategy": "multikrum", "num-malicious-nodes": 0, "num-nodes-to-select": 8}, "num-nodes-to-select = 8"),
        ({"strategy": "fedtrimmedavg", "beta": 0.5}, "beta = 0.5"),  # would trim everything
        ({"dp": "server-fixed", "clipping-norm": -1.0}, "clipping-norm = -1.0"),
        ({"dp": "server-fixed", "clipping-norm": 0.0}, "clipping-norm = 0.0"),
        ({"dp": "client-fixed", "noise-multiplier": -0.1}, "noise-multiplier = -0.1"),
        ({"dp": "local"}, "dp = 'local'"),
        ({"dp": "server-adaptive", "noise-multiplier": 1.0}, "noise-multiplier = 1.0"),  # ≥ 2 · 7/20
        ({"dp": "client-adaptive", "target-clipped-quantile": 1.5}, "target-clipped-quantile = 1.5"),
        ({"dp": "client-adaptive", "clip-norm-lr": 0.0}, "clip-norm-lr = 0.0"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(values: dict[str, Any], key: str):
    with pytest.raises(ValueError, match=key):
        RunConfig.from_mapping({**CONFIG, **values})


def test_the_new_keys_enter_the_result_hash_only_when_set_off_their_defaults():
    # runs from before these keys keep their hashes (tests/tracking/test_identity.py); a set key is a new run
    values = {"num-clients": 7, "fraction-train": 1.0}
    base = RunConfig.from_mapping(values)
    for key, default in strategy_keys.ADDED_DEFAULTS.items():
        assert key not in base.result_dict()
        assert RunConfig.from_mapping({**values, key: default}).result_hash() == base.result_hash()
    assert RunConfig.from_mapping({**values, "beta": 0.1}).result_hash() != base.result_hash()
    assert RunConfig.from_mapping({**values, "dp": "server-fixed"}).result_hash() != base.result_hash()
