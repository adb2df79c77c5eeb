"""Moving masks between server and clients: bit-packed, content-addressed, downloaded once per node and mask.

Each mask is named by the hash of its packed bits (``mask-id``); the bits go only to nodes that lack that mask. A
client keeps masks in memory and on disk (``$FEDTALOS_CACHE``), and answers ``mask-missing`` when it lacks one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fedtalos.editing.sparse import pack_mask, unpack_mask
from fedtalos.fsutil import atomic_write_bytes

MASK_MISSING = "mask-missing"
Shapes = Mapping[str, tuple[int, ...]]


class MaskMissing(RuntimeError):
    """The message names a mask this client does not have; the server will resend it with the bits."""

    def __init__(self, mask_id: str) -> None:
        super().__init__(f"{MASK_MISSING}:{mask_id}")


def mask_id(bits: np.ndarray) -> str:
    """A short content hash of packed mask bits."""
    return hashlib.sha256(np.ascontiguousarray(bits, dtype=np.uint8).tobytes()).hexdigest()[:20]


def pack(mask: Mapping[str, torch.Tensor], order: list[str]) -> tuple[np.ndarray, str]:
    """Bits (in ``order``) and their id."""
    bits = pack_mask({k: mask[k] for k in order})
    return bits, mask_id(bits)


def _cache_dir() -> Path:
    return Path(os.environ.get("FEDTALOS_CACHE") or Path.home() / ".cache" / "fedtalos") / "masks"


class MaskCache:
    """Client-side masks by id: the last few in memory, all of them on disk (best effort)."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.memory: OrderedDict[str, np.ndarray] = OrderedDict()
        # The last mask unpacked on a device: (id, device) → name → bool tensor; unpacking ViT-S/16's 21.6 M
        # bits and moving them tensor by tensor costs ~34 ms, every round of a sparse phase otherwise.
        self._unpacked: tuple[tuple[str, str], dict[str, torch.Tensor]] | None = None

    def put(self, bits: np.ndarray, expected_id: str) -> None:
        """Store bits received from the server, after checking they are the mask the message names."""
        if mask_id(bits) != expected_id:
            raise ValueError(f"received mask bits do not match mask-id {expected_id}")
        self._remember(expected_id, bits)
        with contextlib.suppress(OSError):  # a read-only disk only costs a re-download in another process
            atomic_write_bytes(_cache_dir() / f"{expected_id}.bits", np.ascontiguousarray(bits, np.uint8).tobytes())

    def get(self, wanted_id: str, shapes: Shapes) -> dict[str, torch.Tensor]:
        """The mask ``wanted_id`` unpacked for ``shapes``; raises :class:`MaskMissing` if it is not here."""
        bits = self.memory.get(wanted_id)
        if bits is None:
            path = _cache_dir() / f"{wanted_id}.bits"
            try:
                bits = np.frombuffer(path.read_bytes(), dtype=np.uint8)
            except OSError:
                raise MaskMissing(wanted_id) from None
            if mask_id(bits) != wanted_id:  # a damaged cache file: ask for the mask again
                raise MaskMissing(wanted_id)
            self._remember(wanted_id, bits)
        self.memory.move_to_end(wanted_id)
        return unpack_mask(bits, shapes)

    def get_on(self, wanted_id: str, shapes: Shapes, device: torch.device) -> dict[str, torch.Tensor]:
        """:meth:`get`, on ``device``, unpacked and moved once per mask id (the same tensors every round: read
        them, never write them)."""
        key = (wanted_id, str(device))
        if self._unpacked is not None and self._unpacked[0] == key and wanted_id in self.memory:
            cached = self._unpacked[1]
            if {n: tuple(t.shape) for n, t in cached.items()} == dict(shapes):
                self.memory.move_to_end(wanted_id)
                return cached
        unpacked = {n: m.to(device) for n, m in self.get(wanted_id, shapes).items()}
        self._unpacked = (key, unpacked)
        return unpacked

    def _remember(self, key: str, bits: np.ndarray) -> None:
        self.memory[key] = bits
        while len(self.memory) > self.capacity:
            self.memory.popitem(last=False)
