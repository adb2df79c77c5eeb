"""An emulated Apple-MPS device for CPU-only machines: PyTorch's ``meta`` device under a dispatch mode.

MPS has no float64 (``TypeError: Cannot convert a MPS Tensor to float64 dtype``) and lacks some selection
kernels. Under :class:`EmulatedMps`, tensors on ``meta`` stand for tensors on that device: any op that produces a
float64 tensor on it, or runs ``kthvalue`` on it, is recorded as a violation and raises, as MPS would. Meta tensors
hold no data, so a copy to the CPU yields placeholder values (``0, 1, 2, ...`` for floats, the same modulo 10 for
integers, which makes valid labels, True for bools; a scalar read with ``.item()`` is 0 / False): the emulation
checks *where* the code computes, never *what* it computes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
DEVICE = torch.device("meta")
_UNSUPPORTED = {aten.kthvalue.default}


class MpsUnsupported(RuntimeError):
    """What MPS would raise: a float64 tensor or an unsupported kernel on the device."""


def _placeholder(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    values = torch.arange(max(1, shape.numel()), dtype=torch.float64)[: shape.numel()].reshape(shape)
    return (values if dtype.is_floating_point else values % 10).to(dtype)  # integers: valid class labels


def _on_device(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


class EmulatedMps(TorchDispatchMode):
    """Run code with ``meta`` standing in for MPS; ``violations`` lists what MPS would have refused."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []

    def _refuse(self, what: str) -> None:
        self.violations.append(what)
        raise MpsUnsupported(what)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _UNSUPPORTED and any(_on_device(a) for a in tree_leaves(args)):
            self._refuse(f"{func} on the device")
        if func is aten._to_copy.default and _on_device(args[0]):
            target = kwargs.get("device")
            if target is not None and torch.device(target).type == "cpu":
                return _placeholder(args[0].shape, kwargs.get("dtype") or args[0].dtype)
        if func is aten.copy_.default and not _on_device(args[0]) and _on_device(args[1]):
            return args[0].copy_(_placeholder(args[0].shape, args[0].dtype))
        if func is aten._local_scalar_dense.default and _on_device(args[0]):
            return torch.zeros((), dtype=args[0].dtype).item()
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if _on_device(t) and t.dtype == torch.float64:
                self._refuse(f"{func} made a float64 tensor on the device")
        return out
