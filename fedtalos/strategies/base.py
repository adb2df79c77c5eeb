"""The strategy interface."""

from __future__ import annotations

from typing import Any

import torch

Weights = dict[str, torch.Tensor]


class ServerStrategy:
    """FedAvg: the next global model is the clients' weighted average. Subclasses add server optimisers."""

    name = "fedavg"

    def client_config(self) -> dict[str, Any]:
        """Extra values sent to clients with every train message (e.g. FedProx's ``proximal-mu``)."""
        return {}

    def apply(self, global_weights: Weights, average: Weights, phase_round: int) -> None:
        """Update ``global_weights`` in place from the clients' weighted ``average`` (same keys and shapes).

        ``average`` may be modified. ``phase_round`` is the 1-based index of the round within its phase (FedAdam's
        bias correction counts it; rounds of other phases, which update other keys or none, do not count).
        """
        for key, value in average.items():
            global_weights[key].copy_(value)

    def state_dict(self) -> Weights:
        """The strategy's state as named tensors (empty for FedAvg)."""
        return {}

    def load_state_dict(self, state: Weights) -> None:
        """Restore :meth:`state_dict`."""
        if state:
            raise ValueError(f"{self.name} keeps no state, got {sorted(state)[:3]}...")
