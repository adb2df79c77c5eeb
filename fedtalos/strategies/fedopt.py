"""Adaptive server optimisers (Reddi et al., 2021): FedAdam, FedYogi, FedAdagrad, as Flower's classes."""

from __future__ import annotations

import math

import torch

from fedtalos.strategies.base import ServerStrategy, Weights


class FedOpt(ServerStrategy):
    """Δ = avg − w; m ← β1·m + (1−β1)·Δ; v ← (variant); w ← w + η'·m / (√v + τ).

    η' is ``server_lr`` (with FedAdam's bias correction, over the rounds of the phase). Shapes: every state tensor
    has its weight's shape; the state is kept per key, so a phase that updates other keys starts its own moments.
    """

    name = "fedopt"

    def __init__(self, server_lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.server_lr = server_lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self.m: Weights = {}
        self.v: Weights = {}

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        raise NotImplementedError

    def _step_size(self, phase_round: int) -> float:
        return self.server_lr

    def apply(self, global_weights: Weights, average: Weights, phase_round: int) -> None:
        eta = self._step_size(phase_round)
        for key, avg in average.items():
            w = global_weights[key]
            delta = avg.sub_(w)
            if self.beta1 == 0.0:
                # m = Δ exactly (FedAdagrad): nothing to keep, and Δ must survive its square
                m, delta_sq = delta, delta.square()
            else:
                m = self.m.setdefault(key, torch.zeros_like(w))
                m.mul_(self.beta1).add_(delta, alpha=1.0 - self.beta1)
                delta_sq = delta.square_()
            v = self.v.setdefault(key, torch.zeros_like(w))
            self._second_moment(v, delta_sq)
            w.addcdiv_(m, v.sqrt().add_(self.tau), value=eta)

    def state_dict(self) -> Weights:
        return {**{f"m/{k}": t for k, t in self.m.items()}, **{f"v/{k}": t for k, t in self.v.items()}}

    def load_state_dict(self, state: Weights) -> None:
        self.m = {k[2:]: t.clone() for k, t in state.items() if k.startswith("m/")}
        self.v = {k[2:]: t.clone() for k, t in state.items() if k.startswith("v/")}


class FedAdam(FedOpt):
    """v ← β2·v + (1−β2)·Δ², with Adam's bias correction of the step size.

    The correction counts t = r + 1 for the r-th round (1-based) of the phase the update serves, as Flower's
    ``FedAdam`` does with its ``server_round`` in a run that has only that phase: head and calibration rounds
    before it do not update these moments, so they do not count.
    """

    name = "fedadam"

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.mul_(self.beta2).add_(delta_sq, alpha=1.0 - self.beta2)

    def _step_size(self, phase_round: int) -> float:
        t = phase_round + 1.0
        return self.server_lr * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)


class FedYogi(FedOpt):
    """v ← v − (1−β2)·Δ²·sign(v − Δ²)."""

    name = "fedyogi"

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.sub_(delta_sq * torch.sign(v - delta_sq), alpha=1.0 - self.beta2)


class FedAdagrad(FedOpt):
    """m = Δ (β1 = 0, as Flower's ``FedAdagrad``, which takes no β1 or β2); v ← v + Δ²."""

    name = "fedadagrad"

    def __init__(self, server_lr: float = 0.1, tau: float = 1e-3) -> None:
        super().__init__(server_lr, beta1=0.0, beta2=0.0, tau=tau)

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.add_(delta_sq)
