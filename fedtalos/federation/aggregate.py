"""The weighted mean of the accepted client updates, in place and in partition-id order, with the client drift."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class ClientUpdate:
    """One accepted reply: its checked tensors, example count and train metrics."""

    pid: int
    num_examples: int
    tensors: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    squared_distance: float | None = None  # ‖tensors − reference‖² if already measured (protocol.squared_distance)


@dataclass
class Aggregate:
    """The example-weighted average of the uploads, the drift, and the weighted mean of client metrics."""

    average: dict[str, torch.Tensor]
    drift: float
    metrics: dict[str, float]
    num_examples: int


def aggregate(updates: Sequence[ClientUpdate], reference: Mapping[str, torch.Tensor], *, coordinates: int) -> Aggregate:
    """Average ``updates`` with weights p_i = n_i / Σn, accumulating in partition-id order (deterministic).

    ``reference`` holds, for every uploaded key, the values the clients started from (the global model, or for
    masked values the global trainable entries). The drift is the weighted RMS distance of the client updates
    u_i = x_i − reference from their weighted mean ū, per weight of a fixed set of ``coordinates`` weights:
    sqrt(Σ p_i ‖u_i − ū‖² / D), D = ``coordinates``; Σ p_i ‖u_i − ū‖² = Σ p_i ‖u_i‖² − ‖ū‖² comes from each
    update's ‖u_i‖² (``ClientUpdate.squared_distance``, measured when the reply was checked) without keeping any
    update. Weights a client did not upload did not move (frozen tensors and mask entries): they add 0 to the
    norms but count in D, so with D = the whole model a sparse and a dense round are on one scale. It grows when
    clients pull in different directions (large J under non-iid data).
    """
    if coordinates < 1:
        raise ValueError(f"coordinates must be >= 1, got {coordinates}")
    if not updates:
        raise ValueError("nothing to aggregate")
    updates = sorted(updates, key=lambda u: u.pid)
    total = sum(u.num_examples for u in updates)
    average: dict[str, torch.Tensor] = {}
    spread = 0.0
    for update in updates:
        p = update.num_examples / total
        distance = update.squared_distance
        if distance is None:
            distance = sum(float(torch.dist(v, reference[k])) ** 2 for k, v in update.tensors.items())
        spread += p * distance
        for key, value in update.tensors.items():
            if key in average:
                average[key].add_(value, alpha=p)
            else:
                average[key] = value.mul(p)
    mean_sq = sum(float(torch.dist(avg, reference[key])) ** 2 for key, avg in average.items())
    metric_keys = set.intersection(*(set(u.metrics) for u in updates))
    metrics = {k: sum(u.metrics[k] * u.num_examples for u in updates) / total for k in sorted(metric_keys)}
    return Aggregate(average, math.sqrt(max(spread - mean_sq, 0.0) / coordinates), metrics, total)


def weighted_mean(updates: Sequence[ClientUpdate]) -> dict[str, torch.Tensor]:
    """The example-weighted mean of ``updates``' tensors, in the given order, as :func:`aggregate` computes it."""
    total = sum(u.num_examples for u in updates)
    average: dict[str, torch.Tensor] = {}
    for update in updates:
        p = update.num_examples / total
        for key, value in update.tensors.items():
            if key in average:
                average[key].add_(value, alpha=p)
            else:
                average[key] = value.mul(p)
    return average
