"""FedProx (Li et al., 2020): FedAvg's update; the clients add (μ/2)·‖w − w_global‖² to their loss."""

from __future__ import annotations

from typing import Any

from fedtalos.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg on the server; ``proximal-mu`` travels to the clients with every train message."""

    name = "fedprox"

    def __init__(self, proximal_mu: float) -> None:
        self.proximal_mu = proximal_mu

    def client_config(self) -> dict[str, Any]:
        return {"proximal-mu": self.proximal_mu}
