"""The one training-steps loop and the one evaluation loop, shared by the centralized and federated paths."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fedtalos.task.device import autocast

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LoopStats:
    """Sums over the examples a loop saw. ``loss`` is the mean cross-entropy (nats), ``accuracy`` top-1 in [0, 1].

    ``LoopStats()`` is the sum of nothing; ``a + b`` the sums of two loops in turn (an epoch run in segments, e.g.
    between mid-epoch checkpoints, adds its segments' sums in order).
    """

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    steps: int = 0

    def __add__(self, other: LoopStats) -> LoopStats:
        return LoopStats(
            self.loss_sum + other.loss_sum,
            self.correct + other.correct,
            self.count + other.count,
            self.steps + other.steps,
        )

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")


@dataclass(frozen=True)
class EvalStats(LoopStats):
    """An evaluation's sums: :class:`LoopStats` and the top-5 hits (``top5_accuracy`` in [0, 1]). Training counts
    top-1 alone, so a checkpoint's epoch sums keep their fields."""

    correct_top5: int = 0

    @property
    def top5_accuracy(self) -> float:
        return self.correct_top5 / self.count if self.count else float("nan")


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    loss_fn: nn.Module | None = None,
    autocast_dtype: torch.dtype | None = None,
    regularizer: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> LoopStats:
    """Run one optimizer step per batch and return loss/accuracy sums over the examples seen.

    Args:
        model: put in train mode here.
        optimizer: stepped once per batch (any ``torch.optim.Optimizer``, e.g. SGD or SparseSGDM).
        batches: (inputs (B,3,S,S), labels (B,)) on the model's device; the number of batches is the number of
            steps (J local steps in FL, one epoch centrally).
        loss_fn: defaults to cross-entropy.
        autocast_dtype: run forward/loss under ``torch.autocast`` with this dtype (e.g. bf16 on CUDA).
        regularizer: an extra term added to the loss (FedProx's proximal term).
        after_step: called with the 1-based step index after each optimizer step (per-step schedulers,
            progress bars, mid-epoch checkpoints).

    Loss and accuracy are kept on the device and read once at the end: no host sync per step (see
    :func:`_host_sums` for the float64 sums).
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.train()
    device = next(model.parameters()).device
    losses: list[torch.Tensor] = []
    corrects: list[torch.Tensor] = []
    sizes: list[int] = []
    steps = 0
    for inputs, labels in batches:
        with autocast(device, autocast_dtype):
            logits = model(inputs)
            loss = loss_fn(logits, labels)
        total = loss if regularizer is None else loss + regularizer()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        losses.append(loss.detach())
        corrects.append((logits.detach().argmax(-1) == labels).sum())
        sizes.append(len(labels))
        steps += 1
        if after_step is not None:
            after_step(steps)
    loss_sum, correct = _host_sums(losses, corrects, sizes, weighted=True)
    return LoopStats(loss_sum, correct, sum(sizes), steps)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    autocast_dtype: torch.dtype | None = None,
) -> EvalStats:
    """Mean cross-entropy, top-1 and top-5 accuracy of ``model`` (in eval mode) over ``batches``."""
    model.eval()
    device = next(model.parameters()).device
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    losses: list[torch.Tensor] = []
    corrects: list[torch.Tensor] = []
    corrects_top5: list[torch.Tensor] = []
    sizes: list[int] = []
    for inputs, labels in batches:
        with autocast(device, autocast_dtype):
            logits = model(inputs)
        losses.append(loss_fn(logits.float(), labels))
        corrects.append((logits.argmax(-1) == labels).sum())
        corrects_top5.append(top_k_correct(logits, labels, 5))
        sizes.append(len(labels))
    loss_sum, correct = _host_sums(losses, corrects, sizes, weighted=False)
    top5 = int(torch.stack(corrects_top5).cpu().sum()) if corrects_top5 else 0
    return EvalStats(loss_sum, correct, sum(sizes), len(sizes), top5)


def top_k_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """How many labels are among their row's ``k`` largest logits (all of them when there are ``k`` classes or
    fewer), as a device scalar."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).sum()


def _host_sums(
    losses: list[torch.Tensor], corrects: list[torch.Tensor], sizes: list[int], *, weighted: bool
) -> tuple[float, int]:
    """(Σ loss·size or Σ loss, Σ correct) of per-step device scalars, summed in float64 on the host.

    Apple's MPS has no float64, so the sums are never kept on the device: the float32 scalars come to the CPU in
    one copy (the loop's only sync) and are added as Python floats (IEEE float64) in step order, which is the
    same arithmetic, bit for bit, as a float64 accumulator on the device.
    """
    if not losses:
        return 0.0, 0
    values = torch.stack(losses).float().cpu().tolist()
    total = 0.0
    for value, size in zip(values, sizes, strict=True):
        total += value * size if weighted else value
    return total, int(torch.stack(corrects).cpu().sum())
