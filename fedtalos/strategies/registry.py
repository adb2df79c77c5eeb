"""Strategy name → its factory from a run config (``config.strategy`` names one); ``dp`` wraps it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedtalos.strategies.base import ServerStrategy
from fedtalos.strategies.dp import AdaptiveClipping, Clipping
from fedtalos.strategies.fedavg import FedAvg
from fedtalos.strategies.fedavgm import FedAvgM
from fedtalos.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fedtalos.strategies.fedprox import FedProx
from fedtalos.strategies.qfedavg import QFedAvg
from fedtalos.strategies.robust import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

# Each factory takes a RunConfig; fedtalos.config is not imported, not even for typing, so that config.py can import
# these names (tests/test_layout.py counts a TYPE_CHECKING import as an edge of the import graph).
STRATEGIES: dict[str, Callable[[Any], ServerStrategy]] = {
    "fedavg": lambda c: FedAvg(),
    "fedavgm": lambda c: FedAvgM(c.resolved_server_lr, c.server_momentum),
    "fedprox": lambda c: FedProx(c.proximal_mu),
    "fedadam": lambda c: FedAdam(c.resolved_server_lr, c.server_beta1, c.server_beta2, c.server_tau),
    "fedyogi": lambda c: FedYogi(c.resolved_server_lr, c.server_beta1, c.server_beta2, c.server_tau),
    "fedadagrad": lambda c: FedAdagrad(c.resolved_server_lr, c.server_tau),
    "fedmedian": lambda c: FedMedian(),
    "fedtrimmedavg": lambda c: FedTrimmedAvg(c.beta),
    "krum": lambda c: Krum(c.num_malicious_nodes),
    "multikrum": lambda c: MultiKrum(c.num_malicious_nodes, c.num_nodes_to_select),
    "bulyan": lambda c: Bulyan(c.num_malicious_nodes),
    "qfedavg": lambda c: QFedAvg(c.lr, c.q),
}


def build(config: Any) -> ServerStrategy:
    """The strategy of ``config.strategy``, wrapped in ``config.dp``'s clipping and noise unless it is 'none'."""
    strategy = STRATEGIES[config.strategy](config)
    if config.dp == "none":
        return strategy
    side, kind = config.dp.split("-")  # 'server' or 'client' clips; 'fixed' or 'adaptive' clipping norm
    m, sigma = config.cohort_size, config.noise_multiplier
    if kind == "fixed":
        return Clipping(strategy, side, sigma, config.clipping_norm, m, config.seed)
    count_std = config.clipped_count_stddev or None  # 0: Flower's default
    return AdaptiveClipping(
        strategy,
        side,
        sigma,
        m,
        config.seed,
        config.initial_clipping_norm,
        config.target_clipped_quantile,
        config.clip_norm_lr,
        count_std,
    )
