"""A mask's compact forms: 1 bit per entry, and the trainable entries' values as one flat vector.

Bits: the mask's tensors flattened row-major and concatenated in key order, then ``np.packbits`` (the shapes travel
separately). Flat values: per mask key in order, the row-major entries where the mask is True. Both orders are the
mask's key order, so a sender and a receiver that agree on the keys agree on every position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

Shapes = Mapping[str, Sequence[int]]


def pack_mask(mask: Mapping[str, Tensor]) -> np.ndarray:
    """1 bit per entry: ``np.packbits`` over the tensors flattened (row-major) and concatenated in key order.

    Returns uint8 of length ⌈N / 8⌉ (2.7 MB for the 21.7M scored entries of ViT-S/16); the shapes travel
    separately (see :func:`unpack_mask`).
    """
    if not mask:
        return np.zeros(0, dtype=np.uint8)
    return np.packbits(np.concatenate([m.detach().cpu().numpy().astype(bool).ravel() for m in mask.values()]))


def unpack_mask(bits: np.ndarray, shapes: Shapes) -> dict[str, Tensor]:
    """Inverse of :func:`pack_mask`: name → CPU bool tensor, for ``shapes`` in the order used when packing."""
    total = sum(math.prod(s) for s in shapes.values())
    bits = np.asarray(bits)
    if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != (total + 7) // 8:
        raise ValueError(f"expected {(total + 7) // 8} uint8 bytes for {total} entries, got {bits.dtype} {bits.shape}")
    flat = np.unpackbits(bits)
    if flat[total:].any():
        raise ValueError("padding bits are set: the bits do not belong to these shapes")
    return split_flat(torch.from_numpy(flat[:total].astype(bool)), shapes)


def split_flat(flat: Tensor, shapes: Shapes) -> dict[str, Tensor]:
    """A flat tensor cut into ``shapes`` in their order: name → tensor of that shape."""
    sizes = [math.prod(s) for s in shapes.values()]
    # Clones: independent tensors (no shared storage, which e.g. safetensors refuses to save).
    return {n: part.reshape(tuple(s)).clone() for (n, s), part in zip(shapes.items(), flat.split(sizes), strict=True)}


def gather_trainable(tensors: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> Tensor:
    """The trainable entries' values, 1-D: per mask key in order, the row-major entries where the mask is True.

    Only tensors named in the mask are read. Tensors absent from the mask count as dense: they are not in the
    result and must be carried separately (whole), e.g. alongside it in the same message.
    """
    parts = [tensors[n].detach()[m.to(tensors[n].device)] for n, m in mask.items()]
    return torch.cat(parts) if parts else torch.zeros(0)


def scatter_trainable(flat: Tensor, mask: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`gather_trainable`: ``base`` with the trainable entries of the masked tensors replaced.

    Masked tensors are new tensors (base's frozen entries, ``flat``'s values at the trainable ones, cast to base's
    dtype and device). Tensors of ``base`` absent from the mask are returned as they are (the same objects):
    dense tensors are not in ``flat`` and have to be set from what was carried separately.
    """
    out = dict(base)
    offset = 0
    for n, m in mask.items():
        t = base[n].detach().clone()
        m = m.to(t.device)
        count = int(m.sum())
        if offset + count > flat.numel():
            raise ValueError(f"flat has {flat.numel()} values, fewer than the mask's trainable entries")
        t[m] = flat[offset : offset + count].to(dtype=t.dtype, device=t.device)
        out[n] = t
        offset += count
    if offset != flat.numel():
        raise ValueError(f"flat has {flat.numel()} values for {offset} trainable entries")
    return out
