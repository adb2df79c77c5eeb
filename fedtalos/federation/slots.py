"""Shared-memory slots: files that live for a whole run and are overwritten in place, never torn, never stale.

A fresh file per upload costs ~21,000 new tmpfs pages (allocated, zeroed, faulted) per client and round for
ViT-S/16. A slot is created once, grows to the largest payload it carries and is rewritten with ``pwrite``; readers
``pread`` straight into their own buffers, so neither side maps, faults or allocates pages after the first round.

Layout: a 64-byte header (magic, sequence, partition id, index length), a JSON index (name → dtype, shape,
offset, bytes) and the tensors' bytes, each at an offset its element size divides. A writer holds an exclusive
``flock`` and writes the sequence 0 first and the payload's sequence last; a reader holds a shared ``flock`` and
takes the slot only if it carries the sequence it was told (as NCCL's shared-memory transport checks a flag written
after the data). So a reader never sees a half-written payload (the lock), a writer killed mid-write leaves
sequence 0 (the kernel drops its lock), and an older payload, or another server's, never passes for the current
one (its sequence differs: sequences are random 63-bit numbers, one per payload).
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

MAGIC = b"FTSLOT01"
HEADER = struct.Struct("<8sQqQ")  # magic, sequence, partition id (-1: the server's), index bytes
HEADER_BYTES = 64
ALIGN = 8  # the largest element size: every tensor's offset is a multiple of its own


class SlotError(ValueError):
    """A slot does not hold the payload asked for: not written yet, being rewritten, stale, or garbled."""


def new_sequence() -> int:
    """A random non-zero 63-bit sequence number (0 marks a slot being written)."""
    return (int.from_bytes(os.urandom(8), "little") >> 1) or 1


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise SlotError(f"unknown dtype {name!r}")
    return dtype


def _raw(tensor: torch.Tensor) -> memoryview:
    """The bytes of a CPU tensor, without a copy when it is contiguous (any dtype, bfloat16 included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def write(path: Path, tensors: Mapping[str, torch.Tensor], sequence: int, pid: int = -1) -> int:
    """Overwrite the slot at ``path`` (created if missing) with ``tensors``; returns the payload's bytes."""
    views, index, offset = [], {}, 0
    for name, tensor in tensors.items():
        raw = _raw(tensor)
        index[name] = {"dtype": str(tensor.dtype), "shape": list(tensor.shape), "offset": offset, "bytes": raw.nbytes}
        views.append(raw)
        if raw.nbytes != _aligned(raw.nbytes):
            views.append(bytes(_aligned(raw.nbytes) - raw.nbytes))
        offset += _aligned(raw.nbytes)
    encoded = json.dumps(index).encode()
    data_start = _aligned(HEADER_BYTES + len(encoded))
    size = data_start + offset
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, HEADER.pack(MAGIC, 0, pid, len(encoded)), 0)  # readers now see "being written"
        if os.fstat(fd).st_size < size:  # grows to the largest payload, never shrinks
            os.ftruncate(fd, size)
        os.pwrite(fd, encoded, HEADER_BYTES)
        _write_all(fd, views, data_start)
        os.pwrite(fd, HEADER.pack(MAGIC, sequence, pid, len(encoded)), 0)  # last: the payload is whole
    finally:
        os.close(fd)  # drops the lock
    return size


def _write_all(fd: int, views: list, offset: int) -> None:
    for start in range(0, len(views), 512):  # below IOV_MAX
        batch = views[start : start + 512]
        done, want = os.pwritev(fd, batch, offset), sum(memoryview(v).nbytes for v in batch)
        if done != want:  # tmpfs writes whole buffers unless out of space
            raise OSError(f"short write to a shared-memory slot ({done} of {want} bytes): /dev/shm is full")
        offset += done


class Reader:
    """Reads slots. ``reuse``: into one buffer of this process, grown on demand (the returned tensors are views of
    it, valid until the next :meth:`read`; not to be written), which it keeps: the global weights of a payload it
    already holds are not read again (a Ray actor serving several clients of a round copies them once from shared
    memory); else into new tensors the caller keeps."""

    def __init__(self, reuse: bool = True) -> None:
        self.reuse = reuse
        self._buffer = torch.empty(0, dtype=torch.uint8)
        self._holds: tuple[str, int] | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        self._bytes = 0

    def read(self, path: Path, sequence: int, pid: int = -1) -> tuple[dict[str, torch.Tensor], int]:
        """(tensors, payload bytes) of the slot at ``path`` if it holds payload ``sequence`` from ``pid``.

        Raises:
            OSError: the slot cannot be opened (another machine: the path does not exist here).
            SlotError: it holds something else (see :class:`SlotError`).
        """
        key = (str(path), sequence)
        if self._holds == key and pid == -1:  # this process holds the payload (a second client of the round)
            return self._tensors, self._bytes
        self._holds = None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            head = os.pread(fd, HEADER_BYTES, 0)
            if len(head) < HEADER.size:
                raise SlotError("empty slot")
            magic, found, writer, index_bytes = HEADER.unpack_from(head)
            if magic != MAGIC:
                raise SlotError("not a slot file")
            if found != sequence:
                raise SlotError("incomplete (its writer died)" if found == 0 else "it holds another payload")
            if writer != pid:
                raise SlotError(f"written for partition {writer}, not {pid}")
            size = os.fstat(fd).st_size
            data_start = _aligned(HEADER_BYTES + index_bytes)
            if data_start > size:
                raise SlotError("index beyond the end of the slot")
            index = json.loads(os.pread(fd, index_bytes, HEADER_BYTES))
            if any(int(e["offset"]) < 0 or int(e["bytes"]) < 0 for e in index.values()):
                raise SlotError("negative offset or size in the index")
            data_bytes = max((_aligned(int(e["offset"]) + int(e["bytes"])) for e in index.values()), default=0)
            if data_start + data_bytes > size:
                raise SlotError("tensors beyond the end of the slot")
            if not self.reuse or self._buffer.numel() < data_bytes:
                self._buffer = torch.empty(data_bytes, dtype=torch.uint8)
            target = memoryview(self._buffer.numpy())[:data_bytes]
            got = os.preadv(fd, [target], data_start) if data_bytes else 0
            if got != data_bytes:
                raise SlotError(f"short read ({got} of {data_bytes} bytes)")
            tensors = {}
            for name, entry in index.items():
                offset, nbytes = int(entry["offset"]), int(entry["bytes"])
                part = self._buffer[offset : offset + nbytes]
                tensors[name] = part.view(_dtype(str(entry["dtype"]))).view([int(s) for s in entry["shape"]])
        except SlotError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as e:  # untrusted index
            raise SlotError(f"garbled index: {type(e).__name__}: {e}") from None
        finally:
            os.close(fd)
        self._tensors, self._bytes, self._holds = tensors, data_start + data_bytes, key if self.reuse else None
        return tensors, self._bytes
