"""The SuperLink guard (fedtalos/launch/superlink.py): when the process that started a private SuperLink dies,
even by SIGKILL, the guard kills the command and everything below it (here a stand-in: a process with a child)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from fedtalos.launch.superlink import free_port, write_connection

ROOT = Path(__file__).resolve().parents[2]

# Stands for flower-superlink: starts a child (as the SuperLink starts its simulations) and writes both pids.
TREE = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
    time.sleep(600)
    """
)

# Stands for the sweep worker: starts the guard the way private_superlink does, then waits to be killed.
STARTER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    subprocess.Popen([sys.executable, "-m", "fedtalos.launch.superlink", str(os.getpid()), "--",
                      sys.executable, "-c", {tree!r}, {pids!r}], start_new_session=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_the_guard_kills_the_superlink_tree_when_its_starter_is_sigkilled(tmp_path: Path):
    pids_file = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER.format(tree=TREE, pids=str(pids_file))], env=env, cwd=ROOT
    )
    try:
        assert _wait_for(lambda: pids_file.is_file() and len(pids_file.read_text().split()) == 2)
        tree = [int(p) for p in pids_file.read_text().split()]
        assert all(_alive(p) for p in tree)
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        assert _wait_for(lambda: not any(_alive(p) for p in tree)), "the stand-in SuperLink outlived its starter"
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()


def test_the_connection_names_the_private_port(tmp_path: Path):
    port = free_port()
    write_connection(tmp_path, port)
    text = (tmp_path / "config.toml").read_text()
    assert 'default = "local"' in text and f'address = "127.0.0.1:{port}"' in text and "insecure = true" in text
