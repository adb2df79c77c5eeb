"""Masks: schedule, thresholds and ties, the calibration rules, local scope, packing and storage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedtalos.editing.fisher import fisher_scores
from fedtalos.editing.masks import (
    calibrate_mask,
    calibration_step,
    gather_trainable,
    keep_counts,
    keep_fraction,
    load_mask,
    magnitude_mask,
    mask_stats,
    pack_mask,
    random_mask,
    save_mask,
    scatter_trainable,
    unpack_mask,
    update_mask,
)
from fedtalos.task.model import TINY_TEST_VIT, build_model


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _b(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def _masks_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)


def _count(mask: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in mask.values())


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
    scores = {"a": _t(1, 2, 2, 2, 5), "b": _t(0, 2, 9)}
    # sorted: 0 1 2 2 2 2 5 9 → the 3rd smallest is 2, and all four 2s are kept.
    low = update_mask(scores, None, 3)
    assert _masks_equal(low, {"a": _b(1, 1, 1, 1, 0), "b": _b(1, 1, 0)})
    # the 3rd largest is 2 as well: 9, 5 and all the 2s.
    high = update_mask(scores, None, 3, keep="highest")
    assert _masks_equal(high, {"a": _b(0, 1, 1, 1, 1), "b": _b(0, 1, 1)})
    # Without ties exactly k are kept.
    assert _count(update_mask({"a": _t(4, 1, 3), "b": _t(2, 5)}, None, 3)) == 3


def test_only_alive_entries_compete_and_frozen_ones_stay_frozen():
    scores = {"a": _t(0, 1, 2, 3), "b": _t(0.5, 4)}
    alive = {"a": _b(0, 1, 1, 1), "b": _b(0, 1)}  # the two lowest scores are frozen already
    assert _masks_equal(update_mask(scores, alive, 2), {"a": _b(0, 1, 1, 0), "b": _b(0, 0)})
    assert _masks_equal(update_mask(scores, alive, 2, keep="highest"), {"a": _b(0, 0, 0, 1), "b": _b(0, 1)})


def test_guards_for_k_below_one_and_at_least_the_number_alive():
    scores = {"a": _t(3, 1, 2)}
    alive = {"a": _b(1, 0, 1)}
    assert _masks_equal(update_mask(scores, alive, 0), {"a": _b(0, 0, 0)})
    assert _masks_equal(update_mask(scores, alive, 2), alive)
    assert _masks_equal(update_mask(scores, alive, 10), alive)


def test_local_scope_thresholds_each_tensor_on_its_own():
    scores = {"small": _t(0.1, 0.2, 0.3, 0.4), "large": _t(10, 30, 20, 40)}
    # Global: the two lowest are both in "small"; local: the lowest half of each tensor.
    assert _masks_equal(update_mask(scores, None, 2), {"small": _b(1, 1, 0, 0), "large": _b(0, 0, 0, 0)})
    counts = keep_counts({n: s.shape for n, s in scores.items()}, 0.5, "local")
    local = update_mask(scores, None, counts, scope="local")
    assert _masks_equal(local, {"small": _b(1, 1, 0, 0), "large": _b(1, 0, 1, 0)})
    with pytest.raises(TypeError):
        update_mask(scores, None, 2, scope="local")


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError):
        update_mask({"a": _t(1, float("nan"))}, None, 1)


# ---------------------------------------------------------------------------------------------------------------
# calibration_step: one round of the sensitivity rules.


def test_calibration_step_follows_the_schedule_and_keeps_frozen_entries_frozen():
    shapes = {"a": (8,), "b": (2,)}  # N = 10; s = 0.75 over R' = 2 rounds keeps 0.5 then 0.25 of N
    step = {"shapes": shapes, "sparsity": 0.75, "rounds": 2}
    first = {"a": _t(0, 1, 2, 3, 4, 5, 6, 7), "b": _t(10, 11)}
    alive = calibration_step(first, None, rule="least-sensitive", round_index=1, **step)
    assert _masks_equal(alive, {"a": _b(1, 1, 1, 1, 1, 0, 0, 0), "b": _b(0, 0)}), "⌊0.5 · 10⌋ = 5 lowest"
    # round 2 re-ranks the alive entries only: b's new low scores cannot bring b back
    second = {"a": _t(7, 6, 5, 4, 3, 2, 1, 0), "b": _t(0, 0)}
    last = calibration_step(second, alive, rule="least-sensitive", round_index=2, **step)
    assert _masks_equal(last, {"a": _b(0, 0, 0, 1, 1, 0, 0, 0), "b": _b(0, 0)}), "⌊0.25 · 10⌋ = 2 lowest alive"
    most = calibration_step(first, None, rule="most-sensitive", round_index=1, **step)
    assert _masks_equal(most, {"a": _b(0, 0, 0, 0, 0, 1, 1, 1), "b": _b(1, 1)}), "the 5 highest"
    local = calibration_step(first, None, rule="least-sensitive", round_index=1, scope="local", **step)
    assert _masks_equal(local, {"a": _b(1, 1, 1, 1, 0, 0, 0, 0), "b": _b(1, 0)}), "half of each tensor"
    with pytest.raises(ValueError):
        calibration_step(first, None, rule="random", round_index=1, **step)


# ---------------------------------------------------------------------------------------------------------------
# Magnitude and random rules.


def test_magnitude_rules_select_small_or_large_absolute_values():
    weights = {"w": _t(-5, 0.1, 3, -0.2), "v": _t(1, -4)}
    assert _masks_equal(magnitude_mask(weights, 0.5), {"w": _b(0, 1, 0, 1), "v": _b(1, 0)})
    assert _masks_equal(magnitude_mask(weights, 0.5, highest=True), {"w": _b(1, 0, 1, 0), "v": _b(0, 1)})
    local = magnitude_mask(weights, 0.5, highest=True, scope="local")
    assert _masks_equal(local, {"w": _b(1, 0, 1, 0), "v": _b(0, 1)})


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9, 1.0])
def test_random_mask_is_seeded_and_exactly_sized(sparsity):
    shapes = {"a": (13, 7), "b": (5,), "c": (2, 3, 4)}
    total = sum(math.prod(s) for s in shapes.values())
    mask = random_mask(shapes, sparsity, seed=1)
    assert {n: tuple(m.shape) for n, m in mask.items()} == shapes
    assert _count(mask) == math.floor(round((1 - sparsity) * total, 6))
    assert _masks_equal(mask, random_mask(shapes, sparsity, seed=1))
    if 0 < sparsity < 1:
        assert not _masks_equal(mask, random_mask(shapes, sparsity, seed=2))
    local = random_mask(shapes, sparsity, seed=1, scope="local")
    for n, s in shapes.items():
        assert int(local[n].sum()) == math.floor(round((1 - sparsity) * math.prod(s), 6))


def test_random_mask_is_uniform_over_entries():
    shapes = {"a": (40,), "b": (60,)}
    hits = sum(random_mask(shapes, 0.7, seed=s)["a"].sum().item() for s in range(200))
    assert hits / 200 == pytest.approx(30 * 40 / 100, rel=0.1)  # 30 kept of 100, 40 % of entries are in "a"


# ---------------------------------------------------------------------------------------------------------------
# calibrate_mask.


def _confident_vit() -> nn.Module:
    """A tiny ViT that always predicts class 0, so the sampled labels do not depend on the seed."""
    torch.manual_seed(0)
    model = build_model(TINY_TEST_VIT, num_classes=5, image_size=32)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.2)
        model.head.bias.copy_(torch.tensor([60.0, 0, 0, 0, 0]))
    return model


@pytest.fixture(scope="module")
def inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(6, 3, 32, 32, generator=g)]


def test_one_round_is_the_global_bottom_k(inputs):
    model = _confident_vit()
    mask = calibrate_mask(model, inputs, sparsity=0.8, rounds=1, seed=0)
    scores = fisher_scores(model, inputs, generator=torch.Generator().manual_seed(0))
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = math.floor(round(0.2 * flat.numel(), 6))
    expected = torch.zeros(flat.numel(), dtype=torch.bool)
    expected[flat.argsort()[:k]] = True
    assert torch.equal(torch.cat([m.flatten() for m in mask.values()]), expected)
    assert list(mask) == [n for n, _ in model.named_parameters() if not n.startswith("head.")]


def test_without_soft_zeroing_rounds_collapse_to_the_one_round_mask(inputs):
    model = _confident_vit()
    one = calibrate_mask(model, inputs, sparsity=0.9, rounds=1)
    four = calibrate_mask(model, inputs, sparsity=0.9, rounds=4, soft_value=1.0)
    assert _masks_equal(one, four)
    # With soft zeroing, re-scoring changes the answer: that is what the rounds are for.
    soft = calibrate_mask(model, inputs, sparsity=0.9, rounds=4, soft_value=0.1)
    assert not _masks_equal(one, soft)
    total = sum(m.numel() for m in one.values())
    assert _count(soft) == math.floor(round(0.1 * total, 6))  # float scores: no ties


def test_sensitivity_rules_keep_lowest_or_highest_scores(inputs):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8), nn.Tanh(), nn.Linear(8, 4))
    names = ["1.weight", "1.bias"]
    scores = fisher_scores(model, inputs, params=names, generator=torch.Generator().manual_seed(3))
    least = calibrate_mask(model, inputs, 0.75, rounds=1, params=names, seed=3)
    most = calibrate_mask(model, inputs, 0.75, rounds=1, params=names, seed=3, rule="most-sensitive")
    kept_max = max(float(scores[n][least[n]].max()) for n in names)
    frozen_min = min(float(scores[n][~least[n]].min()) for n in names)
    assert kept_max <= frozen_min
    kept_min = min(float(scores[n][most[n]].min()) for n in names)
    frozen_max = max(float(scores[n][~most[n]].max()) for n in names)
    assert kept_min >= frozen_max
    assert _count(least) == _count(most) == math.floor(0.25 * sum(scores[n].numel() for n in names))


def test_magnitude_and_random_rules_run_once_and_ignore_the_data():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    weights = {n: p.detach() for n, p in model.named_parameters()}
    never = lambda r: pytest.fail("the magnitude and random rules must not read data")  # noqa: E731
    for rule, expected in [
        ("lowest-magnitude", magnitude_mask(weights, 0.6)),
        ("highest-magnitude", magnitude_mask(weights, 0.6, highest=True)),
        ("random", random_mask({n: w.shape for n, w in weights.items()}, 0.6, seed=4)),
    ]:
        assert _masks_equal(calibrate_mask(model, never, 0.6, rule=rule, seed=4), expected), rule


def test_per_round_batches_and_single_use_iterators(inputs):
    model = _confident_vit()
    seen = []

    def per_round(r: int) -> list[torch.Tensor]:
        seen.append(r)
        return inputs

    calibrate_mask(model, per_round, sparsity=0.5, rounds=3)
    assert seen == [0, 1, 2]
    with pytest.raises(TypeError):
        calibrate_mask(model, iter(inputs), sparsity=0.5, rounds=2)  # would be empty from round 1 on
    with pytest.raises(ValueError):
        calibrate_mask(model, inputs, sparsity=0.5, rule="largest")


# ---------------------------------------------------------------------------------------------------------------
# Stats, packing, storage.


def _odd_mask() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "w": torch.rand(5, 3, generator=g) < 0.3,
        "scalar": torch.tensor(True),
        "b": torch.rand(2, 2, 2, generator=g) < 0.6,
    }


def test_mask_stats():
    stats = mask_stats({"a": _b(1, 0, 0, 0), "b": _b(1, 1, 1, 1, 0, 0)})
    assert stats["trainable"] == 5 and stats["total"] == 10
    assert stats["density"] == 0.5 and stats["sparsity"] == 0.5
    assert stats["per_tensor"] == {"a": 0.25, "b": 4 / 6}


def test_pack_unpack_round_trip():
    mask = _odd_mask()  # 15 + 1 + 8 = 24 entries
    bits = pack_mask(mask)
    assert bits.dtype == np.uint8 and bits.shape == (3,)
    shapes = {n: tuple(m.shape) for n, m in mask.items()}
    assert _masks_equal(unpack_mask(bits, shapes), mask)
    mask["extra"] = _b(1, 0, 1)  # 27 entries: the last byte is padded
    shapes["extra"] = (3,)
    assert _masks_equal(unpack_mask(pack_mask(mask), shapes), mask)
    with pytest.raises(ValueError):
        unpack_mask(bits, shapes)  # too few bytes for these shapes


def test_gather_scatter_round_trip():
    mask = _odd_mask()
    g = torch.Generator().manual_seed(6)
    old = {n: torch.randn(m.shape, generator=g) for n, m in mask.items()}
    old["dense"] = torch.randn(4, generator=g)  # not in the mask: carried separately
    new = {n: torch.randn(t.shape, generator=g) for n, t in old.items()}
    flat = gather_trainable(new, mask)
    assert flat.shape == (_count(mask),)
    merged = scatter_trainable(flat, mask, old)
    for n, m in mask.items():
        assert torch.equal(merged[n], torch.where(m, new[n], old[n]))
    assert merged["dense"] is old["dense"]
    assert torch.equal(gather_trainable(merged, mask), flat)
    with pytest.raises(ValueError):
        scatter_trainable(flat[:-1], mask, old)


def test_save_load_round_trip(tmp_path):
    mask = _odd_mask()
    path = tmp_path / "mask.npz"
    save_mask(path, mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.npz"]
    assert _masks_equal(load_mask(path), mask)
    with np.load(path, allow_pickle=False) as f:
        assert f["bits"].dtype == np.uint8
