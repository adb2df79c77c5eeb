"""Name → strategy, from the run config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedtalos.config import RunConfig
from fedtalos.strategies.base import ServerStrategy
from fedtalos.strategies.fedavgm import FedAvgM
from fedtalos.strategies.fedopt import FedAdagrad, FedAdam, FedYogi


class FedProx(ServerStrategy):
    """FedProx (Li et al., 2020): FedAvg aggregation; clients add (μ/2)·‖w − w_global‖² to their loss."""

    name = "fedprox"

    def __init__(self, proximal_mu: float) -> None:
        self.proximal_mu = proximal_mu

    def client_config(self) -> dict[str, Any]:
        return {"proximal-mu": self.proximal_mu}


STRATEGIES: dict[str, Callable[[RunConfig], ServerStrategy]] = {
    "fedavg": lambda c: ServerStrategy(),
    "fedavgm": lambda c: FedAvgM(c.resolved_server_lr, c.server_momentum),
    "fedprox": lambda c: FedProx(c.proximal_mu),
    "fedadam": lambda c: FedAdam(c.resolved_server_lr, c.server_beta1, c.server_beta2, c.server_tau),
    "fedyogi": lambda c: FedYogi(c.resolved_server_lr, c.server_beta1, c.server_beta2, c.server_tau),
    "fedadagrad": lambda c: FedAdagrad(c.resolved_server_lr, c.server_tau),
}


def make_strategy(config: RunConfig) -> ServerStrategy:
    """The strategy named by ``config.strategy`` with its hyper-parameters."""
    return STRATEGIES[config.strategy](config)
