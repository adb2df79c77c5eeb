"""Masks: score → threshold → update (``docs/editing.md``), the centralized calibration driver, compact storage.

Conventions: a mask is a dict name → bool tensor of the parameter's shape, **True = trainable**; **sparsity** is
the fraction of the scored entries that are frozen (0.9 → 10 % trainable). One round of the multi-round
calibration is :func:`calibration_step` (the schedule :func:`keep_fraction`, the counts :func:`keep_counts`, the
threshold :func:`update_mask`): the centralized driver :func:`calibrate_mask`, the federated server (on the sum of
the clients' scores) and the mask-agreement analysis all take their rounds through it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from fedtalos.editing.fisher import Batch, Target, fisher_scores
from fedtalos.task.model import HEAD_PREFIX

Mask = dict[str, Tensor]
Scope = Literal["global", "local"]
Keep = Literal["lowest", "highest"]
Rule = Literal["least-sensitive", "most-sensitive", "lowest-magnitude", "highest-magnitude", "random"]
RULES: tuple[str, ...] = ("least-sensitive", "most-sensitive", "lowest-magnitude", "highest-magnitude", "random")
# The rules that score with Fisher sensitivities and so calibrate over R' rounds; the others take one step.
SENSITIVITY_RULES: tuple[str, ...] = ("least-sensitive", "most-sensitive")
Shapes = Mapping[str, Sequence[int]]

# ---------------------------------------------------------------------------------------------------------------
# Schedule and counts.


def keep_fraction(sparsity: float, round_index: int, rounds: int) -> float:
    """Fraction of the scored entries still trainable after 0-based round ``round_index`` of ``rounds``.

    ``(1 − s) ** ((r + 1) / R)``: geometric, so every round freezes the same fraction of what is alive, and the
    last round ends at exactly ``1 − s``.
    """
    _check_sparsity(sparsity)
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
    _check_sparsity(sparsity)
    keys = {n: w.detach().abs() for n, w in weights.items()}
    counts = keep_counts({n: k.shape for n, k in keys.items()}, 1.0 - sparsity, scope)
    return update_mask(keys, None, counts, keep="highest" if highest else "lowest", scope=scope)


def random_mask(shapes: Shapes, sparsity: float, seed: int = 0, scope: Scope = "global") -> Mask:
    """Exactly ⌊(1 − s)N⌋ trainable entries (per tensor for ``local``), uniformly at random; CPU bool tensors.

    Reproducible: a ``torch.Generator`` seeded with ``seed`` draws one permutation over all entries in the keys'
    order (``global``), or one per tensor in that order (``local``).
    """
    _check_sparsity(sparsity)
    generator = torch.Generator().manual_seed(seed)
    counts = keep_counts(shapes, 1.0 - sparsity, scope)

    def pick(total: int, k: int) -> Tensor:
        flat = torch.zeros(total, dtype=torch.bool)
        flat[torch.randperm(total, generator=generator)[:k]] = True
        return flat

    if scope == "local":
        return {n: pick(math.prod(s), counts[n]).reshape(tuple(s)) for n, s in shapes.items()}
    flat = pick(sum(math.prod(s) for s in shapes.values()), counts)
    return _split(flat, shapes)


# ---------------------------------------------------------------------------------------------------------------
# The centralized calibration driver.


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
            callable ``round_index -> iterable`` (fresh samples per round). Unused by the magnitude and random rules.
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
    _check_sparsity(sparsity)
    named = dict(model.named_parameters())
    names = [n for n in named if not n.startswith(HEAD_PREFIX)] if params is None else list(params)
    weights = {n: named[n].detach() for n in names}
    if rule in ("lowest-magnitude", "highest-magnitude"):
        return magnitude_mask(weights, sparsity, highest=rule == "highest-magnitude", scope=scope)
    if rule == "random":
        mask = random_mask({n: w.shape for n, w in weights.items()}, sparsity, seed=seed, scope=scope)
        return {n: m.to(weights[n].device) for n, m in mask.items()}
    if rule not in SENSITIVITY_RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {RULES}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not callable(batches) and iter(batches) is batches:  # type: ignore[arg-type]
        raise TypeError("batches must be re-iterable (e.g. a list) or a callable round_index -> batches")
    shapes = {n: w.shape for n, w in weights.items()}
    generator = torch.Generator(device=weights[names[0]].device).manual_seed(seed)
    alive: Mask = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    for r in range(rounds):
        data = batches(r) if callable(batches) else batches
        scores = fisher_scores(
            model,
            data,
            params=names,
            target=target,
            repeats=repeats,
            soft_mask=alive,
            soft_value=soft_value,
            generator=generator,
            chunk_size=chunk_size,
        )
        alive = calibration_step(
            scores, alive, shapes, rule=rule, sparsity=sparsity, round_index=r + 1, rounds=rounds, scope=scope
        )
    return alive


# ---------------------------------------------------------------------------------------------------------------
# Statistics, compact transport and storage.


def mask_stats(mask: Mapping[str, Tensor]) -> dict[str, Any]:
    """``density`` (trainable fraction) and ``sparsity`` (frozen fraction) overall, ``trainable`` and ``total``
    entry counts, and ``per_tensor``: name → density."""
    trainable = {n: int(m.sum()) for n, m in mask.items()}
    total = sum(m.numel() for m in mask.values())
    kept = sum(trainable.values())
    density = kept / total if total else float("nan")
    return {
        "density": density,
        "sparsity": 1.0 - density,
        "trainable": kept,
        "total": total,
        "per_tensor": {n: trainable[n] / m.numel() if m.numel() else float("nan") for n, m in mask.items()},
    }


def pack_mask(mask: Mapping[str, Tensor]) -> np.ndarray:
    """1 bit per entry: ``np.packbits`` over the tensors flattened (row-major) and concatenated in key order.

    Returns uint8 of length ⌈N / 8⌉ (2.7 MB for the 21.7M scored entries of ViT-S/16); the shapes travel
    separately (see :func:`unpack_mask`, :func:`save_mask`).
    """
    if not mask:
        return np.zeros(0, dtype=np.uint8)
    return np.packbits(np.concatenate([m.detach().cpu().numpy().astype(bool).ravel() for m in mask.values()]))


def unpack_mask(bits: np.ndarray, shapes: Shapes) -> Mask:
    """Inverse of :func:`pack_mask`: name → CPU bool tensor, for ``shapes`` in the order used when packing."""
    total = sum(math.prod(s) for s in shapes.values())
    bits = np.asarray(bits)
    if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != (total + 7) // 8:
        raise ValueError(f"expected {(total + 7) // 8} uint8 bytes for {total} entries, got {bits.dtype} {bits.shape}")
    flat = np.unpackbits(bits)
    if flat[total:].any():
        raise ValueError("padding bits are set: the bits do not belong to these shapes")
    return _split(torch.from_numpy(flat[:total].astype(bool)), shapes)


def gather_trainable(tensors: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> Tensor:
    """The trainable entries' values, 1-D: per mask key in order, the row-major entries where the mask is True.

    Only tensors named in the mask are read. Tensors absent from the mask count as dense: they are not in the
    result and must be carried separately (whole), e.g. alongside it in the same message.
    """
    parts = [tensors[n].detach()[m.to(tensors[n].device)] for n, m in mask.items()]
    return torch.cat(parts) if parts else torch.zeros(0)


def scatter_trainable(flat: Tensor, mask: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`gather_trainable`: ``base`` with the trainable entries of the masked tensors replaced.

    Masked tensors are new tensors (base's frozen entries, ``flat``'s values at the trainable ones, cast to base's
    dtype and device). Tensors of ``base`` absent from the mask are returned as they are (the same objects):
    dense tensors are not in ``flat`` and have to be set from what was carried separately.
    """
    out = dict(base)
    offset = 0
    for n, m in mask.items():
        t = base[n].detach().clone()
        m = m.to(t.device)
        count = int(m.sum())
        if offset + count > flat.numel():
            raise ValueError(f"flat has {flat.numel()} values, fewer than the mask's trainable entries")
        t[m] = flat[offset : offset + count].to(dtype=t.dtype, device=t.device)
        out[n] = t
        offset += count
    if offset != flat.numel():
        raise ValueError(f"flat has {flat.numel()} values for {offset} trainable entries")
    return out


