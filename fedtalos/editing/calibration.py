"""Mask calibration: the rounds and the choice of rule, one driver for every kind of run (``docs/editing.md``).

The sensitivity rules take R' rounds, each scoring with the mask so far soft-zeroed and keeping a geometric share
of the alive entries (:func:`~fedtalos.editing.masks.calibration_step`); the magnitude and random rules take one
step that reads no scores (their keys do not depend on the mask). :func:`next_mask` is one round of any rule;
:func:`calibrate` runs the rounds, given a function that scores one round. The federated server takes one round per
Flower round through :func:`next_mask`, on the clients' score sums added by :func:`sum_scores`; the centralized run
(:func:`calibrate_mask`, on a model and its batches) and the mask-agreement analysis go through :func:`calibrate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from fedtalos.editing.fisher import Batch, Target, fisher_scores
from fedtalos.editing.masks import (
    RULES,
    Mask,
    Rule,
    Scope,
    calibration_step,
    check_sparsity,
    magnitude_mask,
    random_mask,
)
from fedtalos.editing.sparse import Shapes
from fedtalos.run.phases import SENSITIVITY_RULES
from fedtalos.task.model import HEAD_PREFIX

MAGNITUDE_RULES = ("lowest-magnitude", "highest-magnitude")
# round index (1-based), the mask so far (None before the first round) → that round's score sums
ScoreRound = Callable[[int, Mask | None], Mapping[str, Tensor]]


def next_mask(
    rule: Rule,
    round_index: int,
    rounds: int,
    mask: Mask | None,
    *,
    shapes: Shapes,
    sparsity: float,
    scope: Scope = "global",
    scores: Mapping[str, Tensor] | None = None,
    weights: Mapping[str, Tensor] | None = None,
    seed: int = 0,
) -> Mask:
    """The mask after calibration round ``round_index`` (1-based) of ``rounds``, for any rule; True = trainable.

    Args:
        rule: a sensitivity rule thresholds ``scores`` among the entries alive in ``mask``
            (:func:`~fedtalos.editing.masks.calibration_step`); ``lowest-magnitude`` / ``highest-magnitude`` keep
            the smallest / largest |``weights``|; ``random`` a uniform subset drawn with ``seed``.
        round_index, rounds: the position in R' rounds (sensitivity rules; the others take one step).
        mask: the mask after the previous round; None before the first.
        shapes: name → shape of every scored tensor, in the mask's order.
        sparsity: the fraction frozen at the end of the last round.
        scope: ``global`` (one threshold over all tensors) or ``local`` (one per tensor).
        scores: this round's score sums (sensitivity rules).
        weights: the scored tensors' values (magnitude rules).
        seed: seeds the random rule.

    Returns:
        name → bool tensor: on the scores' (weights') device; CPU for the random rule.
    """
    if rule in SENSITIVITY_RULES:
        if scores is None:
            raise ValueError(f"rule {rule!r} needs this round's scores")
        return calibration_step(
            scores, mask, shapes, rule=rule, sparsity=sparsity, round_index=round_index, rounds=rounds, scope=scope
        )
    if rule in MAGNITUDE_RULES:
        if weights is None:
            raise ValueError(f"rule {rule!r} needs the weights")
        return magnitude_mask(weights, sparsity, highest=rule == "highest-magnitude", scope=scope)
    if rule == "random":
        return random_mask(shapes, sparsity, seed=seed, scope=scope)
    raise ValueError(f"unknown rule {rule!r}; use one of {RULES}")


def calibrate(
    score_round: ScoreRound,
    shapes: Shapes,
    rule: Rule,
    sparsity: float,
    rounds: int,
    scope: Scope = "global",
    *,
    weights: Mapping[str, Tensor] | None = None,
    seed: int = 0,
) -> Mask:
    """A calibration from start to end: ``rounds`` (R') rounds of a sensitivity rule, else one step.

    ``score_round(r, mask)`` gives round r's score sums (1-based) with ``mask`` (the previous round's; None in round
    1) soft-zeroed; only the sensitivity rules call it. The other arguments are :func:`next_mask`'s.
    """
    check_sparsity(sparsity)
    if rule not in SENSITIVITY_RULES:
        return next_mask(rule, 1, 1, None, shapes=shapes, sparsity=sparsity, scope=scope, weights=weights, seed=seed)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    mask: Mask | None = None
    for r in range(1, rounds + 1):
        scores = score_round(r, mask)
        mask = next_mask(rule, r, rounds, mask, shapes=shapes, sparsity=sparsity, scope=scope, scores=scores)
    assert mask is not None
    return mask


def sum_scores(score_sums: Iterable[Mapping[str, Tensor]], shapes: Shapes) -> dict[str, Tensor]:
    """Score sums added up in float32, in the order given (the federated server's: partition ids, deterministic)."""
    total = {k: torch.zeros(tuple(s), dtype=torch.float32) for k, s in shapes.items()}
    for sums in score_sums:
        for k in total:
            total[k] += sums[k]
    return total


def calibrate_mask(
    model: nn.Module,
    batches: Iterable[Batch] | Callable[[int], Iterable[Batch]],
    sparsity: float,
    rounds: int = 4,
    rule: Rule = "least-sensitive",
    params: Iterable[str] | None = None,
    seed: int = 0,
    scope: Scope = "global",
    target: Target = "logit",
    soft_value: float = 0.1,
    repeats: int = 1,
    chunk_size: int | None = None,
) -> Mask:
    """Compute a mask for ``model`` with a calibration rule (``docs/editing.md``); True = trainable.

    Args:
        model: the classifier (head already fitted: scores depend on it).
        batches: calibration inputs (labels ignored), re-iterable (a list: the same samples every round), or a
            callable ``round_index -> iterable`` (0-based; fresh samples per round). Unused by the magnitude and
            random rules.
        sparsity: fraction of the scored entries frozen.
        rounds: R', calibration rounds of the sensitivity rules.
        rule: ``least-sensitive`` (TaLoS): each round scores with the frozen entries soft-zeroed (scaled by
            ``soft_value``), then keeps the lowest ``keep_fraction(s, r, R')`` of all entries among the alive ones;
            ``most-sensitive``: the same loop keeping the highest; ``lowest-magnitude`` / ``highest-magnitude``:
            the smallest / largest |θ|; ``random``: a seeded uniform subset. The last three run once, ignoring
            ``rounds``: their keys do not depend on the mask, so re-ranking them would give the same mask.
        params: names of the scored parameters; None = all but the head (``head.*``).
        seed: seeds the label draws (a generator on the model's device, continuing across rounds) or the random rule.
        scope: ``global`` (one threshold over all tensors) or ``local`` (per tensor).
        target, repeats, chunk_size: passed to :func:`fisher_scores`.

    Returns:
        name → bool tensor on the parameter's device, in the order of ``model.named_parameters()``.
    """
    check_sparsity(sparsity)
    named = dict(model.named_parameters())
    names = [n for n in named if not n.startswith(HEAD_PREFIX)] if params is None else list(params)
    weights = {n: named[n].detach() for n in names}
    shapes = {n: w.shape for n, w in weights.items()}
    if rule in SENSITIVITY_RULES and not callable(batches) and iter(batches) is batches:  # type: ignore[arg-type]
        raise TypeError("batches must be re-iterable (e.g. a list) or a callable round_index -> batches")
    generator = torch.Generator(device=weights[names[0]].device).manual_seed(seed)

    def score_round(round_index: int, alive: Mask | None) -> dict[str, Tensor]:
        if alive is None:  # round 1 scores with every entry alive
            alive = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        return fisher_scores(
            model,
            batches(round_index - 1) if callable(batches) else batches,
            params=names,
            target=target,
            repeats=repeats,
            soft_mask=alive,
            soft_value=soft_value,
            generator=generator,
            chunk_size=chunk_size,
        )

    mask = calibrate(score_round, shapes, rule, sparsity, rounds, scope, weights=weights, seed=seed)
    return {n: m.to(weights[n].device) for n, m in mask.items()}
