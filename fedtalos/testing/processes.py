"""Process tools for tests and benchmarks: process trees, free ports, a private simulation SuperLink."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedtalos.federation.superlink import free_port, private_superlink

__all__ = [
    "free_port",
    "kill_process_trees",
    "private_simulation_superlink",
    "processes_under",
    "stop_local_superlink",
]


def _process_tree() -> tuple[dict[int, str], dict[int, list[int]]]:
    commands: dict[int, str] = {}
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            commands[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    return commands, children


def processes_under(fragment: str) -> list[int]:
    """PIDs of processes whose command line contains ``fragment``, and all their descendants (Linux /proc)."""
    commands, children = _process_tree()
    found, todo = [], [pid for pid, cmd in commands.items() if fragment in cmd and pid != os.getpid()]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def stop_local_superlink(flwr_home: Path | str) -> None:
    """Kill the background SuperLink that ``flwr run`` started for ``flwr_home``, with its simulation and Ray."""
    kill_process_trees(str(flwr_home))


def kill_process_trees(fragment: str) -> None:
    """SIGKILL the processes whose command line contains ``fragment`` and all their descendants."""
    import signal
    import time

    victims = processes_under(fragment)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in victims) and time.monotonic() < deadline:
        time.sleep(0.2)


@contextmanager
def private_simulation_superlink(flwr_home: Path, timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """A simulation SuperLink of our own on a free port, as the default connection of ``flwr_home``.

    The package's :func:`~fedtalos.federation.superlink.private_superlink` (what each sweep slot runs on), and on
    exit also whatever still names ``flwr_home`` (a test may have started more below it). Yields the environment
    for ``flwr`` (``FLWR_HOME`` and friends).
    """
    try:
        with private_superlink(flwr_home, timeout=timeout) as env:
            yield env
    finally:
        stop_local_superlink(flwr_home)