def save_mask(path: str | Path, mask: Mapping[str, Tensor]) -> None:
    """Write ``mask`` to ``path`` (exactly that name) as ``.npz``: packed bits, names and shapes; no pickles.

    Written to a temporary file first and renamed, so a crash never leaves a half-written mask behind.
    """
    path = Path(path)
    names = list(mask)
    shapes = [tuple(m.shape) for m in mask.values()]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            bits=pack_mask(mask),
            names=np.array(names, dtype=np.str_),
            ndims=np.array([len(s) for s in shapes], dtype=np.int64),
            dims=np.array([d for s in shapes for d in s], dtype=np.int64),
        )
    os.replace(tmp, path)


def load_mask(path: str | Path) -> Mask:
    """Read a mask written by :func:`save_mask` (``allow_pickle=False``): name → CPU bool tensor."""
    with np.load(path, allow_pickle=False) as f:
        names = [str(n) for n in f["names"]]
        ndims, dims = f["ndims"].tolist(), f["dims"].tolist()
        bits = f["bits"]
    if len(ndims) != len(names) or sum(ndims) != len(dims):
        raise ValueError(f"{path}: names, ndims and dims do not fit together")
    shapes, offset = {}, 0
    for n, k in zip(names, ndims, strict=True):
        shapes[n] = tuple(dims[offset : offset + k])
        offset += k
    return unpack_mask(bits, shapes)


# ---------------------------------------------------------------------------------------------------------------


def _split(flat: Tensor, shapes: Shapes) -> Mask:
    sizes = [math.prod(s) for s in shapes.values()]
    # Clones: independent tensors (no shared storage, which e.g. safetensors refuses to save).
    return {n: part.reshape(tuple(s)).clone() for (n, s), part in zip(shapes.items(), flat.split(sizes), strict=True)}


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity is the fraction frozen, in [0, 1]; got {sparsity}")
