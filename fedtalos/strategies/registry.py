"""Strategy name → its factory from a run config (``config.strategy`` names one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedtalos.strategies.base import ServerStrategy
from fedtalos.strategies.fedavg import FedAvg
from fedtalos.strategies.fedavgm import FedAvgM
from fedtalos.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fedtalos.strategies.fedprox import FedProx

# Each factory takes a RunConfig; fedtalos.config is not imported, not even for typing, so that config.py can import
# these names (tests/test_layout.py counts a TYPE_CHECKING import as an edge of the import graph).
STRATEGIES: dict[str, Callable[[Any], ServerStrategy]] = {
    "fedavg": lambda c: FedAvg(),
    "fedavgm": lambda c: FedAvgM(c.resolved_server_lr, c.server_momentum),
    "fedprox": lambda c: FedProx(c.proximal_mu),
    "fedadam": lambda c: FedAdam(c.resolved_server_lr, c.server_beta1, c.server_beta2, c.server_tau),
    "fedyogi": lambda c: FedYogi(c.resolved_server_lr, c.server_beta1, c.server_beta2, c.server_tau),
    "fedadagrad": lambda c: FedAdagrad(c.resolved_server_lr, c.server_tau),
}
