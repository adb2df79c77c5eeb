"""The one training-steps loop and the one evaluation loop, shared by the centralized and federated paths."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fedtalos.task.model import autocast

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LoopStats:
    """Sums over the examples a loop saw. ``loss`` is the mean cross-entropy (nats), ``accuracy`` top-1 in [0, 1]."""

    loss_sum: float
    correct: int
    count: int
    steps: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")


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

    Loss and accuracy are accumulated on the device and read once at the end: no host sync per step.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    count = steps = 0
    for inputs, labels in batches:
        with autocast(device, autocast_dtype):
            logits = model(inputs)
            loss = loss_fn(logits, labels)
        total = loss if regularizer is None else loss + regularizer()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(labels)
        correct += (logits.detach().argmax(-1) == labels).sum()
        count += len(labels)
        steps += 1
        if after_step is not None:
            after_step(steps)
    return LoopStats(float(loss_sum), int(correct), count, steps)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    autocast_dtype: torch.dtype | None = None,
) -> LoopStats:
    """Mean cross-entropy and top-1 accuracy of ``model`` (in eval mode) over ``batches``."""
    model.eval()
    device = next(model.parameters()).device
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    count = steps = 0
    for inputs, labels in batches:
        with autocast(device, autocast_dtype):
            logits = model(inputs)
        loss_sum += loss_fn(logits.float(), labels).double()
        correct += (logits.argmax(-1) == labels).sum()
        count += len(labels)
        steps += 1
    return LoopStats(float(loss_sum), int(correct), count, steps)
