"""Weights in and out of a model on an accelerator through one reused pinned buffer, in one copy each way.

``load_state_dict`` on CUDA makes 152 synchronous copies from pageable memory for ViT-S/16 (86.5 MB), every round,
and as many back. :class:`WeightStaging` moves them with one copy and scatters them on the device, bit for bit as
``load_state_dict`` (``tests/task/test_staging.py``): weights that lie in one host region (a shared-memory slot,
page-locked) go in one DMA straight from it; others are packed into one pinned buffer first. It keeps the last
global weights it moved on the device, so a second client of the same payload in this process copies them on the
device. On the CPU it copies tensor by tensor, as ``load_state_dict`` does (which it calls where a module has load
hooks, or to explain what does not fit).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class WeightStaging:
    """Reusable host/device buffers for one process (one per dtype, grown on demand).

    Args:
        staged: use the buffers even on the CPU (tests of the staged path on a machine without a GPU); the default
            stages only for CUDA models.
    """

    def __init__(self, staged: bool | None = None) -> None:
        self.staged = staged
        self._host: dict[torch.dtype, torch.Tensor] = {}  # what load packs
        self._host_out: dict[torch.dtype, torch.Tensor] = {}  # what read returns views of (a reply may hold them)
        self._device: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self._global: dict[str, torch.Tensor] = {}  # the last payload's weights on the device (views of one buffer)
        self._global_buffer: torch.Tensor | None = None
        self._global_key: object = None  # which payload they are

    def _uses_buffers(self, device: torch.device) -> bool:
        return self.staged if self.staged is not None else device.type == "cuda"

    def _buffer(self, store: dict, key: object, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = store.get(key)
        if buf is None or buf.numel() < numel:
            pin = device.type == "cpu" and torch.cuda.is_available()
            buf = torch.empty(numel, dtype=dtype, device=device, pin_memory=pin)
            store[key] = buf
        return buf[:numel]

    def load(self, model: nn.Module, weights: Mapping[str, torch.Tensor], key: object = None) -> None:
        """Copy ``weights`` into ``model`` (strict: the same keys and shapes as its state dict).

        ``key`` names the payload the weights come from (``transport.Delivered.key``; None: unnamed): a payload
        this object moved last is copied from its device copy, ``weights`` unread.
        """
        state = model.state_dict()
        device = next(iter(state.values())).device if state else torch.device("cpu")
        if not _copies_plainly(model, state, weights):
            model.load_state_dict(weights, strict=True)  # its hooks, or its own explanation of what does not fit
            return
        if not self._uses_buffers(device):
            with torch.no_grad():  # load_state_dict's copies without its walk over the modules (-20 % for ViT-S/16)
                for name, tensor in state.items():
                    tensor.copy_(weights[name])
            return
        with torch.no_grad():
            if key is None or key != self._global_key:
                self._global_key = None
                self._global = self._to_device(weights, device)
                self._global_key = key
            for name, tensor in state.items():
                tensor.copy_(self._global[name].view_as(tensor))

    def _to_device(self, weights: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """``weights`` on ``device`` as views of one buffer, moved in one copy: straight from their host region if
        they lie in one (a slot), else packed into the pinned buffer first."""
        region = _host_region(weights)
        if region is None:
            return self._packed_to_device(weights, device)
        start, length = region
        buffer = self._global_buffer
        if buffer is None or buffer.device != device or buffer.numel() < length:
            buffer = self._global_buffer = torch.empty(length, dtype=torch.uint8, device=device)
        first = next(iter(weights.values()))
        host = torch.empty(0, dtype=torch.uint8).set_(first.untyped_storage(), start, (length,))
        buffer[:length].copy_(host)  # one DMA from page-locked memory; synchronous: the slot is released next
        out = {}
        for name, tensor in weights.items():
            offset = tensor.storage_offset() * tensor.element_size() - start
            part = buffer[offset : offset + tensor.numel() * tensor.element_size()]
            out[name] = part.view(tensor.dtype).view(tensor.shape)
        return out

    def _packed_to_device(self, weights: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for dtype, names in _by_dtype(weights).items():
            sizes = [weights[n].numel() for n in names]
            host = self._buffer(self._host, dtype, sum(sizes), dtype, torch.device("cpu"))
            torch.cat([weights[n].detach().reshape(-1) for n in names], out=host)
            on_device = self._buffer(self._device, ("global", dtype, device), host.numel(), dtype, device)
            on_device.copy_(host, non_blocking=True)
            for name, part in zip(names, on_device.split(sizes), strict=True):
                out[name] = part.view_as(weights[name])
        return out

    def read(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CPU copies of ``tensors`` (e.g. an upload). Staged: views of the host buffer, valid until the next call
        of :meth:`read` (the transport writes them out, or the reply is serialized, before the next message)."""
        first = next(iter(tensors.values()), None)
        if first is None or not self._uses_buffers(first.device):
            return {k: v.detach() for k, v in tensors.items()}
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for dtype, names in _by_dtype(tensors).items():
                sizes = [tensors[n].numel() for n in names]
                device = tensors[names[0]].device
                on_device = self._buffer(self._device, (dtype, device), sum(sizes), dtype, device)
                torch.cat([tensors[n].detach().reshape(-1) for n in names], out=on_device)
                host = self._buffer(self._host_out, dtype, on_device.numel(), dtype, torch.device("cpu"))
                host.copy_(on_device)  # synchronous: the caller reads it next
                for name, part in zip(names, host.split(sizes), strict=True):
                    out[name] = part.view_as(tensors[name])
        return {k: out[k] for k in tensors}


def _copies_plainly(model: nn.Module, state: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether copying ``weights`` tensor by tensor into ``state`` is what ``load_state_dict`` would do: the same keys
    and shapes (a state dict of this very model: modules' own ``_load_from_state_dict`` only convert older formats),
    and no module with load hooks."""
    if set(weights) != set(state) or any(tuple(weights[k].shape) != tuple(v.shape) for k, v in state.items()):
        return False
    return not any(m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks for m in model.modules())


def _host_region(tensors: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """(start, length) in bytes of the one host storage all ``tensors`` are contiguous views of, else None."""
    storages = {t.untyped_storage().data_ptr() for t in tensors.values()}
    if len(storages) != 1 or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors.values()):
        return None
    starts = [t.storage_offset() * t.element_size() for t in tensors.values()]
    ends = [s + t.numel() * t.element_size() for s, t in zip(starts, tensors.values(), strict=True)]
    return min(starts), max(ends) - min(starts)


def _by_dtype(tensors: Mapping[str, torch.Tensor]) -> dict[torch.dtype, list[str]]:
    groups: dict[torch.dtype, list[str]] = {}
    for name, tensor in tensors.items():
        groups.setdefault(tensor.dtype, []).append(name)
    return groups
