"""Small tensors and masks written out by hand in tests."""

from __future__ import annotations

import torch


def floats(*values: float) -> torch.Tensor:
    """A float32 vector of ``values``."""
    return torch.tensor(values, dtype=torch.float32)


def bools(*values: int) -> torch.Tensor:
    """A bool vector of ``values`` (0 / 1)."""
    return torch.tensor(values, dtype=torch.bool)


def masks_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """The same names in the same order, and equal tensors."""
    return list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)


def count_true(mask: dict[str, torch.Tensor]) -> int:
    """The trainable entries of a mask."""
    return sum(int(m.sum()) for m in mask.values())
