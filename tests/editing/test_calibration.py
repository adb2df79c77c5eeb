"""The calibration driver: rule dispatch, the rounds, score sums, and the centralized calibration of a model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedtalos.editing.calibration import calibrate, calibrate_mask, next_mask, sum_scores
from fedtalos.editing.fisher import fisher_scores
from fedtalos.editing.masks import calibration_step, magnitude_mask, random_mask
from fedtalos.task.model import TINY_TEST_VIT, build_model
from tests.support.tensors import count_true, floats, masks_equal

# ---------------------------------------------------------------------------------------------------------------
# next_mask and calibrate.

SHAPES = {"a": (8,), "b": (2,)}
WEIGHTS = {"a": floats(-5, 0.1, 3, -0.2, 1, 2, -3, 4), "b": floats(1, -4)}


def test_next_mask_dispatches_each_rule():
    common = {"shapes": SHAPES, "sparsity": 0.75}
    scores = {"a": floats(0, 1, 2, 3, 4, 5, 6, 7), "b": floats(10, 11)}
    for rule in ("least-sensitive", "most-sensitive"):
        got = next_mask(rule, 1, 2, None, scores=scores, **common)
        assert masks_equal(got, calibration_step(scores, None, rule=rule, round_index=1, rounds=2, **common))
    assert masks_equal(
        next_mask("lowest-magnitude", 1, 1, None, weights=WEIGHTS, **common), magnitude_mask(WEIGHTS, 0.75)
    )
    highest = next_mask("highest-magnitude", 1, 1, None, weights=WEIGHTS, **common)
    assert masks_equal(highest, magnitude_mask(WEIGHTS, 0.75, highest=True))
    assert masks_equal(next_mask("random", 1, 1, None, seed=3, **common), random_mask(SHAPES, 0.75, seed=3))
    with pytest.raises(ValueError, match="needs this round's scores"):
        next_mask("least-sensitive", 1, 2, None, **common)
    with pytest.raises(ValueError, match="needs the weights"):
        next_mask("lowest-magnitude", 1, 1, None, **common)
    with pytest.raises(ValueError, match="unknown rule"):
        next_mask("largest", 1, 1, None, **common)


def test_calibrate_scores_each_round_with_the_mask_so_far():
    seen = []

    def score_round(r: int, alive):
        seen.append((r, None if alive is None else count_true(alive)))
        return {"a": floats(0, 1, 2, 3, 4, 5, 6, 7) * r, "b": floats(10, 11)}

    mask = calibrate(score_round, SHAPES, "least-sensitive", 0.75, rounds=2)
    assert seen == [(1, None), (2, 5)], "round 1 without a mask, round 2 with round 1's (⌊0.5 · 10⌋ kept)"
    assert count_true(mask) == 2


def test_calibrate_takes_one_step_for_the_rules_that_read_no_scores():
    never = lambda r, alive: pytest.fail("the magnitude and random rules must not score")  # noqa: E731
    got = calibrate(never, SHAPES, "lowest-magnitude", 0.5, rounds=4, weights=WEIGHTS)
    assert masks_equal(got, magnitude_mask(WEIGHTS, 0.5))
    assert masks_equal(calibrate(never, SHAPES, "random", 0.5, rounds=4, seed=1), random_mask(SHAPES, 0.5, seed=1))


def test_sum_scores_adds_float32_in_the_order_given():
    parts = [{"a": torch.full((2,), 1e8), "b": torch.ones(1)}, {"a": torch.ones(2), "b": torch.ones(1)}]
    total = sum_scores(parts, {"a": (2,), "b": (1,)})
    expected = torch.zeros(2) + torch.full((2,), 1e8) + torch.ones(2)
    assert total["a"].dtype == torch.float32 and torch.equal(total["a"], expected)
    assert torch.equal(total["b"], torch.tensor([2.0]))


# ---------------------------------------------------------------------------------------------------------------
# calibrate_mask: the centralized calibration of a model.


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
    assert masks_equal(one, four)
    # With soft zeroing, re-scoring changes the answer: that is what the rounds are for.
    soft = calibrate_mask(model, inputs, sparsity=0.9, rounds=4, soft_value=0.1)
    assert not masks_equal(one, soft)
    total = sum(m.numel() for m in one.values())
    assert count_true(soft) == math.floor(round(0.1 * total, 6))  # float scores: no ties


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
    assert count_true(least) == count_true(most) == math.floor(0.25 * sum(scores[n].numel() for n in names))


def test_magnitude_and_random_rules_run_once_and_ignore_the_data():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    weights = {n: p.detach() for n, p in model.named_parameters()}
    never = lambda r: pytest.fail("the magnitude and random rules must not read data")  # noqa: E731
    for rule, expected in [
        ("lowest-magnitude", magnitude_mask(weights, 0.6)),
        ("highest-magnitude", magnitude_mask(weights, 0.6, highest=True)),
        ("random", random_mask({n: w.shape for n, w in weights.items()}, 0.6, seed=4)),
    ]:
        assert masks_equal(calibrate_mask(model, never, 0.6, rule=rule, seed=4), expected), rule


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
