"""Process tools for tests and benchmarks: process trees, free ports, a private simulation SuperLink."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

from fedtalos.launch.superlink import free_port, private_superlink

__all__ = [
    "free_port",
    "kill_process_trees",
    "private_simulation_superlink",
    "processes_under",
    "stop_local_superlink",
]


def processes_under(fragment: str) -> list[int]:
    """PIDs of processes whose command line contains ``fragment``, and all their descendants."""
    found: list[int] = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid() or fragment not in " ".join(proc.info["cmdline"] or ()):
            continue
        try:
            found.extend([proc.pid, *(p.pid for p in proc.children(recursive=True))])
        except psutil.NoSuchProcess:
            continue
    return list(dict.fromkeys(found))


def stop_local_superlink(flwr_home: Path | str) -> None:
    """Kill the background SuperLink that ``flwr run`` started for ``flwr_home``, with its simulation and Ray."""
    kill_process_trees(str(flwr_home))


def kill_process_trees(fragment: str) -> None:
    """SIGKILL the processes whose command line contains ``fragment`` and all their descendants; wait (10 s at
    most) until they are gone."""
    victims = []
    for pid in processes_under(fragment):
        with suppress(psutil.NoSuchProcess):
            victims.append(psutil.Process(pid))
    for proc in victims:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(victims, timeout=10)


@contextmanager
def private_simulation_superlink(flwr_home: Path, timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """A simulation SuperLink of our own on a free port, as the default connection of ``flwr_home``.

    The package's :func:`~fedtalos.launch.superlink.private_superlink` (what each sweep slot runs on), and on
    exit also whatever still names ``flwr_home`` (a test may have started more below it). Yields the environment
    for ``flwr`` (``FLWR_HOME`` and friends).
    """
    try:
        with private_superlink(flwr_home, timeout=timeout) as env:
            yield env
    finally:
        stop_local_superlink(flwr_home)
