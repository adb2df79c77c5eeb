"""Where a centralized run stands (FedJAX style: everything the next step needs), and its checkpoint encoding.

A checkpoint holds the model, the optimizer of the phase in progress (momentum buffers, SparseSGDM masks), the
learning-rate scheduler, the position (phase, epoch, step within the epoch), the sums of the epoch in progress,
the torch RNG states, the mask and the metric rows so far: the tensors through :mod:`fedtalos.run.codec`, the
rest as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fedtalos.run.codec import (
    RNG,
    checkpoint_mask,
    checkpoint_optimizer,
    checkpoint_weights,
    optimizer_meta,
    section,
    state_tensors,
)
from fedtalos.task.train import LoopStats
from fedtalos.tracking.checkpoint import Checkpoint


@dataclass
class TrainState:
    """Where a centralized run stands.

    Attributes:
        saves: checkpoints written so far; the next checkpoint's index (monotone over the whole run).
        phase: the phase in progress: 'head', 'calibration' or 'train'.
        epoch: completed epochs of that phase (the ridge head and the calibration count as one epoch).
        step_in_epoch: optimizer steps done in the epoch in progress (0 at an epoch boundary).
        global_step: optimizer steps over all phases.
        weights: the model's state dict (name → CPU tensor).
        optimizer: the phase's ``optimizer.state_dict()``, None before its first checkpoint.
        scheduler: the phase's ``lr_scheduler.state_dict()`` (plain JSON values), None likewise.
        mask: name → bool tensor (True = trainable) once calibrated, else None.
        epoch_sums: the loop sums of the epoch in progress (``loss_sum`` in nats × examples).
        epoch_lr: the learning rate of that epoch's first step (None before it starts).
        epoch_wall_s: wall-clock seconds spent on that epoch before the last checkpoint inside it.
        rows: the metric rows logged so far.
        rng: torch's global RNG states: ``cpu`` and, on CUDA, ``cuda`` (one per device), as uint8 tensors.
        extras: small JSON values (the ridge head's logit scale).
    """

    saves: int
    phase: str
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    mask: dict[str, torch.Tensor] | None = None
    epoch_sums: LoopStats = field(default_factory=LoopStats)
    epoch_lr: float | None = None
    epoch_wall_s: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def start_epoch(self, lr: float | None = None) -> None:
        """Reset the epoch in progress: no steps, no sums, ``lr`` its first learning rate."""
        self.step_in_epoch, self.epoch_sums, self.epoch_lr, self.epoch_wall_s = 0, LoopStats(), lr, 0.0

    def tensors(self) -> dict[str, torch.Tensor]:
        """All tensors, prefixed by kind, for the checkpoint file."""
        return state_tensors(self.weights, optimizer=self.optimizer, mask=self.mask, rng=self.rng)

    def meta(self) -> dict[str, Any]:
        """The JSON part of the checkpoint."""
        return {
            "saves": self.saves,
            "phase": self.phase,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "weight_keys": list(self.weights),
            "mask_keys": list(self.mask) if self.mask is not None else None,
            "optimizer": optimizer_meta(self.optimizer),
            "scheduler": self.scheduler,
            "partial": {**asdict(self.epoch_sums), "lr": self.epoch_lr, "wall_s": self.epoch_wall_s},
            "rows": self.rows,
            "extras": self.extras,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> TrainState:
        """Rebuild the state from a verified checkpoint (tensor order as it was saved)."""
        meta = checkpoint.meta
        partial = meta["partial"]
        return cls(
            saves=meta["saves"],
            phase=meta["phase"],
            epoch=meta["epoch"],
            step_in_epoch=meta["step_in_epoch"],
            global_step=meta["global_step"],
            weights=checkpoint_weights(checkpoint),
            optimizer=checkpoint_optimizer(checkpoint, meta["optimizer"]),
            scheduler=meta["scheduler"],
            mask=checkpoint_mask(checkpoint),
            epoch_sums=LoopStats(partial["loss_sum"], partial["correct"], partial["count"], partial["steps"]),
            epoch_lr=partial["lr"],
            epoch_wall_s=partial["wall_s"],
            rows=meta["rows"],
            rng=section(checkpoint.tensors, RNG),
            extras=meta["extras"],
        )


def capture_rng() -> dict[str, torch.Tensor]:
    """torch's global RNG states (CPU, and every CUDA device when CUDA is in use)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    """Set torch's global RNG states from :func:`capture_rng` output (CUDA states only where CUDA is in use)."""
    if "cpu" in states:
        torch.set_rng_state(states["cpu"].to(torch.uint8))
    keys = sorted((k for k in states if k.startswith("cuda")), key=lambda k: int(k[4:]))
    cuda = [states[k].to(torch.uint8) for k in keys]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
