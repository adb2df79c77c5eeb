"""Masks: schedule, thresholds and ties, each rule's mask, local scope, statistics."""

from __future__ import annotations

import math

import pytest

from fedtalos.editing.masks import (
    calibration_step,
    keep_counts,
    keep_fraction,
    magnitude_mask,
    mask_stats,
    random_mask,
    update_mask,
)
from fedtalos.tracking.mask_report import density_rows
from tests.support.tensors import bools, count_true, floats, masks_equal

# ---------------------------------------------------------------------------------------------------------------
# Schedule and counts.


def test_keep_fraction_schedule():
    assert [keep_fraction(0.9, r, 4) for r in range(4)] == pytest.approx([0.1**0.25, 0.1**0.5, 0.1**0.75, 0.1])
    assert keep_fraction(0.9, 3, 4) == pytest.approx(0.1, abs=1e-15)  # ends at 1 - s
    assert keep_fraction(0.75, 0, 1) == 0.25
    assert keep_fraction(0.0, 1, 3) == 1.0
    with pytest.raises(ValueError):
        keep_fraction(0.9, 4, 4)
    with pytest.raises(ValueError):
        keep_fraction(1.5, 0, 1)


def test_keep_counts_floor_is_robust_to_float_error():
    assert (1 - 0.9) * 100 < 10  # the float trap
    assert keep_counts({"a": (10, 10)}, 1 - 0.9) == 10
    assert keep_counts({"a": (7,), "b": (2, 3)}, 0.5) == 6  # ⌊0.5 · 13⌋
    assert keep_counts({"a": (7,), "b": (2, 3)}, 0.5, "local") == {"a": 3, "b": 3}


# ---------------------------------------------------------------------------------------------------------------
# update_mask.


def test_global_threshold_keeps_ties_at_the_threshold():
    scores = {"a": floats(1, 2, 2, 2, 5), "b": floats(0, 2, 9)}
    # sorted: 0 1 2 2 2 2 5 9 → the 3rd smallest is 2, and all four 2s are kept.
    low = update_mask(scores, None, 3)
    assert masks_equal(low, {"a": bools(1, 1, 1, 1, 0), "b": bools(1, 1, 0)})
    # the 3rd largest is 2 as well: 9, 5 and all the 2s.
    high = update_mask(scores, None, 3, keep="highest")
    assert masks_equal(high, {"a": bools(0, 1, 1, 1, 1), "b": bools(0, 1, 1)})
    # Without ties exactly k are kept.
    assert count_true(update_mask({"a": floats(4, 1, 3), "b": floats(2, 5)}, None, 3)) == 3


def test_only_alive_entries_compete_and_frozen_ones_stay_frozen():
    scores = {"a": floats(0, 1, 2, 3), "b": floats(0.5, 4)}
    alive = {"a": bools(0, 1, 1, 1), "b": bools(0, 1)}  # the two lowest scores are frozen already
    assert masks_equal(update_mask(scores, alive, 2), {"a": bools(0, 1, 1, 0), "b": bools(0, 0)})
    assert masks_equal(update_mask(scores, alive, 2, keep="highest"), {"a": bools(0, 0, 0, 1), "b": bools(0, 1)})


def test_guards_for_k_below_one_and_at_least_the_number_alive():
    scores = {"a": floats(3, 1, 2)}
    alive = {"a": bools(1, 0, 1)}
    assert masks_equal(update_mask(scores, alive, 0), {"a": bools(0, 0, 0)})
    assert masks_equal(update_mask(scores, alive, 2), alive)
    assert masks_equal(update_mask(scores, alive, 10), alive)


def test_local_scope_thresholds_each_tensor_on_its_own():
    scores = {"small": floats(0.1, 0.2, 0.3, 0.4), "large": floats(10, 30, 20, 40)}
    # Global: the two lowest are both in "small"; local: the lowest half of each tensor.
    assert masks_equal(update_mask(scores, None, 2), {"small": bools(1, 1, 0, 0), "large": bools(0, 0, 0, 0)})
    counts = keep_counts({n: s.shape for n, s in scores.items()}, 0.5, "local")
    local = update_mask(scores, None, counts, scope="local")
    assert masks_equal(local, {"small": bools(1, 1, 0, 0), "large": bools(1, 0, 1, 0)})
    with pytest.raises(TypeError):
        update_mask(scores, None, 2, scope="local")


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError):
        update_mask({"a": floats(1, float("nan"))}, None, 1)


