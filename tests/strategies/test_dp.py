"""The DP wrappers against Flower 1.42's: clipping to the same bits, the wrapped aggregation, the noise's standard
deviation σ·C/m (Flower's ``compute_stdv``), seeded noise, the client-side clip in a real round, the privacy record."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy
from flwr.supercore.differential_privacy import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    compute_adaptive_noise_params,
    compute_clip_model_update,
    compute_stdv,
)
from safetensors.torch import load_file

from fedtalos.config import RunConfig
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.strategies import make_strategy
from fedtalos.strategies.dp import clip_update, noise_std, privacy_record
from tests.strategies.test_registry import _initial_weights, _numpy, _records
from tests.support.fakegrid import run_server
from tests.support.tiny import TINY_FEDERATION, offline_tiny

pytestmark = pytest.mark.usefixtures("flower_task_identity")

EXAMPLES = (3, 5, 8, 4)
CONFIG = {"num-clients": 4, "fraction-train": 1.0, "clipping-norm": 0.3, "noise-multiplier": 0.0}


class _Grid:
    def get_node_ids(self) -> list[int]:
        return list(range(1, len(EXAMPLES) + 1))


def _uploads(weights: dict[str, torch.Tensor], scales: tuple[float, ...] = (0.01, 0.2, 1.0, 3.0)) -> list[ClientUpdate]:
    """Updates of norms below and above the clipping norm."""
    g = torch.Generator().manual_seed(7)
    return [
        ClientUpdate(pid, n, {k: v + s * torch.randn(v.shape, generator=g) for k, v in weights.items()})
        for pid, (n, s) in enumerate(zip(EXAMPLES, scales, strict=True))
    ]


def test_clipping_is_flowers_to_the_bit():
    weights = _initial_weights()
    for update in _uploads(weights):
        ours, clipped = clip_update(update.tensors, weights, 0.3)
        theirs = [v.numpy().copy() for v in update.tensors.values()]
        compute_clip_model_update(theirs, [v.numpy() for v in weights.values()], 0.3)
        assert all(np.array_equal(ours[k].numpy(), t) for k, t in zip(weights, theirs, strict=True))
        norm = math.sqrt(sum(float((ours[k] - weights[k]).double().square().sum()) for k in weights))
        assert norm <= 0.3 * (1 + 1e-6)
        unclipped = math.sqrt(sum(float((update.tensors[k] - weights[k]).double().square().sum()) for k in weights))
        assert clipped == (unclipped > 0.3)


def test_server_side_clipping_matches_flowers_wrapper():
    # noise-multiplier 0: the wrapped FedAvg over Flower's clipped replies against ours
    weights = _initial_weights()
    uploads = _uploads(weights)
    config = RunConfig.from_mapping({**CONFIG, "dp": "server-fixed"})
    ours = make_strategy(config).combine(uploads, weights)
    inner = flwr_strategy.FedAvg(min_train_nodes=4, min_available_nodes=4)
    theirs = flwr_strategy.DifferentialPrivacyServerSideFixedClipping(inner, 0.0, 0.3, 4)
    clipped_replies: list[dict[str, np.ndarray]] = []
    aggregate = inner.aggregate_train

    def seeing(server_round: int, replies: list[Message]) -> Any:
        clipped_replies.extend(_numpy(r.content["arrays"]) for r in replies)
        return aggregate(server_round, replies)

    inner.aggregate_train = seeing  # type: ignore[method-assign]
    messages = list(theirs.configure_train(1, _records(weights), ConfigRecord({}), _Grid()))
    replies = [
        Message(
            RecordDict({"arrays": _records(u.tensors), "metrics": MetricRecord({"num-examples": u.num_examples})}),
            reply_to=m,
        )
        for m, u in zip(messages, uploads, strict=True)
    ]
    arrays, _ = theirs.aggregate_train(1, replies)
    assert arrays is not None
    clipped_ours = [clip_update(u.tensors, weights, 0.3)[0] for u in uploads]
    for ours_clipped in clipped_ours:  # the replies reach Flower in its sampled order: match each by content
        assert any(all(np.array_equal(ours_clipped[k].numpy(), r[k]) for k in weights) for r in clipped_replies)
    flower = _numpy(arrays)
    for k in weights:
        np.testing.assert_allclose(ours[k].numpy(), flower[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dp", ["server-fixed", "client-fixed"])
def test_noise_std_is_flowers_formula(dp: str):
    # All updates equal to the start: what is left after combining is the noise alone. 40 000 draws estimate the
    # std within about 0.35 % (1/√(2N)); the tolerance of 2 % is over 5 of those standard errors.
    sigma, clip, m = 1.3, 0.7, 4
    weights = {"w": torch.zeros(200, 200)}
    uploads = [ClientUpdate(pid, n, {"w": torch.zeros(200, 200)}) for pid, n in enumerate(EXAMPLES)]
    config = RunConfig.from_mapping({**CONFIG, "dp": dp, "noise-multiplier": sigma, "clipping-norm": clip})
    noise = make_strategy(config).combine(uploads, weights)["w"].double()
    expected = compute_stdv(sigma, clip, m)
    assert noise_std(sigma, clip, m) == expected == pytest.approx(sigma * clip / m)
    assert float(noise.std()) == pytest.approx(expected, rel=0.02)
    assert abs(float(noise.mean())) < 5 * expected / math.sqrt(noise.numel())


def test_noise_is_seeded_by_the_run_seed_and_the_release():
    weights = {"w": torch.zeros(50)}
    uploads = [ClientUpdate(pid, n, {"w": torch.zeros(50)}) for pid, n in enumerate(EXAMPLES)]
    config = RunConfig.from_mapping({**CONFIG, "dp": "server-fixed", "noise-multiplier": 1.0})
    a, b = make_strategy(config), make_strategy(config)
    first = a.combine(uploads, weights)["w"]
    assert torch.equal(first, b.combine(uploads, weights)["w"]), "same seed and release: same noise"
    assert not torch.equal(first, a.combine(uploads, weights)["w"]), "the next release draws anew"
    other = make_strategy(config.replace(seed=1)).combine(uploads, weights)["w"]
    assert not torch.equal(first, other)


def _replies(messages: list[Message], uploads: list[ClientUpdate], norm_bits: bool = False) -> list[Message]:
    def metrics(u: ClientUpdate) -> MetricRecord:
        bit = {KEY_NORM_BIT: int(u.metrics["norm-bit"])} if norm_bits else {}
        return MetricRecord({"num-examples": u.num_examples, **bit})

    return [
        Message(RecordDict({"arrays": _records(u.tensors), "metrics": metrics(u)}), reply_to=m)
        for m, u in zip(messages, uploads, strict=True)
    ]


@pytest.mark.parametrize("side", ["server", "client"])
def test_adaptive_clipping_follows_flowers_wrapper_round_by_round(side: str):
    # noise-multiplier 0 (the count is then exact, as in Flower): the clipping norms and the models of four rounds
    values = {
        "dp": f"{side}-adaptive",
        "initial-clipping-norm": 0.4,
        "clip-norm-lr": 0.3,
        "target-clipped-quantile": 0.3,
    }
    config = RunConfig.from_mapping({**CONFIG, **values})
    ours = make_strategy(config)
    flower_class = getattr(flwr_strategy, f"DifferentialPrivacy{side.capitalize()}SideAdaptiveClipping")
    inner = flwr_strategy.FedAvg(min_train_nodes=4, min_available_nodes=4)
    theirs = flower_class(inner, 0.0, 4, initial_clipping_norm=0.4, target_clipped_quantile=0.3, clip_norm_lr=0.3)
    weights = _initial_weights()
    flower_weights = {k: v.clone() for k, v in weights.items()}
    norms = []
    for server_round in range(1, 5):
        uploads = _uploads(weights, scales=(0.01, 0.2, 0.5, 3.0))
        messages = list(theirs.configure_train(server_round, _records(flower_weights), ConfigRecord({}), _Grid()))
        if side == "client":  # the clients clip with the norm the round's config carries, and say if they did
            sent = messages[0].content.config_records["config"][KEY_CLIPPING_NORM]
            assert ours.client_config()["clipping-norm"] == pytest.approx(sent, rel=1e-12)
            clipped = [clip_update(u.tensors, weights, sent) for u in uploads]
            uploads = [
                ClientUpdate(u.pid, u.num_examples, t, {"norm-bit": float(bit)})
                for u, (t, bit) in zip(uploads, clipped, strict=True)
            ]
        arrays, _ = theirs.aggregate_train(server_round, _replies(messages, uploads, norm_bits=side == "client"))
        assert arrays is not None
        ours.apply(weights, ours.combine(uploads, weights), server_round)
        assert ours.clipping_norm == pytest.approx(theirs.clipping_norm, rel=1e-12)
        flower_weights = {k: torch.from_numpy(v.copy()) for k, v in _numpy(arrays).items()}
        for k in weights:
            np.testing.assert_allclose(weights[k].numpy(), flower_weights[k].numpy(), rtol=1e-5, atol=1e-6)
        norms.append(ours.clipping_norm)
    assert len(set(norms)) == len(norms), "the norm adapted every round"


def test_adaptive_noise_std_is_flowers_formula():
    # σ = 1 with σ_b = 2: z = (σ⁻² − (2σ_b)⁻²)^(−1/2), and the noise of the round uses the adapted norm
    values = {"dp": "server-adaptive", "noise-multiplier": 1.0, "clipped-count-stddev": 2.0}
    strategy = make_strategy(RunConfig.from_mapping({**CONFIG, **values}))
    weights = {"w": torch.zeros(200, 200)}
    uploads = [ClientUpdate(pid, n, {"w": torch.zeros(200, 200)}) for pid, n in enumerate(EXAMPLES)]
    noise = strategy.combine(uploads, weights)["w"].double()
    count_std, z = compute_adaptive_noise_params(1.0, 4, 2.0)
    assert (strategy.clipped_count_stddev, strategy.noise_multiplier) == (count_std, pytest.approx(z))
    assert strategy.clipping_norm != 0.1, "the count's noise moved the norm"
    assert float(noise.std()) == pytest.approx(compute_stdv(z, strategy.clipping_norm, 4), rel=0.02)


def test_client_side_clipping_goes_to_the_clients():
    config = RunConfig.from_mapping({**CONFIG, "strategy": "fedprox", "dp": "client-fixed"})
    assert make_strategy(config).client_config() == {"proximal-mu": config.proximal_mu, "clipping-norm": 0.3}
    assert make_strategy(config.replace(dp="server-fixed")).client_config() == {"proximal-mu": config.proximal_mu}


def test_privacy_parameters_are_recorded():
    config = RunConfig.from_mapping({"dp": "server-fixed", "noise-multiplier": 1.1, "num-server-rounds": 50})
    record = privacy_record(config)
    assert record is not None
    assert record["noise-std"] == pytest.approx(1.1 * 1.0 / config.cohort_size)
    assert (record["sampling-rate"], record["rounds"], record["epsilon"]) == (0.1, 50, None)
    assert privacy_record(RunConfig.from_mapping({})) is None


def test_clients_clip_their_uploads_in_a_real_round(fake_cifar_root: Path, tmp_path: Path):
    # no noise: each round's new global model is a weighted mean of clipped updates, so it moves by at most C
    clip = 1e-3
    values = {**TINY_FEDERATION, "num-server-rounds": 2, "run-name": "dp", "checkpoint-keep": 5, "eval-every": 5}
    values.update({"dp": "client-fixed", "clipping-norm": clip, "noise-multiplier": 0.0})
    run_dir, _ = run_server(offline_tiny(fake_cifar_root, tmp_path / "runs", values))
    first, second = (load_file(run_dir / "checkpoints" / f"ckpt-{step:09d}.safetensors") for step in (1, 2))
    weights = [k for k in first if k.startswith("weights/")]
    moved = math.sqrt(sum(float((second[k] - first[k]).double().square().sum()) for k in weights))
    assert 0 < moved <= clip * (1 + 1e-4)
