"""File helpers: all-or-nothing writes (a temporary file renamed into place) and an exclusive lock file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed onto ``path`` if the block succeeds, deleted
    if it fails, so readers see the old file or the whole new one. ``durable``: fsync the file and the directory
    (a crash cannot leave an empty file); off for scratch files (``/dev/shm``, claims rewritten every few seconds).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 whatever the umask: give the file the mode open() would, so co-authors on a shared
        # project directory can read the run (a umask of 077 still keeps it private)
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` all or nothing (see :func:`atomic_path`)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def try_lock(path: Path) -> IO[str] | None:
    """An exclusive, non-blocking ``flock`` on the file ``path`` (created empty, never written), held until the
    returned file is closed; None when another open file holds it. The kernel drops the lock when its holder dies,
    even by SIGKILL, so a crash never blocks the next holder."""
    import fcntl

    handle = open(path, "a")  # noqa: SIM115 (the caller holds it open)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive, blocking ``flock`` on the file ``path`` (created empty) for the ``with`` block: one
    read-modify-write at a time among processes and threads (each ``open`` is its own lock holder)."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
