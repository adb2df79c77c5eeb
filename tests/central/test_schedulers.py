"""Learning-rate schedulers against their closed forms, per optimizer step at fractional epochs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fedtalos.central.schedulers import after_evaluation, after_step, current_lr, make_scheduler
from fedtalos.config import RunConfig

LR, LR_MIN, GAMMA = 0.1, 0.001, 0.5
S, E, WARMUP, STEP_SIZE = 4, 5, 2, 2  # steps per epoch, epochs, warm-up epochs, step-decay period (epochs)


def expected(schedule: str, k: int) -> float:
    """The lr of optimizer step k (0-based), written out independently of fedtalos.task.lr_schedule."""
    t = k / S  # fractional epoch
    if schedule == "constant":
        return LR
    if schedule == "cosine":
        return LR_MIN + (LR - LR_MIN) * (1 + math.cos(math.pi * k / (S * E))) / 2
    if schedule == "warmup-cosine":
        if k < WARMUP * S:  # linear from lr/(W+1) towards lr over the first W epochs
            return LR * (t + 1) / (WARMUP + 1)
        return LR_MIN + (LR - LR_MIN) * (1 + math.cos(math.pi * (k - WARMUP * S) / ((E - WARMUP) * S))) / 2
    if schedule == "step":
        return LR * GAMMA ** (k // (S * STEP_SIZE))
    if schedule == "exponential":
        return LR * GAMMA ** (k / S)
    raise AssertionError(schedule)


def lr_curve(schedule: str) -> list[float]:
    config = RunConfig.from_mapping(
        {
            "lr": LR,
            "lr-min": LR_MIN,
            "lr-schedule": schedule,
            "warmup": WARMUP,
            "lr-step-size": STEP_SIZE,
            "lr-gamma": GAMMA,
        }
    )
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=config.lr, momentum=0.9)
    scheduler = make_scheduler(optimizer, config, E, S)
    curve = []
    for _ in range(S * E):
        curve.append(current_lr(optimizer))
        param.grad = torch.ones(3)
        optimizer.step()
        after_step(scheduler)
    return curve


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup-cosine", "step", "exponential"])
def test_per_step_lr_follows_the_closed_form(schedule: str):
    curve = lr_curve(schedule)
    want = [expected(schedule, k) for k in range(S * E)]
    assert curve == pytest.approx(want, rel=1e-12, abs=0)
    assert curve[0] == pytest.approx(LR / (WARMUP + 1) if schedule == "warmup-cosine" else LR, rel=1e-12)


def test_schedule_shapes():
    cosine = lr_curve("cosine")
    assert all(a > b for a, b in itertools.pairwise(cosine)), "cosine decreases at every step"
    assert cosine[-1] > LR_MIN
    step = lr_curve("step")
    # drops exactly at the start of epochs 2 and 4 (0-based), nowhere else
    drops = [k for k in range(1, S * E) if step[k] < step[k - 1]]
    assert drops == [S * STEP_SIZE, 2 * S * STEP_SIZE]
    exponential = lr_curve("exponential")
    assert exponential[S * 3] == pytest.approx(LR * GAMMA**3, rel=1e-12), "lr·γ^e at the start of epoch e"
    warm = lr_curve("warmup-cosine")
    assert max(warm) == pytest.approx(LR, rel=1e-12) and warm.index(max(warm)) == WARMUP * S


def test_plateau_reduces_after_patience_evaluations_without_improvement_down_to_lr_min():
    config = RunConfig.from_mapping(
        {"lr": 0.1, "lr-min": 0.02, "lr-schedule": "plateau", "lr-gamma": 0.5, "lr-patience": 2}
    )
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=config.lr, momentum=0.9)
    scheduler = make_scheduler(optimizer, config, E, S)
    after_step(scheduler)  # steps leave a plateau schedule alone
    assert current_lr(optimizer) == 0.1
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]
    lrs = []
    for loss in losses:
        after_evaluation(scheduler, loss)
        lrs.append(current_lr(optimizer))
    # 3 (= patience + 1) evaluations without a new best → ×0.5; a new best resets the count; floor at lr-min
    assert lrs == pytest.approx(
        [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02, 0.02, 0.02, 0.02], rel=1e-12
    )
