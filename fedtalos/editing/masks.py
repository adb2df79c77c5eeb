"""Masks: the keep-fraction schedule, the threshold, each rule's mask for one round, statistics (``docs/editing.md``).

Conventions: a mask is a dict name → bool tensor of the parameter's shape, **True = trainable**; **sparsity** is
the fraction of the scored entries that are frozen (0.9 → 10 % trainable). One round of a sensitivity rule is
:func:`calibration_step` (the schedule :func:`keep_fraction`, the counts :func:`keep_counts`, the threshold
:func:`update_mask`); the magnitude and random rules are :func:`magnitude_mask` and :func:`random_mask`. The rounds
and the choice of rule are :mod:`fedtalos.editing.calibration`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, get_args

import torch
from torch import Tensor

from fedtalos.editing.sparse import Shapes, split_flat
from fedtalos.run.phases import SENSITIVITY_RULES

Mask = dict[str, Tensor]
Scope = Literal["global", "local"]
Keep = Literal["lowest", "highest"]
Rule = Literal["least-sensitive", "most-sensitive", "lowest-magnitude", "highest-magnitude", "random"]
RULES: tuple[str, ...] = get_args(Rule)

# ---------------------------------------------------------------------------------------------------------------
# Schedule and counts.


def keep_fraction(sparsity: float, round_index: int, rounds: int) -> float:
    """Fraction of the scored entries still trainable after 0-based round ``round_index`` of ``rounds``.

    ``(1 − s) ** ((r + 1) / R)``: geometric, so every round freezes the same fraction of what is alive, and the
    last round ends at exactly ``1 − s``.
    """
    check_sparsity(sparsity)
    if rounds < 1 or not 0 <= round_index < rounds:
        raise ValueError(f"need 0 <= round_index < rounds, got round_index={round_index}, rounds={rounds}")
    return (1.0 - sparsity) ** ((round_index + 1) / rounds)


def floor_count(fraction: float, total: int) -> int:
    """⌊fraction · total⌋, tolerant to float representation error (1 − 0.9 = 0.0999…98, yet 10 % of 100 is 10)."""
    return math.floor(round(fraction * total, 6))


def keep_counts(shapes: Shapes, fraction: float, scope: Scope = "global") -> int | dict[str, int]:
    """How many entries to keep: ⌊fraction · N⌋ over all tensors (``global``), or per tensor (``local``)."""
    numels = {n: math.prod(s) for n, s in shapes.items()}
    if scope == "global":
        return floor_count(fraction, sum(numels.values()))
    if scope == "local":
        return {n: floor_count(fraction, k) for n, k in numels.items()}
    raise ValueError(f"scope must be 'global' or 'local', got {scope!r}")


# ---------------------------------------------------------------------------------------------------------------
# Thresholding.


def update_mask(
    scores: Mapping[str, Tensor],
    alive: Mapping[str, Tensor] | None,
    keep_count: int | Mapping[str, int],
    *,
    keep: Keep = "lowest",
    scope: Scope = "global",
) -> Mask:
    """Keep the ``keep_count`` lowest (or highest) scores among the alive entries; everything else is frozen.

    Args:
        scores: name → scores (any float dtype, no NaN); the keys define the mask's keys and order.
        alive: name → bool tensor, True = still trainable; None = all alive. Frozen entries stay frozen.
        keep_count: ``global``: one int, the number kept over all tensors (one threshold for all of them);
            ``local``: name → int, the number kept in each tensor (see :func:`keep_counts`).
        keep: ``"lowest"`` (least sensitive, TaLoS) or ``"highest"``.
        scope: ``"global"`` or ``"local"``.

    Returns:
        name → bool tensor on the scores' device. The threshold t is the exact k-th smallest (largest) alive
        score; every alive entry with score ≤ t (≥ t) is kept, so ties at t are all kept and the count can
        exceed k. k < 1 freezes everything; k ≥ the number alive keeps ``alive`` unchanged.
    """
    if alive is None:
        alive = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    if set(alive) != set(scores):
        raise KeyError("scores and alive must have the same keys")
    if keep not in ("lowest", "highest"):
        raise ValueError(f"keep must be 'lowest' or 'highest', got {keep!r}")
    for n, s in scores.items():
        if alive[n].shape != s.shape or alive[n].dtype != torch.bool:
            raise ValueError(f"alive[{n!r}] must be a bool tensor of shape {tuple(s.shape)}")
        if bool(s.isnan().any()):
            raise ValueError(f"scores[{n!r}] contains NaN")
    if scope == "global":
        if not isinstance(keep_count, int):
            raise TypeError("scope='global' takes one int keep_count")
        return _threshold(scores, alive, keep_count, keep)
    if scope == "local":
        if not isinstance(keep_count, Mapping) or set(keep_count) != set(scores):
            raise TypeError("scope='local' takes a keep_count per tensor (a dict with the scores' keys)")
        out: Mask = {}
        for n in scores:
            out.update(_threshold({n: scores[n]}, {n: alive[n]}, keep_count[n], keep))
        return out
    raise ValueError(f"scope must be 'global' or 'local', got {scope!r}")


def _threshold(scores: Mapping[str, Tensor], alive: Mapping[str, Tensor], k: int, keep: Keep) -> Mask:
    # Selected and compared on the CPU, then moved back: MPS lacks kthvalue for some dtypes and sizes, and the
    # k-th value (an exact selection) and the comparisons are the same on every device.
    device = next(iter(scores.values())).device
    cpu_scores = {n: s.detach().cpu() for n, s in scores.items()}
    alive = {n: a.cpu() for n, a in alive.items()}
    candidates = torch.cat([cpu_scores[n].flatten()[alive[n].flatten()] for n in scores])
    if k >= candidates.numel():
        kept = {n: a.clone() for n, a in alive.items()}
    elif k < 1:
        kept = {n: torch.zeros_like(a) for n, a in alive.items()}
    elif keep == "lowest":
        t = torch.kthvalue(candidates, k).values
        kept = {n: alive[n] & (cpu_scores[n] <= t) for n in scores}
    else:
        t = torch.kthvalue(candidates, candidates.numel() - k + 1).values  # the k-th largest
        kept = {n: alive[n] & (cpu_scores[n] >= t) for n in scores}
    return {n: m.to(device) for n, m in kept.items()}


def calibration_step(
    scores: Mapping[str, Tensor],
    alive: Mapping[str, Tensor] | None,
    shapes: Shapes,
    *,
    rule: Rule,
    sparsity: float,
    round_index: int,
    rounds: int,
    scope: Scope = "global",
) -> Mask:
    """One calibration round of a sensitivity rule: the new mask from this round's scores.

    Keeps ``keep_fraction(sparsity, round_index - 1, rounds)`` of all entries of ``shapes`` (over all tensors, or
    of each tensor for ``local``), among the ``alive`` ones: the lowest scores (``least-sensitive``) or the highest
    (``most-sensitive``), ties at the threshold kept (see :func:`update_mask`).

    Args:
        scores: name → this round's scores (sums over samples); the keys and their order make the mask's.
        alive: the mask after the previous round (True = trainable); None before the first round.
        shapes: name → shape of every scored tensor (the counts are fractions of their entries).
        rule: ``least-sensitive`` or ``most-sensitive``.
        sparsity: the fraction frozen at the end of the last round.
        round_index: 1-based, from 1 to ``rounds``.
        rounds: R', the number of calibration rounds.
        scope: ``global`` (one threshold) or ``local`` (one per tensor).
    """
    if rule not in SENSITIVITY_RULES:
        raise ValueError(f"calibration_step takes a sensitivity rule {SENSITIVITY_RULES}, got {rule!r}")
    counts = keep_counts(shapes, keep_fraction(sparsity, round_index - 1, rounds), scope)
    return update_mask(scores, alive, counts, keep="lowest" if rule == "least-sensitive" else "highest", scope=scope)


# ---------------------------------------------------------------------------------------------------------------
# Rules whose keys do not depend on the mask.


def magnitude_mask(
    weights: Mapping[str, Tensor], sparsity: float, *, highest: bool = False, scope: Scope = "global"
) -> Mask:
    """Keep the ⌊(1 − s)N⌋ entries with the smallest (``highest=False``) or largest |θ| (ties at t kept)."""
    check_sparsity(sparsity)
    keys = {n: w.detach().abs() for n, w in weights.items()}
    counts = keep_counts({n: k.shape for n, k in keys.items()}, 1.0 - sparsity, scope)
    return update_mask(keys, None, counts, keep="highest" if highest else "lowest", scope=scope)


def random_mask(shapes: Shapes, sparsity: float, seed: int = 0, scope: Scope = "global") -> Mask:
    """Exactly ⌊(1 − s)N⌋ trainable entries (per tensor for ``local``), uniformly at random; CPU bool tensors.

    Reproducible: a ``torch.Generator`` seeded with ``seed`` draws one permutation over all entries in the keys'
    order (``global``), or one per tensor in that order (``local``).
    """
    check_sparsity(sparsity)
    generator = torch.Generator().manual_seed(seed)
    counts = keep_counts(shapes, 1.0 - sparsity, scope)

    def pick(total: int, k: int) -> Tensor:
        flat = torch.zeros(total, dtype=torch.bool)
        flat[torch.randperm(total, generator=generator)[:k]] = True
        return flat

    if scope == "local":
        return {n: pick(math.prod(s), counts[n]).reshape(tuple(s)) for n, s in shapes.items()}
    flat = pick(sum(math.prod(s) for s in shapes.values()), counts)
    return split_flat(flat, shapes)


# ---------------------------------------------------------------------------------------------------------------
# Statistics.


def mask_stats(mask: Mapping[str, Tensor]) -> dict[str, float | int]:
    """``density`` (trainable fraction) and ``sparsity`` (frozen fraction) of all entries, and the ``trainable`` and
    ``total`` entry counts: a run summary's ``mask`` entry (per tensor: ``tracking.mask_report.density_rows``)."""
    trainable = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    density = trainable / total if total else float("nan")
    return {"density": density, "sparsity": 1.0 - density, "trainable": trainable, "total": total}


def check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity is the fraction frozen, in [0, 1]; got {sparsity}")
