"""Server strategies, selected by the run-config key ``strategy`` (``registry.STRATEGIES``), wrapped by ``dp``.

Each turns the clients' weighted mean into the next global weights, in place, and keeps its state as tensors for the
checkpoint; the robust rules, q-FedAvg and the DP wrappers combine the cohort's updates themselves
(``ServerStrategy.combines_updates``). The update rules and defaults are those of Flower 1.42's classes of the same
names (``tests/strategies/`` runs both side by side). Flower's classes do not run the rounds: they sample with an
unseeded ``random``, restart their round count on every start and keep state no checkpoint sees, and a run must
resume exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtalos.strategies.base import ServerStrategy
from fedtalos.strategies.registry import STRATEGIES, build

if TYPE_CHECKING:
    from fedtalos.config import RunConfig

__all__ = ["STRATEGIES", "ServerStrategy", "make_strategy"]


def make_strategy(config: RunConfig) -> ServerStrategy:
    """The strategy named by ``config.strategy`` with its hyper-parameters, inside ``config.dp``'s wrapper if any."""
    return build(config)
