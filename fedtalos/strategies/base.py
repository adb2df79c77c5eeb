"""The interface of a server strategy: the update of the global weights from the clients' weighted mean."""

from __future__ import annotations

from typing import Any

import torch

Weights = dict[str, torch.Tensor]


class ServerStrategy:
    """Turns the clients' weighted mean into the next global weights, in place, keeping its state as tensors."""

    name: str

    def client_config(self) -> dict[str, Any]:
        """Extra values sent to clients with every train message (e.g. FedProx's ``proximal-mu``)."""
        return {}

    def apply(self, global_weights: Weights, average: Weights, phase_round: int) -> None:
        """Update ``global_weights`` in place from the clients' weighted ``average`` (same keys and shapes).

        ``average`` may be modified. ``phase_round`` is the 1-based index of the round within its phase (FedAdam's
        bias correction counts it; rounds of other phases, which update other keys or none, do not count).
        """
        raise NotImplementedError

    def state_dict(self) -> Weights:
        """The strategy's state as named tensors (empty when it keeps none)."""
        return {}

    def load_state_dict(self, state: Weights) -> None:
        """Restore :meth:`state_dict`."""
        if state:
            raise ValueError(f"{self.name} keeps no state, got {sorted(state)[:3]}...")
