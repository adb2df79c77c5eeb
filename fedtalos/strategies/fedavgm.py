"""FedAvgM (Hsu et al., 2019): server momentum on the pseudo-gradient, as Flower's ``FedAvgM``."""

from __future__ import annotations

from fedtalos.strategies.base import ServerStrategy, Weights


class FedAvgM(ServerStrategy):
    """pg = w − avg; v ← μ·v + pg (v = pg in the first round); w ← w − η·v."""

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, server_momentum: float = 0.9) -> None:
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.momentum: Weights = {}

    def apply(self, global_weights: Weights, average: Weights, phase_round: int) -> None:
        for key, avg in average.items():
            w = global_weights[key]
            pseudo_grad = w - avg
            if self.server_momentum > 0.0:
                if key in self.momentum:
                    pseudo_grad = self.momentum[key].mul_(self.server_momentum).add_(pseudo_grad)
                self.momentum[key] = pseudo_grad
            w.sub_(pseudo_grad, alpha=self.server_lr)

    def state_dict(self) -> Weights:
        return {f"momentum/{k}": v for k, v in self.momentum.items()}

    def load_state_dict(self, state: Weights) -> None:
        self.momentum = {k.removeprefix("momentum/"): v.clone() for k, v in state.items()}
