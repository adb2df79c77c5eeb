"""The weighted mean of the accepted client updates, in place and in partition-id order, with the client drift;
folded as the replies arrive (:class:`RunningMean`) or from the list of them (:func:`aggregate`)."""

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


class RunningMean:
    """The example-weighted mean of a cohort's updates, folded in as they are checked, in partition-id order.

    Each update is offered with the example counts its cohort registered (pid → count), so the weights
    p_i = n_i / Σn are known before all replies are in. An update is folded as soon as every lower pid of the cohort
    has been: the sums are those of :func:`aggregate`, bit for bit, whatever the order of arrival. :attr:`complete`
    says whether the whole cohort was folded; if a client failed, the round aggregates its accepted updates with
    :func:`aggregate` instead.

    ``buffers`` (name → tensor) are where the sums go, reused from round to round when their shape and dtype fit
    (a fresh 86.5 MB sum costs ~21,000 page faults); missing or unfit ones are allocated and put there.
    """

    def __init__(self, total: int | None = None, buffers: dict[str, torch.Tensor] | None = None) -> None:
        self._buffers = buffers if buffers is not None else {}
        self._counts: dict[int, int] | None = None  # the cohort's, from the first offer
        self._order: list[int] = []
        self._total = total  # Σn of the updates the mean is over
        self._waiting: dict[int, ClientUpdate] = {}
        self._offered: set[int] = set()
        self._folded: list[ClientUpdate] = []
        self._unusable = False
        self.average: dict[str, torch.Tensor] = {}
        self.spread = 0.0  # Σ p_i ‖u_i‖²

    @property
    def complete(self) -> bool:
        return not self._unusable and bool(self._order) and len(self._folded) == len(self._order)

    def offer(
        self, update: ClientUpdate, reference: Mapping[str, torch.Tensor], counts: Mapping[int, int | None]
    ) -> None:
        """Take ``update`` (checked) of the cohort with example ``counts``; fold it and every waiting successor in
        pid order."""
        if self._counts is None and not self._unusable:
            if any(n is None for n in counts.values()):
                self._unusable = True  # a count is unknown: the weights are not known in advance
            else:
                self._counts = {pid: int(n) for pid, n in counts.items() if n is not None}
                self._order, self._total = sorted(self._counts), sum(self._counts.values())
        if self._counts != counts or self._counts.get(update.pid) != update.num_examples:
            self._unusable = True  # not the cohort counted on: the round falls back to aggregate()
        if self._unusable or update.pid in self._offered:
            self._unusable = True
            return
        self._offered.add(update.pid)
        self._waiting[update.pid] = update
        while len(self._folded) < len(self._order) and self._order[len(self._folded)] in self._waiting:
            self.fold(self._waiting.pop(self._order[len(self._folded)]), reference)

    def fold(self, update: ClientUpdate, reference: Mapping[str, torch.Tensor]) -> None:
        """Add ``update`` now (the caller keeps the pid order; :meth:`offer` does it for you)."""
        if not self._total:
            raise ValueError("no examples to weigh the updates by")
        p = update.num_examples / self._total
        distance = update.squared_distance
        if distance is None:
            distance = sum(float(torch.dist(v, reference[k])) ** 2 for k, v in update.tensors.items())
        self.spread += p * distance
        for key, value in update.tensors.items():
            if key in self.average:
                self.average[key].add_(value, alpha=p)
            else:
                self.average[key] = torch.mul(value, p, out=self._buffer(key, value))  # the bits of value.mul(p)
        self._folded.append(update)

    def _buffer(self, key: str, like: torch.Tensor) -> torch.Tensor:
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffers[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buffer

    def result(self, reference: Mapping[str, torch.Tensor], *, coordinates: int) -> Aggregate:
        """The :class:`Aggregate` of the updates folded (see :func:`aggregate`); the round's only if
        :attr:`complete`."""
        updates, total = self._folded, self._total
        mean_sq = sum(float(torch.dist(avg, reference[key])) ** 2 for key, avg in self.average.items())
        metric_keys = set.intersection(*(set(u.metrics) for u in updates))
        metrics = {k: sum(u.metrics[k] * u.num_examples for u in updates) / total for k in sorted(metric_keys)}
        return Aggregate(self.average, math.sqrt(max(self.spread - mean_sq, 0.0) / coordinates), metrics, total)


def aggregate(
    updates: Sequence[ClientUpdate],
    reference: Mapping[str, torch.Tensor],
    *,
    coordinates: int,
    buffers: dict[str, torch.Tensor] | None = None,
) -> Aggregate:
    """Average ``updates`` with weights p_i = n_i / Σn, accumulating in partition-id order (deterministic).

    ``reference`` holds, for every uploaded key, the values the clients started from (the global model, or for
    masked values the global trainable entries). The drift is the weighted RMS distance of the client updates
    u_i = x_i − reference from their weighted mean ū, per weight of a fixed set of ``coordinates`` weights:
    sqrt(Σ p_i ‖u_i − ū‖² / D), D = ``coordinates``; Σ p_i ‖u_i − ū‖² = Σ p_i ‖u_i‖² − ‖ū‖² comes from each
    update's ‖u_i‖² (``ClientUpdate.squared_distance``, measured when the reply was checked) without keeping any
    update. Weights a client did not upload did not move (frozen tensors and mask entries): they add 0 to the
    norms but count in D, so with D = the whole model a sparse and a dense round are on one scale. It grows when
    clients pull in different directions (large J under non-iid data). :class:`RunningMean` computes the same as
    the replies arrive.
    """
    if coordinates < 1:
        raise ValueError(f"coordinates must be >= 1, got {coordinates}")
    if not updates:
        raise ValueError("nothing to aggregate")
    mean = RunningMean(sum(u.num_examples for u in updates), buffers)  # folded as given, in pid order
    for update in sorted(updates, key=lambda u: u.pid):
        mean.fold(update, reference)
    return mean.result(reference, coordinates=coordinates)


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
