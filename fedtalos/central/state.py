"""Where a centralized run stands (FedJAX style: everything the next step needs), and its checkpoint encoding.

A checkpoint holds the model, the optimizer of the phase in progress (momentum buffers, SparseSGDM masks), the
learning-rate scheduler, the position (phase, epoch, step within the epoch), the sums of the epoch in progress,
the torch RNG states, the mask and the metric rows so far. Tensors go to the safetensors file under prefixes
(``weights/``, ``optimizer/<index>/<key>``, ``mask/``, ``rng/``); everything else is JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fedtalos.task.train import LoopStats
from fedtalos.tracking.checkpoint import Checkpoint


def empty_partial() -> dict[str, Any]:
    """The running sums of an epoch that has not started (see :attr:`TrainState.partial`)."""
    return {"loss_sum": 0.0, "correct": 0, "count": 0, "steps": 0, "lr": None, "wall_s": 0.0}


def add_stats(partial: dict[str, Any], stats: LoopStats) -> None:
    """Add one segment's loop sums to ``partial`` in place (float64 sums, as ``train_steps`` keeps them)."""
    partial["loss_sum"] += stats.loss_sum
    partial["correct"] += stats.correct
    partial["count"] += stats.count
    partial["steps"] += stats.steps


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
        partial: sums of the epoch in progress: ``loss_sum`` (nats × examples), ``correct``, ``count``,
            ``steps``, ``lr`` (the epoch's first learning rate), ``wall_s``.
        rows: the metric rows logged so far.
        rng: torch's global RNG states: ``cpu`` and, on CUDA, ``cuda`` (one per device), as uint8 tensors.
        extras: small JSON values (the ridge head's logit scale, mask statistics).
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
    partial: dict[str, Any] = field(default_factory=empty_partial)
    rows: list[dict[str, Any]] = field(default_factory=list)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """All tensors, prefixed by kind, for the checkpoint file."""
        out = {f"weights/{k}": v for k, v in self.weights.items()}
        if self.optimizer is not None:
            for index, entry in self.optimizer["state"].items():
                out.update({f"optimizer/{index}/{k}": v for k, v in entry.items() if isinstance(v, torch.Tensor)})
        if self.mask is not None:
            out.update({f"mask/{k}": v for k, v in self.mask.items()})
        out.update({f"rng/{k}": v for k, v in self.rng.items()})
        return out

    def meta(self) -> dict[str, Any]:
        """The JSON part of the checkpoint."""
        optimizer = None
        if self.optimizer is not None:
            # Non-tensor per-parameter state (e.g. a step count) travels in the JSON; the tensors in the file.
            scalars = {
                str(index): {k: v for k, v in entry.items() if not isinstance(v, torch.Tensor)}
                for index, entry in self.optimizer["state"].items()
            }
            optimizer = {"param_groups": self.optimizer["param_groups"], "scalars": scalars}
        return {
            "saves": self.saves,
            "phase": self.phase,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "weight_keys": list(self.weights),
            "mask_keys": list(self.mask) if self.mask is not None else None,
            "optimizer": optimizer,
            "scheduler": self.scheduler,
            "partial": self.partial,
            "rows": self.rows,
            "extras": self.extras,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> TrainState:
        """Rebuild the state from a verified checkpoint (tensor order as it was saved)."""
        meta, tensors = checkpoint.meta, checkpoint.tensors

        def section(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        optimizer = None
        if meta["optimizer"] is not None:
            state: dict[int, dict[str, Any]] = {}
            for key, value in section("optimizer/").items():
                index, name = key.split("/", 1)
                state.setdefault(int(index), {})[name] = value
            for index, entry in meta["optimizer"]["scalars"].items():
                state.setdefault(int(index), {}).update(entry)
            optimizer = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
        weights = section("weights/")
        mask = section("mask/")
        return cls(
            saves=meta["saves"],
            phase=meta["phase"],
            epoch=meta["epoch"],
            step_in_epoch=meta["step_in_epoch"],
            global_step=meta["global_step"],
            weights={k: weights[k] for k in meta["weight_keys"]},
            optimizer=optimizer,
            scheduler=meta["scheduler"],
            mask={k: mask[k] for k in meta["mask_keys"]} if meta["mask_keys"] is not None else None,
            partial=meta["partial"],
            rows=meta["rows"],
            rng=section("rng/"),
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
