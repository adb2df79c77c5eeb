"""The interface of a server strategy: the update of the global weights from the clients' weighted mean, or, for the
strategies that need every client's update (robust rules, q-FedAvg, DP clipping), from their own combination."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedtalos.federation.aggregate import ClientUpdate

Weights = dict[str, torch.Tensor]


class ServerStrategy:
    """Turns the clients' weighted mean into the next global weights, in place, keeping its state as tensors."""

    name: str
    # True: the round hands :meth:`combine` the cohort's checked updates and applies its result instead of the
    # weighted mean, so the server holds every update of the round (robust rules: a median is not a running sum).
    combines_updates: bool = False

    def client_config(self) -> dict[str, Any]:
        """Extra values sent to clients with every train message (e.g. FedProx's ``proximal-mu``)."""
        return {}

    def combine(self, updates: Sequence[ClientUpdate], reference: Mapping[str, torch.Tensor]) -> Weights:
        """What replaces the weighted mean of ``updates`` (only when ``combines_updates``): for every uploaded key,
        new values of its shape.

        ``reference`` holds the values the clients started from, per uploaded key (for masked tensors the flat
        vector of the global trainable entries, ``protocol.MASKED_VALUES``): rules apply over what was uploaded,
        so frozen entries never enter them. ``updates`` are in partition-id order and must not be modified.
        """
        raise NotImplementedError

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
