"""Bit-packing and the trainable entries as one vector: round trips, padding, dense tensors carried aside."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtalos.editing.sparse import gather_trainable, pack_mask, scatter_trainable, unpack_mask
from tests.support.tensors import bools, count_true, masks_equal


def _odd_mask() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "w": torch.rand(5, 3, generator=g) < 0.3,
        "scalar": torch.tensor(True),
        "b": torch.rand(2, 2, 2, generator=g) < 0.6,
    }


def test_pack_unpack_round_trip():
    mask = _odd_mask()  # 15 + 1 + 8 = 24 entries
    bits = pack_mask(mask)
    assert bits.dtype == np.uint8 and bits.shape == (3,)
    shapes = {n: tuple(m.shape) for n, m in mask.items()}
    assert masks_equal(unpack_mask(bits, shapes), mask)
    mask["extra"] = bools(1, 0, 1)  # 27 entries: the last byte is padded
    shapes["extra"] = (3,)
    assert masks_equal(unpack_mask(pack_mask(mask), shapes), mask)
    with pytest.raises(ValueError):
        unpack_mask(bits, shapes)  # too few bytes for these shapes


def test_gather_scatter_round_trip():
    mask = _odd_mask()
    g = torch.Generator().manual_seed(6)
    old = {n: torch.randn(m.shape, generator=g) for n, m in mask.items()}
    old["dense"] = torch.randn(4, generator=g)  # not in the mask: carried separately
    new = {n: torch.randn(t.shape, generator=g) for n, t in old.items()}
    flat = gather_trainable(new, mask)
    assert flat.shape == (count_true(mask),)
    merged = scatter_trainable(flat, mask, old)
    for n, m in mask.items():
        assert torch.equal(merged[n], torch.where(m, new[n], old[n]))
    assert merged["dense"] is old["dense"]
    assert torch.equal(gather_trainable(merged, mask), flat)
    with pytest.raises(ValueError):
        scatter_trainable(flat[:-1], mask, old)
