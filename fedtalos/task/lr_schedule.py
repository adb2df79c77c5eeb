"""Learning-rate schedules as pure functions of progress, shared by federated rounds and centralized epochs.

``lr_at(settings, t, total)`` gives the learning rate for period ``t`` (0-based: the t-th round or epoch, or a
fraction of one) out of ``total``. 'plateau' depends on validation results, so it is not a function of ``t``:
the centralized command runs it through ``torch.optim.lr_scheduler.ReduceLROnPlateau``. The names here are the
run-config key ``lr-schedule``'s choices.
"""

from __future__ import annotations

import math
from typing import Protocol

STATELESS = ("constant", "cosine", "warmup-cosine", "step", "exponential")
SCHEDULES = (*STATELESS, "plateau")


class ScheduleSettings(Protocol):
    """The run-config values a schedule reads (a :class:`fedtalos.config.RunConfig` has them all)."""

    lr: float
    lr_min: float
    lr_schedule: str
    warmup: int
    lr_step_size: int
    lr_gamma: float


def lr_at(config: ScheduleSettings, t: float, total: int) -> float:
    """The learning rate at progress ``t`` ∈ [0, total) for ``config.lr_schedule``.

    - constant: lr
    - cosine: lr_min + (lr − lr_min)·(1 + cos(π·t/total))/2
    - warmup-cosine: lr·(t+1)/(warmup+1) for t < warmup, then cosine over the remaining total − warmup
    - step: lr·gamma^⌊t/step_size⌋
    - exponential: lr·gamma^t
    """
    lr, lr_min, schedule = config.lr, config.lr_min, config.lr_schedule
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t / total))
    if schedule == "warmup-cosine":
        warmup = min(config.warmup, total - 1)
        if t < warmup:
            return lr * (t + 1) / (warmup + 1)
        return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (total - warmup)))
    if schedule == "step":
        return lr * config.lr_gamma ** math.floor(t / config.lr_step_size)
    if schedule == "exponential":
        return lr * config.lr_gamma**t
    raise ValueError(f"lr-schedule {schedule!r} is not a function of progress (use it centrally)")
