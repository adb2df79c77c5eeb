"""Learning-rate schedulers of a centralized training phase, stepped once per optimizer step.

Stateless schedules (constant, cosine, warmup-cosine, step, exponential) are the closed forms of
:func:`fedtalos.task.lr_schedule.lr_at` evaluated at *fractional* epochs: optimizer step k (0-based, within the phase)
of a phase with S steps per epoch and E epochs uses ``lr_at(config, k / S, E)``. So a cosine decays smoothly
within epochs (not in E plateaus), while 'step' still drops at epoch multiples of ``lr-step-size`` and
'exponential' reaches ``lr·gamma^e`` exactly at the start of epoch e. They run through ``LambdaLR``, whose state
(the step count) is checkpointed. 'plateau' is ``ReduceLROnPlateau`` on the validation loss, stepped at each
evaluation (``eval-every``: patience counts evaluations), with ``lr-gamma`` as the factor, ``lr-patience`` and
``lr-min`` as the floor.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from fedtalos.config import RunConfig
from fedtalos.task.lr_schedule import lr_at

Scheduler = LRScheduler | ReduceLROnPlateau


def make_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig, epochs: int, steps_per_epoch: int) -> Scheduler:
    """The scheduler of ``config.lr-schedule`` for a phase of ``epochs`` × ``steps_per_epoch`` optimizer steps.

    The optimizer's learning rate must be ``config.lr`` when this is called (LambdaLR scales it).
    """
    if config.lr_schedule == "plateau":
        return ReduceLROnPlateau(
            optimizer, mode="min", factor=config.lr_gamma, patience=config.lr_patience, min_lr=config.lr_min
        )
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"need at least one epoch of one step, got {epochs} × {steps_per_epoch}")
    return LambdaLR(optimizer, lambda step: lr_at(config, step / steps_per_epoch, epochs) / config.lr)


def after_step(scheduler: Scheduler) -> None:
    """Advance a per-step scheduler after an optimizer step (plateau moves only at evaluations)."""
    if not isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step()


def after_evaluation(scheduler: Scheduler, val_loss: float) -> None:
    """Feed the validation loss (nats) to a plateau scheduler; the per-step schedules ignore it."""
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(val_loss)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate the next optimizer step will use (of the first parameter group)."""
    return float(optimizer.param_groups[0]["lr"])
