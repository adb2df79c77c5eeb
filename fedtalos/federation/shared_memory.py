"""Shared-memory slots: files each process maps once and that are overwritten in place, never read torn or stale.

A fresh file per upload costs ~21,000 new tmpfs pages (allocated, zeroed, faulted) per client and round for
ViT-S/16, and reading it back into new tensors as many again. A slot is created once, grows to the largest payload
it carries and stays mapped in every process that uses it: a writer copies its tensors straight into the mapping
(from the GPU on CUDA), a reader takes views of it. One copy per side, no page allocated after the first round.

Layout: a 64-byte header (magic, sequence, partition id, index bytes, data offset), a JSON index
(name → dtype, shape, offset, bytes) and the tensors, each on a 64-byte boundary. A writer holds an exclusive
``flock``, writes the sequence 0 first and the payload's sequence last; a reader holds a shared ``flock`` while it
uses the views and takes the slot only if it carries the sequence it was told (as NCCL's shared-memory transport
checks a flag written after the data). So a reader never sees a half-written payload (the lock), a writer killed
mid-write leaves sequence 0 (the kernel drops its lock), and an older payload, or another server's, never passes
for the current one (its sequence differs: sequences are random 63-bit numbers, one per payload).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

MAGIC = b"FTSLOT02"
HEADER = struct.Struct("<8sQqQQ")  # magic, sequence, partition id (-1: the server's), index bytes, data offset
HEADER_BYTES = 64
ALIGN = 64  # every tensor starts on a cache line (and on a multiple of its element size)


class SlotError(ValueError):
    """A slot does not hold the payload asked for: not written yet, being rewritten, stale, or garbled."""


class SlotBusy(RuntimeError):
    """A writer that must not wait found the slot held: its reader is still using the payload there."""


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


def layout(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, list], int]:
    """(index, data bytes) of a payload: name → [dtype, shape, offset from the data start, bytes]."""
    index, offset, end = {}, 0, 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        index[name] = [str(tensor.dtype), list(tensor.shape), offset, nbytes]
        offset, end = offset + _aligned(nbytes), offset + nbytes
    return index, end


def _views(buffer: torch.Tensor, index: Mapping[str, list]) -> dict[str, torch.Tensor]:
    """The tensors of ``index`` as views of ``buffer`` (uint8, the data region)."""
    out = {}
    for name, (dtype, shape, offset, nbytes) in index.items():
        part = buffer[int(offset) : int(offset) + int(nbytes)]
        out[name] = part.view(_dtype(str(dtype))).view([int(s) for s in shape])
    return out


def _page_lock(data: torch.Tensor) -> bool:
    """Register ``data`` (host memory) with CUDA as page-locked, so copies to and from a GPU are one DMA; False if
    CUDA refuses (the copies are then pageable ones, as without it)."""
    portable = 1  # cudaHostRegisterPortable, as torch's own pin_memory utility registers
    if int(torch.cuda.cudart().cudaHostRegister(data.data_ptr(), data.numel(), portable)) == 0:
        return True
    with contextlib.suppress(RuntimeError):  # the refusal stays CUDA's last error, which the next launch would raise
        torch.zeros(1, device="cuda")
    return False


def _page_unlock(data: torch.Tensor) -> None:
    torch.cuda.cudart().cudaHostUnregister(data.data_ptr())


def _bytes(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().reshape(-1).view(torch.uint8).numpy()


def _copy_into(views: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, tensor in tensors.items():
            target = views[name]
            if tensor.device.type == "cpu" and tensor.is_contiguous() and tensor.numel():
                # a memcpy on this thread: torch's multi-threaded copy_ crawls (20×) while other threads hold the
                # cores (a checkpoint being written, clients training)
                np.copyto(_bytes(target), _bytes(tensor))
            else:
                target.copy_(tensor.detach())  # from the device itself on CUDA: no staging copy


class Slot:
    """One slot file, opened and mapped by this process for as long as it uses it.

    Args:
        path: the file (in ``/dev/shm``, or a directory the transport chose).
        create: create it if missing (writers); readers open what exists (else ``OSError``).
        pin: page-lock the mapping for CUDA (``cudaHostRegister``): a process whose tensors live on a GPU then
            copies them to and from the slot in one DMA, without a staging copy.
    """

    def __init__(self, path: Path, create: bool = False, pin: bool = False) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        self._map: mmap.mmap | None = None
        self._data: torch.Tensor | None = None  # the whole mapping, as uint8
        self.pin = pin
        self.pinned = False  # the current mapping is registered with CUDA
        self.held = False

    def _mapping(self, size: int) -> mmap.mmap:
        """The file mapped to at least ``size`` bytes; a larger one is mapped anew (views of the old mapping keep it
        alive until they go)."""
        if self._map is None or len(self._map) < size:
            self._unpin()
            self._map = mmap.mmap(self._fd, size)
            self._data = torch.frombuffer(self._map, dtype=torch.uint8)
            self.pinned = self.pin and _page_lock(self._data)
        return self._map

    def _unpin(self) -> None:
        if self.pinned and self._data is not None:
            _page_unlock(self._data)  # before the mapping can go: CUDA must not keep an address that is unmapped
        self.pinned = False

    def _lock(self, exclusive: bool, wait: bool) -> None:
        import fcntl  # POSIX only: imported when a slot is used (a client on Windows uses messages)

        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(self._fd, mode)
        except BlockingIOError:
            raise SlotBusy(f"{self.path.name} is held by its reader") from None

    def _unlock(self) -> None:
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def hold(self) -> None:
        """Take the shared lock: no writer changes the slot until :meth:`release`."""
        self._lock(exclusive=False, wait=True)
        self.held = True

    def release(self) -> None:
        if self.held:
            self._unlock()
            self.held = False

    @contextlib.contextmanager
    def holding(self) -> Iterator[Slot]:
        """:meth:`hold` for the block."""
        self.hold()
        try:
            yield self
        finally:
            self.release()

    def write(self, tensors: Mapping[str, torch.Tensor], sequence: int, pid: int = -1, *, wait: bool = True) -> int:
        """Overwrite the slot with ``tensors`` (any device) under ``sequence``; returns the payload's bytes.

        Raises:
            SlotBusy: ``wait`` is False and a reader holds the slot.
        """
        index, data_bytes = layout(tensors)
        encoded = json.dumps(index).encode()
        data_start = _aligned(HEADER_BYTES + len(encoded))
        size = data_start + data_bytes
        self._lock(exclusive=True, wait=wait)
        try:
            if os.fstat(self._fd).st_size < size:  # grows to the largest payload, never shrinks
                os.ftruncate(self._fd, size)
            mapped = self._mapping(size)
            HEADER.pack_into(mapped, 0, MAGIC, 0, pid, len(encoded), data_start)  # readers: "being written"
            mapped[HEADER_BYTES : HEADER_BYTES + len(encoded)] = encoded
            assert self._data is not None
            _copy_into(_views(self._data[data_start:size], index), tensors)
            HEADER.pack_into(mapped, 0, MAGIC, sequence, pid, len(encoded), data_start)  # last: the payload is whole
        finally:
            self._unlock()
            self.held = False
        return size

    def read(self, sequence: int, pid: int = -1) -> tuple[dict[str, torch.Tensor], int]:
        """(views, payload bytes) of the slot if it holds payload ``sequence`` from ``pid``.

        The views are valid while this process :meth:`hold`\\ s the slot; copy what must outlive that.

        Raises:
            SlotError: it holds something else (see :class:`SlotError`).
        """
        size = os.fstat(self._fd).st_size
        if size < HEADER_BYTES:
            raise SlotError("empty slot")
        mapped = self._mapping(size)
        magic, found, writer, index_bytes, data_start = HEADER.unpack_from(mapped, 0)
        if magic != MAGIC:
            raise SlotError("not a slot file")
        if found != sequence:
            raise SlotError("incomplete (its writer died)" if found == 0 else "it holds another payload")
        if writer != pid:
            raise SlotError(f"written for partition {writer}, not {pid}")
        if data_start < HEADER_BYTES + index_bytes or data_start > size:
            raise SlotError("index beyond the end of the slot")
        try:
            index = json.loads(bytes(mapped[HEADER_BYTES : HEADER_BYTES + index_bytes]))
            ends = [int(e[2]) + int(e[3]) for e in index.values()]
            if any(int(e[2]) < 0 or int(e[3]) < 0 or int(e[2]) % ALIGN for e in index.values()):
                raise SlotError("negative or unaligned offset or size in the index")
            data_bytes = max(ends, default=0)
            if data_start + data_bytes > size:
                raise SlotError("tensors beyond the end of the slot")
            assert self._data is not None
            views = _views(self._data[data_start : data_start + data_bytes], index)
        except SlotError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as e:  # untrusted index
            raise SlotError(f"garbled index: {type(e).__name__}: {e}") from None
        return views, data_start + data_bytes

    def close(self) -> None:
        """Release and close the file; views already handed out keep the mapping alive."""
        self.release()
        self._unpin()
        self._map = self._data = None
        with contextlib.suppress(OSError):
            os.close(self._fd)
