"""A node's shard of the train split in one file beside the data, memory-mapped in milliseconds by later processes.

On Flower's Deployment Engine every message starts a fresh ClientApp process; without this file each one would
read the whole CIFAR-100 pickle, split it and partition it to keep a few hundred images. The first process writes
its shard (all or nothing, :func:`fedtalos.fsutil.atomic_path`); the next ones map it.

A shard file is a JSON header followed by the images (uint8, N×3×32×32) and the labels (int64, N). It is named by
the partition's identity (the split and partition settings, the partition id) and used only when its header
matches what this process would compute from: the same identity, the same source files (size and modification
time of CIFAR's ``train`` and ``meta``), the same code that parses, splits and partitions (a hash of those modules'
source), a digest of its own bytes that still holds, and, when the run verifies the data set, a source that was
verified when the shard was cut. Anything else (a stale, truncated or corrupted file) reads as a miss: the caller
cuts the shard again from the data set and rewrites the file (tests/task/test_shard_cache.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedtalos.fsutil import atomic_path

SHARD_FOLDER = ".fedtalos-shards"
_MAGIC = b"FTSHARD1"
_ALIGN = 64  # the arrays start on a 64-byte boundary
_IMAGE_SHAPE = (3, 32, 32)
# The modules whose code decides a shard's bytes: CIFAR's parser, the split and the partitions, their seeds.
_CODE_MODULES = ("fedtalos.task.cifar", "fedtalos.task.partition", "fedtalos.seeds")


@functools.cache
def code_digest() -> str:
    """A hash of the source of the modules that parse, split and partition the data (a change there changes it)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in _CODE_MODULES:
        __import__(name)
        digest.update(Path(sys.modules[name].__file__).read_bytes())
    return digest.hexdigest()


def source_identity(folder: Path) -> dict[str, list[int]]:
    """(size, modification time in ns) of the data set's files that a shard is cut from."""
    identity = {}
    for name in ("train", "meta"):
        stat = (folder / name).stat()
        identity[name] = [stat.st_size, stat.st_mtime_ns]
    return identity


def shard_path(folder: Path, identity: Mapping[str, Any], pid: int) -> Path:
    """The file of partition ``pid`` under the partition settings ``identity``."""
    key = hashlib.blake2b(json.dumps(dict(identity), sort_keys=True).encode(), digest_size=8).hexdigest()
    return Path(folder) / SHARD_FOLDER / f"{key}-{pid}.shard"


def _content_digest(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    digest.update(memoryview(np.ascontiguousarray(labels)).cast("B"))
    return digest.hexdigest()


def _header(identity: Mapping[str, Any], pid: int, folder: Path, verified: bool) -> dict[str, Any]:
    return {
        "identity": dict(identity),
        "pid": pid,
        "source": source_identity(folder),
        "code": code_digest(),
        "verified": verified,
    }


def write_shard(
    folder: Path,
    identity: Mapping[str, Any],
    pid: int,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    verified: bool,
) -> Path:
    """Write partition ``pid``'s ``images`` (uint8 N×3×32×32) and ``labels`` (int64 N) all or nothing."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if images.shape[1:] != _IMAGE_SHAPE or len(images) != len(labels):
        raise ValueError(f"a shard holds N×3×32×32 images and N labels, got {images.shape} and {labels.shape}")
    header = _header(identity, pid, folder, verified)
    header.update(count=len(labels), num_classes=num_classes, digest=_content_digest(images, labels))
    text = json.dumps(header, sort_keys=True).encode()
    start = -(-(len(_MAGIC) + 8 + len(text)) // _ALIGN) * _ALIGN
    path = shard_path(folder, identity, pid)
    with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as f:
        f.write(_MAGIC + len(text).to_bytes(8, "little") + text)
        f.write(b"\0" * (start - f.tell()))
        f.write(memoryview(images).cast("B"))
        f.write(memoryview(labels).cast("B"))
    return path


def read_shard(
    folder: Path, identity: Mapping[str, Any], pid: int, *, verified: bool
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(images, labels, number of classes) of partition ``pid`` mapped from its file (copy-on-write: writes stay
    in this process), or None unless the file matches this process's identity, source and code exactly and its
    bytes hold their digest. ``verified``: the run requires a data set that was checked against its MD5 sums."""
    path = shard_path(folder, identity, pid)
    try:
        with open(path, "rb") as f:
            prefix = f.read(len(_MAGIC) + 8)
            if len(prefix) < len(_MAGIC) + 8 or prefix[: len(_MAGIC)] != _MAGIC:
                return None
            length = int.from_bytes(prefix[len(_MAGIC) :], "little")
            header = json.loads(f.read(length))
        expected = _header(identity, pid, folder, header.get("verified") is True)
        if any(header.get(k) != v for k, v in expected.items()) or (verified and not header["verified"]):
            return None
        count, start = int(header["count"]), -(-(len(_MAGIC) + 8 + length) // _ALIGN) * _ALIGN
        image_bytes = count * int(np.prod(_IMAGE_SHAPE))
        if path.stat().st_size != start + image_bytes + 8 * count:
            return None
        if not count:  # numpy cannot map an empty range
            images, labels = np.empty((0, *_IMAGE_SHAPE), np.uint8), np.empty(0, np.int64)
        else:
            images = np.memmap(path, np.uint8, "c", start, (count, *_IMAGE_SHAPE))
            labels = np.memmap(path, np.int64, "c", start + image_bytes, (count,))
        if _content_digest(images, labels) != header["digest"]:
            return None
        return images, labels, int(header["num_classes"])
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable or malformed: a miss, never an error
        return None
