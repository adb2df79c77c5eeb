"""FedAvg (McMahan et al., 2017): the next global model is the clients' weighted mean, as Flower's ``FedAvg``."""

from __future__ import annotations

from fedtalos.strategies.base import ServerStrategy, Weights


class FedAvg(ServerStrategy):
    """w ← avg."""

    name = "fedavg"

    def apply(self, global_weights: Weights, average: Weights, phase_round: int) -> None:
        for key, value in average.items():
            global_weights[key].copy_(value)
