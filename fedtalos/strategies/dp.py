"""Differential privacy around any strategy, as Flower 1.42's wrappers (McMahan et al., 2018, "Learning differentially
private recurrent language models"; Andrew et al., 2021, adaptive clipping): ``dp = "server-fixed"`` /
``"client-fixed"`` (``DifferentialPrivacy{Server,Client}SideFixedClipping``) and ``"server-adaptive"`` /
``"client-adaptive"`` (``...AdaptiveClipping``). On the server side the server clips each update; on the client side
each client clips its own upload (``client_app.train``, as Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod``).

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

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from fedtalos.federation.aggregate import ClientUpdate, weighted_mean
from fedtalos.seeds import dp_noise_generator
from fedtalos.strategies.base import ServerStrategy, Weights

RELEASES = "dp/releases"  # the state key of the count of noised aggregates
CLIPPING_NORM = "dp/clipping-norm"  # the state key of an adaptive clipping norm
NORM_BIT = "norm-bit"  # the train-reply metric of a client that clipped its upload: 1.0 if it clipped


def clip_update(
    values: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor], clipping_norm: float
) -> tuple[dict[str, torch.Tensor], bool]:
    """start + (values − start)·min(1, C/‖values − start‖), the norm over all keys (CPU tensors), and whether it
    clipped (the adaptive wrappers' norm bit).

    The arithmetic of Flower's ``compute_clip_model_update``, step for step in float32 (the norm by
    ``np.linalg.norm`` per tensor), so both clip to the same bits (``tests/strategies/test_dp.py``).
    """
    update = {k: v - start[k] for k, v in values.items()}
    norms = [np.linalg.norm(u.numpy().flat) for u in update.values()]
    norm = float(np.sqrt(sum([n**2 for n in norms])))
    scale = min(1, clipping_norm / norm) if norm > 0 else 1
    return {k: start[k] + u.mul_(scale) for k, u in update.items()}, scale < 1


def noise_std(noise_multiplier: float, clipping_norm: float, num_sampled_clients: int) -> float:
    """σ·C/m (Flower's ``compute_stdv``)."""
    return float((noise_multiplier * clipping_norm) / num_sampled_clients)


def adaptive_noise_params(
    noise_multiplier: float, num_sampled_clients: int, clipped_count_stddev: float | None
) -> tuple[float, float]:
    """(σ_b, z): the count's noise std (None: m/20) and the weights' noise multiplier left once the count has taken
    its part, z = (σ⁻² − (2σ_b)⁻²)^(−1/2) (Andrew et al., 2021; Flower's ``compute_adaptive_noise_params``)."""
    if noise_multiplier <= 0:
        return clipped_count_stddev or 0.0, 0.0
    if clipped_count_stddev is None:
        clipped_count_stddev = num_sampled_clients / 20
    if noise_multiplier >= 2 * clipped_count_stddev:
        raise ValueError(f"noise multiplier {noise_multiplier} must be below 2 × {clipped_count_stddev}")
    return clipped_count_stddev, (noise_multiplier**-2 - (2 * clipped_count_stddev) ** -2) ** -0.5


class Clipping(ServerStrategy):
    """``strategy`` with clipping on the ``side`` ('server' or 'client') and Gaussian noise on what it combines; a
    fixed clipping norm (subclasses adapt it)."""

    combines_updates = True
    kind = "fixed"

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
        self.name = f"{strategy.name}+dp-{side}-{self.kind}"
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
        generator = dp_noise_generator(self.seed, self.releases)
        if self.side == "server":
            clipped = [clip_update(u.tensors, reference, self.clipping_norm) for u in updates]
            updates = [replace(u, tensors=t, squared_distance=None) for u, (t, _) in zip(updates, clipped, strict=True)]
            bits = [bit for _, bit in clipped]
        else:
            bits = [_norm_bit(u) for u in updates] if self.kind == "adaptive" else []
        inner = self.strategy
        combined = inner.combine(updates, reference) if inner.combines_updates else weighted_mean(updates)
        self.adapt(bits, generator)
        for value in combined.values():
            value.add_(torch.randn(value.shape, generator=generator, dtype=value.dtype), alpha=self.std)
        self.releases += 1
        return combined

    def adapt(self, clipped: list[bool], generator: torch.Generator) -> None:
        """The clipping norm after a round whose updates were ``clipped`` or not (fixed: unchanged)."""

    def apply(self, global_weights: Weights, average: Weights, phase_round: int) -> None:
        self.strategy.apply(global_weights, average, phase_round)

    def state_dict(self) -> Weights:
        return {**self.strategy.state_dict(), RELEASES: torch.tensor(self.releases, dtype=torch.int64)}

    def load_state_dict(self, state: Weights) -> None:
        self.releases = int(state[RELEASES]) if RELEASES in state else 0
        self.strategy.load_state_dict({k: v for k, v in state.items() if not k.startswith("dp/")})


class AdaptiveClipping(Clipping):
    """Clipping whose norm follows a target quantile of the update norms (Andrew et al., 2021, "Differentially
    private learning with adaptive clipping"), as Flower's ``DifferentialPrivacy{Server,Client}SideAdaptiveClipping``.

    After each round, with b the fraction of updates clipped, measured with noise (std σ_b/n):
    C ← C·exp(−η_C·(b − γ)). The weights' noise multiplier is z of :func:`adaptive_noise_params`, and the noise of
    the round uses the updated C, as Flower's. Clients clipping their own uploads report their bit as ``norm-bit``.
    """

    kind = "adaptive"

    def __init__(
        self,
        strategy: ServerStrategy,
        side: str,
        noise_multiplier: float,
        num_sampled_clients: int,
        seed: int,
        initial_clipping_norm: float = 0.1,
        target_clipped_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
    ) -> None:
        if not 0 <= target_clipped_quantile <= 1 or clip_norm_lr <= 0:
            raise ValueError(
                f"need 0 <= target quantile <= 1 and lr > 0, got {target_clipped_quantile}, {clip_norm_lr}"
            )
        count_std, z = adaptive_noise_params(noise_multiplier, num_sampled_clients, clipped_count_stddev)
        super().__init__(strategy, side, z, initial_clipping_norm, num_sampled_clients, seed)
        self.target_clipped_quantile = target_clipped_quantile
        self.clip_norm_lr = clip_norm_lr
        self.clipped_count_stddev = count_std

    def adapt(self, clipped: list[bool], generator: torch.Generator) -> None:
        noisy_count = sum(clipped) + self.clipped_count_stddev * float(torch.randn(1, generator=generator).double())
        fraction = noisy_count / len(clipped)
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (fraction - self.target_clipped_quantile))

    def state_dict(self) -> Weights:
        return {**super().state_dict(), CLIPPING_NORM: torch.tensor(self.clipping_norm, dtype=torch.float64)}

    def load_state_dict(self, state: Weights) -> None:
        if CLIPPING_NORM in state:
            self.clipping_norm = float(state[CLIPPING_NORM])
        super().load_state_dict(state)


