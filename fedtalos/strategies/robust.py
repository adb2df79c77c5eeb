"""Byzantine-robust rules over the cohort's updates, as Flower 1.42's classes: FedMedian, FedTrimmedAvg (Yin et al.,
2018), Krum / MultiKrum (Blanchard et al., 2017), Bulyan (El Mhamdi et al., 2018).

Each combines the uploads themselves (``combines_updates``), key by key over what was uploaded: with a gradient mask
that is the flat vector of trainable entries, so frozen entries never enter a median or a distance. The result is the
next global model (Flower's classes derive from FedAvg: ``apply`` copies it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from fedtalos.federation.aggregate import ClientUpdate, weighted_mean
from fedtalos.strategies.base import Weights
from fedtalos.strategies.fedavg import FedAvg

log = logging.getLogger(__name__)


def _stack(updates: Sequence[ClientUpdate], key: str) -> torch.Tensor:
    return torch.stack([u.tensors[key] for u in updates])


def median(stack: torch.Tensor) -> torch.Tensor:
    """The coordinate-wise median over dimension 0, as ``np.median``: the mean of the two middle values when even
    (``torch.median`` takes the lower one)."""
    n = stack.shape[0]
    ordered = stack.sort(dim=0).values
    if n % 2:
        return ordered[n // 2].clone()
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed_mean(stack: torch.Tensor, beta: float) -> torch.Tensor:
    """The coordinate-wise mean over dimension 0 of what is left after cutting ⌊β·n⌋ values off each tail
    (Flower's ``trim_mean``, after scipy's)."""
    n = stack.shape[0]
    cut = int(beta * n)
    return stack.sort(dim=0).values[cut : n - cut].mean(dim=0)


def pairwise_squared_distances(updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """‖x_i − x_j‖² over all uploaded keys (float64, n × n)."""
    n = len(updates)
    distances = torch.zeros(n, n, dtype=torch.float64)
    for key in updates[0].tensors:
        flat = _stack(updates, key).reshape(n, -1).double()
        sq = flat.square().sum(dim=1)
        distances += sq[:, None] + sq[None, :] - 2 * flat @ flat.T
    return distances.clamp_(min=0.0)


def select_multikrum(updates: Sequence[ClientUpdate], num_malicious: int, num_to_select: int) -> list[int]:
    """Indices of the ``num_to_select`` updates with the lowest Krum scores, lowest first: a score is the sum of the
    squared distances to the max(1, n − f − 2) nearest other updates (Flower's ``select_multikrum``)."""
    n = len(updates)
    distances = pairwise_squared_distances(updates)
    nearest = max(1, n - num_malicious - 2)
    scores = []
    for i in range(n):
        others = torch.cat([distances[i, :i], distances[i, i + 1 :]])
        scores.append(float(others.sort().values[:nearest].sum()))
    order = sorted(range(n), key=lambda i: scores[i])
    return order[:num_to_select]


class FedMedian(FedAvg):
    """w ← the coordinate-wise median of the uploads."""

    name = "fedmedian"
    combines_updates = True

    def combine(self, updates: Sequence[ClientUpdate], reference: Mapping[str, torch.Tensor]) -> Weights:
        return {key: median(_stack(updates, key)) for key in updates[0].tensors}


class FedTrimmedAvg(FedAvg):
    """w ← the coordinate-wise β-trimmed mean of the uploads (unweighted, as Flower's)."""

    name = "fedtrimmedavg"
    combines_updates = True

    def __init__(self, beta: float = 0.2) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def combine(self, updates: Sequence[ClientUpdate], reference: Mapping[str, torch.Tensor]) -> Weights:
        return {key: trimmed_mean(_stack(updates, key), self.beta) for key in updates[0].tensors}


class MultiKrum(FedAvg):
    """w ← the example-weighted mean of the ``num_nodes_to_select`` uploads with the lowest Krum scores."""

    name = "multikrum"
    combines_updates = True

    def __init__(self, num_malicious_nodes: int = 0, num_nodes_to_select: int = 1) -> None:
        self.num_malicious_nodes = num_malicious_nodes
        self.num_nodes_to_select = num_nodes_to_select

    def combine(self, updates: Sequence[ClientUpdate], reference: Mapping[str, torch.Tensor]) -> Weights:
        chosen = select_multikrum(updates, self.num_malicious_nodes, self.num_nodes_to_select)
        return weighted_mean([updates[i] for i in sorted(chosen)])


class Krum(MultiKrum):
    """w ← the one upload with the lowest Krum score."""

    name = "krum"

    def __init__(self, num_malicious_nodes: int = 0) -> None:
        super().__init__(num_malicious_nodes, num_nodes_to_select=1)


class Bulyan(FedAvg):
    """θ = n − 2f uploads chosen by MultiKrum; per coordinate, the mean of the β = θ − 2f of them nearest their
    median. Fewer than 4f + 3 uploads: the round leaves the model as it was (Flower's Bulyan skips it)."""

    name = "bulyan"
    combines_updates = True

    def __init__(self, num_malicious_nodes: int = 0) -> None:
        self.num_malicious_nodes = num_malicious_nodes

    def combine(self, updates: Sequence[ClientUpdate], reference: Mapping[str, torch.Tensor]) -> Weights:
        n, f = len(updates), self.num_malicious_nodes
        if n < 4 * f + 3:
            log.warning("bulyan: %d replies, fewer than 4f + 3 = %d: the round keeps the model", n, 4 * f + 3)
            return {key: reference[key].clone() for key in updates[0].tensors}
        theta = n - 2 * f
        beta = theta - 2 * f
        chosen = [updates[i] for i in select_multikrum(updates, f, theta)]
        combined = {}
        for key in updates[0].tensors:
            stack = _stack(chosen, key)
            nearest = (stack - median(stack)).abs_().topk(beta, dim=0, largest=False).indices
            combined[key] = stack.gather(0, nearest).mean(dim=0)
        return combined
