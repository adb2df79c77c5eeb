"""Count the aten operators a piece of code dispatches, and its copies between devices (tests and benchmarks only)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _Counting(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.transfers: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket.__name__)] += 1
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten._to_copy and out.device != args[0].device:
            self.transfers[f"{args[0].device.type}->{out.device.type}"] += 1
        elif func.overloadpacket is torch.ops.aten.copy_ and args[0].device != args[1].device:
            self.transfers[f"{args[1].device.type}->{args[0].device.type}"] += 1
        return out


def count_aten_ops(fn: Callable[[], object]) -> Counter[str]:
    """Operator name → number of calls during ``fn()``, counted where Python dispatch sees them: a
    ``_foreach_*`` call counts once however many tensors it takes (on a GPU it is a few kernel launches, not one
    per tensor), and the operators a kernel runs inside itself are not counted."""
    with _Counting() as mode:
        fn()
    return mode.ops


def count_transfers(fn: Callable[[], object]) -> Counter[str]:
    """``'cpu->cuda'``-style source → destination device type of every copy between devices during ``fn()``."""
    with _Counting() as mode:
        fn()
    return mode.transfers
