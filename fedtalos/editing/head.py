"""Step 0: the frozen classifier head, by closed-form ridge regression on frozen backbone features.

See docs/editing.md, "Step 0".

Each client sends ΦᵀΦ, ΦᵀY and its sample count (:class:`RidgeStats`, additive); the server sums them and solves
(ΦᵀΦ + λ·n·I′)W = ΦᵀY (n = the total count), which is exactly the centralized ridge solution on the union of the
clients' data, without raw data leaving a client. Φ = [features, 1] (the constant column carries the bias), Y =
one-hot labels.

Least-squares outputs of one-hot targets lie roughly in [0, 1], which under a softmax over 100 classes is almost
uniform: cross-entropy fine-tuning starts with tiny, uninformative gradients, and Fisher label sampling draws
nearly uniform labels. :func:`fit_logit_scale` finds the temperature α that makes α·logits calibrated.
:func:`fit_head` is step 0 for both kinds of run: the summed statistics and the validation features in, the head
and its temperature out.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedtalos.editing._common import eval_mode


@torch.no_grad()
def backbone_features(model: nn.Module, inputs: Tensor) -> Tensor:
    """Pre-logits features (B, D) of a timm ViT for inputs (B, 3, S, S): what the head sees (no autograd graph)."""
    return model.forward_head(model.forward_features(inputs), pre_logits=True)


@dataclass(frozen=True)
class RidgeStats:
    """Sufficient statistics of ridge regression, summed over samples.

    Attributes:
        gram: ΦᵀΦ, (D+1)×(D+1) float64; the last row/column belongs to the constant (bias) feature.
        cross: ΦᵀY, (D+1)×C float64, Y one-hot.
        count: number of samples (= gram[D, D]).
    """

    gram: Tensor
    cross: Tensor
    count: int

    def __add__(self, other: RidgeStats) -> RidgeStats:
        if not isinstance(other, RidgeStats):
            return NotImplemented
        if self.gram.shape != other.gram.shape or self.cross.shape != other.cross.shape:
            raise ValueError("statistics of different feature or class dimensions cannot be added")
        return RidgeStats(self.gram + other.gram, self.cross + other.cross, self.count + other.count)

    def __radd__(self, other: object) -> RidgeStats:
        # Lets the builtin sum() start from 0.
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    @classmethod
    def sum(cls, stats: Iterable[RidgeStats]) -> RidgeStats:
        """The sum of one or more client statistics (what the server aggregates)."""
        stats = list(stats)
        if not stats:
            raise ValueError("no statistics to sum")
        return functools.reduce(operator.add, stats)


def feature_statistics(features: Tensor, labels: Tensor, num_classes: int) -> RidgeStats:
    """:class:`RidgeStats` of features (B, D) with int labels (B,) in [0, num_classes); computed on the CPU."""
    phi = features.detach().cpu().double()  # to the CPU first: MPS has no float64
    phi = torch.cat([phi, torch.ones(len(phi), 1, dtype=torch.float64)], dim=1)
    targets = F.one_hot(labels.detach().to("cpu", torch.long), num_classes).to(torch.float64)
    return RidgeStats(phi.T @ phi, phi.T @ targets, len(phi))


def ridge_statistics(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int) -> RidgeStats:
    """Sum :func:`feature_statistics` over (inputs, labels) batches, features from ``model`` in eval mode.

    Inputs are moved to the model's device; the float64 statistics are accumulated on the CPU (small:
    385×385 and 385×100 for ViT-S/16 with CIFAR-100). Without batches the statistics are zero.
    """
    device = next(model.parameters()).device
    total: RidgeStats | None = None
    with eval_mode(model):
        for inputs, labels in batches:
            stats = feature_statistics(backbone_features(model, inputs.to(device)), labels, num_classes)
            total = stats if total is None else total + stats
    if total is None:
        dim = model.head.in_features + 1
        total = RidgeStats(torch.zeros(dim, dim, dtype=torch.float64), torch.zeros(dim, num_classes).double(), 0)
    return total


def solve_ridge(stats: RidgeStats, lam: float) -> tuple[Tensor, Tensor]:
    """Solve (ΦᵀΦ + λ·n·I′)W = ΦᵀY in float64, n = ``stats.count``; returns (weight C×D, bias C), float64 on the CPU.

    λ is relative to the number of samples: ΦᵀΦ grows with n (ΦᵀΦ/n is the features' second moment), so an
    absolute penalty would all but vanish on the 45k-sample union and be strong on one client's shard; λ·n
    regularises both alike (the solution minimises the *mean* squared error + λ‖W‖²). I′ is the identity with a 0
    for the bias: the bias is not regularised, so it stays the (least-squares) class offset, e.g. the class
    frequencies when λ → ∞, instead of being shrunk towards 0; the solution also does not depend on whether the
    features are centred. The system is positive definite for λ > 0 and count > 0 (Cholesky); λ = 0 falls back to
    a general solver, which fails on rank-deficient features.
    """
    if lam < 0:
        raise ValueError(f"ridge lambda must be >= 0, got {lam}")
    if stats.count == 0:
        raise ValueError("cannot fit a head on zero samples")
    gram, cross = stats.gram.double(), stats.cross.double()
    dim = gram.shape[0] - 1
    penalty = torch.full((dim + 1,), float(lam) * stats.count, dtype=torch.float64)
    penalty[dim] = 0.0
    system = gram + torch.diag(penalty)
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(cross, factor) if int(info) == 0 else torch.linalg.solve(system, cross)
    return solution[:dim].T.contiguous(), solution[dim].clone()


def fit_logit_scale(
    logits: Tensor, labels: Tensor, bounds: tuple[float, float] = (1e-3, 1e4), tol: float = 1e-7
) -> float:
    """The α > 0 minimising the mean cross-entropy of α·logits (N, C) against labels (N,): temperature scaling.

    Golden-section search on log α within ``bounds``: CE(α·z) is convex in α, hence unimodal in log α. Separable
    data have their optimum at α → ∞; the upper bound is returned then. ``tol`` is the final width in log α.
    """
    z = logits.detach().cpu().double()  # on the CPU: MPS has no float64
    y = labels.detach().cpu().long()

    def loss(log_alpha: float) -> float:
        return float(F.cross_entropy(math.exp(log_alpha) * z, y))

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


@dataclass(frozen=True)
class FittedHead:
    """A ridge head with its temperature: logits = scale · (weight · φ + bias).

    Attributes:
        weight: C×D, float64 on the CPU.
        bias: C, float64 on the CPU.
        scale: the temperature α fitted on the validation features.
        fitted_loss: the mean cross-entropy of the scaled logits there (in-sample for α, not a held-out estimate).
    """

    weight: Tensor
    bias: Tensor
    scale: float
    fitted_loss: float


def validation_features(model: nn.Module, inputs: Iterable[Tensor]) -> Tensor:
    """The backbone features (N, D) of input batches, float64 on the CPU, ``model`` in eval mode."""
    with eval_mode(model):
        return torch.cat([backbone_features(model, x).cpu().double() for x in inputs])  # MPS has no float64


def fit_head(
    stats: RidgeStats, lam: float, features: Tensor, labels: Tensor, *, logits_dtype: torch.dtype = torch.float64
) -> FittedHead:
    """Step 0: the ridge solution of the summed ``stats`` (:func:`solve_ridge`, ``lam`` = λ), and the temperature
    fitted on validation ``features`` (N, D, float64, :func:`validation_features`) and their ``labels`` (N,).

    ``logits_dtype``: the validation logits are rounded to it before α is fitted (the federated server fits on
    float32 logits, the centralized trainer on float64).
    """
    weight, bias = solve_ridge(stats, lam)
    logits = (features @ weight.T + bias).to(logits_dtype)
    targets = labels.cpu()
    scale = fit_logit_scale(logits, targets)
    fitted_loss = float(F.cross_entropy(scale * logits.double(), targets.long()))
    return FittedHead(weight, bias, scale, fitted_loss)


@torch.no_grad()
def set_head(model: nn.Module, weight: Tensor, bias: Tensor, scale: float = 1.0) -> None:
    """Set ``model.head`` to logits = scale · (weight · φ + bias); weight C×D, bias C (cast to the head's dtype)."""
    head = model.head
    if weight.shape != head.weight.shape or bias.shape != head.bias.shape:
        raise ValueError(
            f"head expects weight {tuple(head.weight.shape)} and bias {tuple(head.bias.shape)}, "
            f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    # Scaled in float64 and cast on the CPU, then copied: no float64 tensor reaches the model's device (MPS).
    head.weight.copy_((weight.cpu().double() * scale).to(head.weight.dtype))
    head.bias.copy_((bias.cpu().double() * scale).to(head.bias.dtype))