def _norm_bit(update: ClientUpdate) -> bool:
    bit = update.metrics.get(NORM_BIT)
    if bit is None:
        raise ValueError(f"dp client-adaptive: the reply of client {update.pid} carries no {NORM_BIT}")
    return bool(bit)


def privacy_record(config: Any) -> dict[str, Any] | None:
    """The privacy parameters of a run with ``dp`` set (for its ``config.json``), None without.

    No (ε, δ): Flower 1.42's RDP accountant (``flwr.supercore.privacy_accounting``) accepts only fixed clipping,
    no-amplification sampling and equal client weights, and this run weighs clients by their example counts; no
    other accountant is installed. The sampling rate and the rounds are recorded so that one can be applied later.
    """
    if config.dp == "none":
        return None
    m = config.cohort_size
    record: dict[str, Any] = {"mechanism": f"gaussian, {config.dp} clipping", "num-sampled-clients": m}
    if config.dp.endswith("-adaptive"):
        count_std, z = adaptive_noise_params(config.noise_multiplier, m, config.clipped_count_stddev or None)
        record.update(
            {
                "noise-multiplier": config.noise_multiplier,
                "weights-noise-multiplier": z,
                "clipped-count-stddev": count_std,
                "initial-clipping-norm": config.initial_clipping_norm,
                "target-clipped-quantile": config.target_clipped_quantile,
                "clip-norm-lr": config.clip_norm_lr,
            }
        )
    else:
        record.update(
            {
                "noise-multiplier": config.noise_multiplier,
                "clipping-norm": config.clipping_norm,
                "noise-std": noise_std(config.noise_multiplier, config.clipping_norm, m),
            }
        )
    return record | {
        "sampling-rate": m / config.num_clients,
        # every training round releases a noised aggregate, linear probing's too
        "rounds": config.num_server_rounds + (config.probe_rounds if config.head == "probe" else 0),
        "epsilon": None,
        "epsilon-note": "not computed: no accountant here fits example-weighted aggregation",
    }
