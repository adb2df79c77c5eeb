"""The server's state (FedJAX style): everything the next round needs, and its checkpoint encoding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fedtalos.run.codec import STRATEGY, checkpoint_mask, checkpoint_weights, section, state_tensors
from fedtalos.tracking.checkpoint import Checkpoint


@dataclass
class ServerState:
    """Where a federated run stands.

    Attributes:
        step: completed rounds over all phases (the checkpoint index; monotone).
        phase: the phase in progress: 'head', 'calibration', 'train' or 'done'.
        phase_round: completed rounds of that phase.
        weights: the global model (name → tensor, on the CPU).
        strategy: the server strategy's state tensors.
        mask: name → bool tensor (1 = trainable) once calibration has started, else None.
        rows: the metric rows logged so far.
        extras: small JSON values phases keep (e.g. the ridge head's logit scale).
    """

    step: int
    phase: str
    phase_round: int
    weights: dict[str, torch.Tensor]
    strategy: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: dict[str, torch.Tensor] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def advance(self, phase: str, index: int, row: dict[str, Any]) -> None:
        """Round ``index`` of ``phase`` is done (one more step) and ``row`` is its metric row."""
        self.step, self.phase, self.phase_round = self.step + 1, phase, index
        self.rows.append(row)

    def tensors(self) -> dict[str, torch.Tensor]:
        """All tensors, prefixed by kind, for the checkpoint file (:mod:`fedtalos.run.codec`)."""
        return state_tensors(self.weights, strategy=self.strategy, mask=self.mask)

    def meta(self) -> dict[str, Any]:
        """The JSON part of the checkpoint."""
        return {
            "step": self.step,
            "phase": self.phase,
            "phase_round": self.phase_round,
            "has_mask": self.mask is not None,
            "mask_keys": list(self.mask) if self.mask is not None else [],
            "weight_keys": list(self.weights),
            "rows": self.rows,
            "extras": self.extras,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> ServerState:
        """Rebuild the state from a verified checkpoint (tensor order as it was saved)."""
        meta = checkpoint.meta
        return cls(
            step=meta["step"],
            phase=meta["phase"],
            phase_round=meta["phase_round"],
            weights=checkpoint_weights(checkpoint),
            strategy=section(checkpoint.tensors, STRATEGY),
            mask=checkpoint_mask(checkpoint),
            rows=meta["rows"],
            extras=meta["extras"],
        )