# ---------------------------------------------------------------------------------------------------------------
# calibration_step: one round of the sensitivity rules.


def test_calibration_step_follows_the_schedule_and_keeps_frozen_entries_frozen():
    shapes = {"a": (8,), "b": (2,)}  # N = 10; s = 0.75 over R' = 2 rounds keeps 0.5 then 0.25 of N
    step = {"shapes": shapes, "sparsity": 0.75, "rounds": 2}
    first = {"a": floats(0, 1, 2, 3, 4, 5, 6, 7), "b": floats(10, 11)}
    alive = calibration_step(first, None, rule="least-sensitive", round_index=1, **step)
    assert masks_equal(alive, {"a": bools(1, 1, 1, 1, 1, 0, 0, 0), "b": bools(0, 0)}), "⌊0.5 · 10⌋ = 5 lowest"
    # round 2 re-ranks the alive entries only: b's new low scores cannot bring b back
    second = {"a": floats(7, 6, 5, 4, 3, 2, 1, 0), "b": floats(0, 0)}
    last = calibration_step(second, alive, rule="least-sensitive", round_index=2, **step)
    assert masks_equal(last, {"a": bools(0, 0, 0, 1, 1, 0, 0, 0), "b": bools(0, 0)}), "⌊0.25 · 10⌋ = 2 lowest alive"
    most = calibration_step(first, None, rule="most-sensitive", round_index=1, **step)
    assert masks_equal(most, {"a": bools(0, 0, 0, 0, 0, 1, 1, 1), "b": bools(1, 1)}), "the 5 highest"
    local = calibration_step(first, None, rule="least-sensitive", round_index=1, scope="local", **step)
    assert masks_equal(local, {"a": bools(1, 1, 1, 1, 0, 0, 0, 0), "b": bools(1, 0)}), "half of each tensor"
    with pytest.raises(ValueError):
        calibration_step(first, None, rule="random", round_index=1, **step)


# ---------------------------------------------------------------------------------------------------------------
# Magnitude and random rules.


def test_magnitude_rules_select_small_or_large_absolute_values():
    weights = {"w": floats(-5, 0.1, 3, -0.2), "v": floats(1, -4)}
    assert masks_equal(magnitude_mask(weights, 0.5), {"w": bools(0, 1, 0, 1), "v": bools(1, 0)})
    assert masks_equal(magnitude_mask(weights, 0.5, highest=True), {"w": bools(1, 0, 1, 0), "v": bools(0, 1)})
    local = magnitude_mask(weights, 0.5, highest=True, scope="local")
    assert masks_equal(local, {"w": bools(1, 0, 1, 0), "v": bools(0, 1)})


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9, 1.0])
def test_random_mask_is_seeded_and_exactly_sized(sparsity):
    shapes = {"a": (13, 7), "b": (5,), "c": (2, 3, 4)}
    total = sum(math.prod(s) for s in shapes.values())
    mask = random_mask(shapes, sparsity, seed=1)
    assert {n: tuple(m.shape) for n, m in mask.items()} == shapes
    assert count_true(mask) == math.floor(round((1 - sparsity) * total, 6))
    assert masks_equal(mask, random_mask(shapes, sparsity, seed=1))
    if 0 < sparsity < 1:
        assert not masks_equal(mask, random_mask(shapes, sparsity, seed=2))
    local = random_mask(shapes, sparsity, seed=1, scope="local")
    for n, s in shapes.items():
        assert int(local[n].sum()) == math.floor(round((1 - sparsity) * math.prod(s), 6))


def test_random_mask_is_uniform_over_entries():
    shapes = {"a": (40,), "b": (60,)}
    hits = sum(random_mask(shapes, 0.7, seed=s)["a"].sum().item() for s in range(200))
    assert hits / 200 == pytest.approx(30 * 40 / 100, rel=0.1)  # 30 kept of 100, 40 % of entries are in "a"


# ---------------------------------------------------------------------------------------------------------------
# Statistics.


def test_mask_stats():
    mask = {"a": bools(1, 0, 0, 0), "b": bools(1, 1, 1, 1, 0, 0)}
    stats = mask_stats(mask)
    assert stats == {"density": 0.5, "sparsity": 0.5, "trainable": 5, "total": 10}
    # per tensor: the mask report's rows
    assert {r["tensor"]: r["density"] for r in density_rows(mask)} == {"a": 0.25, "b": 4 / 6}
