"""q-FedAvg (Li et al., 2020, "Fair resource allocation in federated learning"), as Flower 1.42's ``QFedAvg``: clients
with a higher train loss weigh more, by loss^q. Flower's ``client_learning_rate`` (L = 1 / it, a Lipschitz estimate)
is the run's ``lr``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.strategies.base import Weights
from fedtalos.strategies.fedavg import FedAvg


class QFedAvg(FedAvg):
    """Δ_k = loss_k^q · L·(w − x_k); h_k = q·loss_k^(q−1)·‖L·(w − x_k)‖² + L·loss_k^q; w ← w − ΣΔ_k / Σh_k.

    loss_k is the client's reported ``train-loss`` (+1e-10, as Flower); the sums run over the uploaded keys.
    """

    name = "qfedavg"
    combines_updates = True

    def __init__(self, client_learning_rate: float, q: float = 0.1) -> None:
        if client_learning_rate <= 0:
            raise ValueError(f"client_learning_rate must be positive, got {client_learning_rate}")
        self.client_learning_rate = client_learning_rate
        self.q = q

    def combine(self, updates: Sequence[ClientUpdate], reference: Mapping[str, torch.Tensor]) -> Weights:
        lipschitz = 1.0 / self.client_learning_rate
        sum_delta: Weights = {}
        sum_h = 0.0
        for update in updates:
            loss = update.metrics.get("train-loss")
            if loss is None:
                raise ValueError(f"qfedavg: the reply of client {update.pid} carries no train-loss")
            grad = {k: (reference[k] - v).mul_(lipschitz) for k, v in update.tensors.items()}
            norm = sum(float(g.square().sum()) for g in grad.values())
            loss_pow_q = (loss + 1e-10) ** self.q
            sum_h += self.q * (loss + 1e-10) ** (self.q - 1) * norm + lipschitz * loss_pow_q
            for key, g in grad.items():
                g.mul_(loss_pow_q)
                if key in sum_delta:
                    sum_delta[key].add_(g)
                else:
                    sum_delta[key] = g
        return {key: reference[key] - delta / sum_h for key, delta in sum_delta.items()}
