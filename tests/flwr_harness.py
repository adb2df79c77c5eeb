"""Helpers for tests that start real Flower processes: an isolated FLWR_HOME, and cleanup of what they leave."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _pids_with(fragment: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline and int(proc.name) != os.getpid():
            pids.append(int(proc.name))
    return pids


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(proc.name))
    return tree


def kill_processes_with(fragment: str) -> None:
    """SIGKILL every process whose command line contains ``fragment``, with all its descendants (Ray's too)."""
    roots = _pids_with(fragment)
    tree = _children()
    victims, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        victims.append(pid)
        todo.extend(tree.get(pid, []))
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in victims) and time.monotonic() < deadline:
        time.sleep(0.2)


@contextmanager
def isolated_flower(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for `flwr` with its own FLWR_HOME; the local SuperLink it starts is stopped afterwards."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }
    kill_processes_with("--port 39091")  # a SuperLink left by an earlier, crashed test would be reused
    try:
        yield env
    finally:
        kill_processes_with(str(home))
