"""Differential privacy around any strategy, as Flower 1.42's fixed-clipping wrappers (Andrew et al. / McMahan et
al., 2018, "Learning differentially private recurrent language models"):
``DifferentialPrivacyServerSideFixedClipping`` (``dp = "server-fixed"``: the server clips each update) and
``DifferentialPrivacyClientSideFixedClipping`` (``dp = "client-fixed"``: each client clips its own upload,
``client_app.train``, as Flower's ``fixedclipping_mod``).

An update u = x − w is clipped to u·min(1, C/‖u‖) over everything uploaded (with a mask: the trainable entries),
the wrapped strategy combines the clipped updates, and Gaussian noise of std σ·C/m (σ the noise multiplier, C the
clipping norm, m the cohort size, Flower's ``compute_stdv``) is added to what it combined. Noise is drawn from
``seeds.dp_noise_generator`` by the count of noised aggregates, kept in the checkpoint: a resumed run draws the same.

One deviation from Flower: the noise goes on the combined uploads, before the wrapped strategy's server step
(FedAvgM, FedAdam, ...), where Flower adds it to the weights that step returns. For FedAvg and the robust rules the
two are the same; for the server optimisers only noise before the step bounds what one client changes (the
adaptive step divides by √v, which is not bounded by C).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from fedtalos.federation.aggregate import ClientUpdate, weighted_mean
from fedtalos.seeds import dp_noise_generator
from fedtalos.strategies.base import ServerStrategy, Weights

RELEASES = "dp/releases"  # the state key of the count of noised aggregates


def clip_update(
    values: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor], clipping_norm: float
) -> dict[str, torch.Tensor]:
    """start + (values − start)·min(1, C/‖values − start‖), the norm over all keys (CPU tensors).

    The arithmetic of Flower's ``compute_clip_model_update``, step for step in float32 (the norm by
    ``np.linalg.norm`` per tensor), so both clip to the same bits (``tests/strategies/test_dp.py``).
    """
    update = {k: v - start[k] for k, v in values.items()}
    norms = [np.linalg.norm(u.numpy().flat) for u in update.values()]
    norm = float(np.sqrt(sum([n**2 for n in norms])))
    scale = min(1, clipping_norm / norm) if norm > 0 else 1
    return {k: start[k] + u.mul_(scale) for k, u in update.items()}


def noise_std(noise_multiplier: float, clipping_norm: float, num_sampled_clients: int) -> float:
    """σ·C/m (Flower's ``compute_stdv``)."""
    return float((noise_multiplier * clipping_norm) / num_sampled_clients)


class FixedClipping(ServerStrategy):
    """``strategy`` with fixed clipping on the ``side`` ('server' or 'client') and Gaussian noise."""

    combines_updates = True

    def __init__(
        self,
        strategy: ServerStrategy,
        side: str,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        seed: int,
    ) -> None:
        if side not in ("server", "client"):
            raise ValueError(f"side must be 'server' or 'client', got {side!r}")
        if noise_multiplier < 0 or clipping_norm <= 0 or num_sampled_clients <= 0:
            raise ValueError(
                f"need noise_multiplier >= 0, clipping_norm > 0, num_sampled_clients > 0; got {noise_multiplier}, "
                f"{clipping_norm}, {num_sampled_clients}"
            )
        self.strategy = strategy
        self.side = side
        self.name = f"{strategy.name}+dp-{side}-fixed"
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.num_sampled_clients = num_sampled_clients
        self.seed = seed
        self.releases = 0

    @property
    def std(self) -> float:
        return noise_std(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)

    def client_config(self) -> dict[str, Any]:
        clipping = {"clipping-norm": self.clipping_norm} if self.side == "client" else {}
        return {**self.strategy.client_config(), **clipping}

    def combine(self, updates: Sequence[ClientUpdate], reference: Mapping[str, torch.Tensor]) -> Weights:
        if self.side == "server":
            updates = [
                replace(u, tensors=clip_update(u.tensors, reference, self.clipping_norm), squared_distance=None)
                for u in updates
            ]
        inner = self.strategy
        combined = inner.combine(updates, reference) if inner.combines_updates else weighted_mean(updates)
        generator = dp_noise_generator(self.seed, self.releases)
        for value in combined.values():
            value.add_(torch.randn(value.shape, generator=generator, dtype=value.dtype), alpha=self.std)
        self.releases += 1
        return combined

    def apply(self, global_weights: Weights, average: Weights, phase_round: int) -> None:
        self.strategy.apply(global_weights, average, phase_round)

    def state_dict(self) -> Weights:
        return {**self.strategy.state_dict(), RELEASES: torch.tensor(self.releases, dtype=torch.int64)}

    def load_state_dict(self, state: Weights) -> None:
        self.releases = int(state[RELEASES]) if RELEASES in state else 0
        self.strategy.load_state_dict({k: v for k, v in state.items() if k != RELEASES})


def privacy_record(config: Any) -> dict[str, Any] | None:
    """The privacy parameters of a run with ``dp`` set (for its ``config.json``), None without.

    No (ε, δ): Flower 1.42's RDP accountant (``flwr.supercore.privacy_accounting``) accepts only no-amplification
    sampling with equal client weights, and this run weighs clients by their example counts; no other accountant
    is installed. The sampling rate and the rounds are recorded so that one can be applied afterwards.
    """
    if config.dp == "none":
        return None
    m = config.cohort_size
    return {
        "mechanism": f"gaussian, {config.dp} clipping",
        "clipping-norm": config.clipping_norm,
        "noise-multiplier": config.noise_multiplier,
        "num-sampled-clients": m,
        "noise-std": noise_std(config.noise_multiplier, config.clipping_norm, m),
        "sampling-rate": m / config.num_clients,
        # every training round releases a noised aggregate, linear probing's too
        "rounds": config.num_server_rounds + (config.probe_rounds if config.head == "probe" else 0),
        "epsilon": None,
        "epsilon-note": "not computed: no accountant here fits example-weighted aggregation",
    }
