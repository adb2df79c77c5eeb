"""File helpers: an atomic write leaves the old file or the whole new one, never a temporary; one lock holder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fedtalos.fsutil import atomic_path, atomic_write_bytes, current_umask, try_lock


@pytest.mark.parametrize("durable", [True, False])
def test_an_atomic_write_replaces_the_file_whole(tmp_path: Path, durable: bool):
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"old", durable=durable)
    atomic_write_bytes(path, b"new content", durable=durable)
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_one_lock_holder_at_a_time_in_any_process_until_it_closes_the_lock(tmp_path: Path):
    lock = tmp_path / ".lock"
    held = try_lock(lock)
    assert held is not None and try_lock(lock) is None, "a second open of the lock file in this process is refused"
    other = [sys.executable, "-c", f"from fedtalos.fsutil import try_lock; print(try_lock({str(lock)!r}) is None)"]
    assert subprocess.run(other, capture_output=True, text=True, check=True).stdout.strip() == "True"
    held.close()
    again = try_lock(lock)
    assert again is not None and lock.read_bytes() == b"", "released on close; the file is never written"
    again.close()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_an_atomic_write_gives_the_file_the_mode_the_umask_allows(tmp_path: Path, umask: int, mode: int):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_bytes(tmp_path / "metrics.csv", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.csv").stat().st_mode) == mode
