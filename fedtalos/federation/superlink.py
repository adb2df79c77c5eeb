"""A private simulation SuperLink: its own free port, its own ``FLWR_HOME``, its own environment, and a guard.

``flwr run`` otherwise shares one managed SuperLink on the fixed port 39091 with every other ``flwr run`` of the
machine, and a second ``flwr run`` *joins* it and runs with *its* environment (venv, ``CUDA_VISIBLE_DEVICES``), not
its own. One private SuperLink per sweep slot (or test) isolates runs fully: the slot's ``CUDA_VISIBLE_DEVICES`` and
``RAY_ADDRESS=local`` are in the SuperLink's environment, so its simulation (``flwr-simulation``, one process per
run) starts a Ray of its own that sees only the slot's GPU.

The SuperLink runs under a *guard* (``python -m fedtalos.federation.superlink PARENT_PID -- COMMAND...``, in a
session of its own): when the process that started it dies, even by SIGKILL, the guard kills the SuperLink with its
simulation and Ray, so an orphaned run never goes on writing a run directory that another sweep worker takes over
(tests/study/test_claims_e2e.py kills a worker and checks its run resumes bit-identically elsewhere).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from fedtalos.federation.launcher import ENV_DEFAULTS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_connection(flwr_home: Path, port: int) -> None:
    """``$FLWR_HOME/config.toml`` whose default connection ``local`` is the SuperLink at 127.0.0.1:``port``."""
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )


def superlink_env(flwr_home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the SuperLink and for ``flwr`` commands talking to it: this one, ``env``, FLWR_HOME."""
    out = {**os.environ, **ENV_DEFAULTS, "FLWR_DISABLE_UPDATE_CHECK": "1", **(env or {}), "FLWR_HOME": str(flwr_home)}
    out["PATH"] = str(Path(sys.executable).parent) + os.pathsep + out.get("PATH", "")  # this venv's flwr tools
    return out


@contextmanager
def private_superlink(
    flwr_home: Path, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> Iterator[dict[str, str]]:
    """Start a simulation SuperLink on a free port as the default connection of ``flwr_home``; stop it on exit.

    ``env`` is added to this process's environment for the SuperLink (and so for its simulations and their Ray),
    e.g. ``{"CUDA_VISIBLE_DEVICES": "1", "RAY_ADDRESS": "local"}``. Yields the environment for ``flwr`` commands
    (:func:`~fedtalos.federation.launcher.flwr_run` ``env=``). ``flwr_home`` should be on local disk.

    Raises:
        RuntimeError: the SuperLink did not answer its health check within ``timeout`` seconds (see the
            ``superlink.log`` in ``flwr_home``).
    """
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    write_connection(flwr_home, port)
    full_env = superlink_env(flwr_home, env)
    command = [
        str(Path(sys.executable).parent / "flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(flwr_home / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]
    guard_command = [sys.executable, "-m", "fedtalos.federation.superlink", str(os.getpid()), "--", *command]
    with open(flwr_home / "superlink.log", "wb") as log:
        guard = subprocess.Popen(
            guard_command, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if guard.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the SuperLink did not start; see {flwr_home / 'superlink.log'}") from None
                time.sleep(0.5)
        yield full_env
    finally:
        guard.terminate()  # the guard kills the SuperLink, its simulations and their Ray, then exits
        try:
            guard.wait(timeout=30)
        except subprocess.TimeoutExpired:
            guard.kill()
            guard.wait()


# ---------------------------------------------------------------------------------------------------------------
# The guard process.


def descendants(pid: int) -> list[int]:
    """PIDs of every descendant of ``pid`` (from /proc; empty where there is none, e.g. macOS)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _kill_all_below_me() -> None:
    victims = descendants(os.getpid())
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    # whatever left the tree (re-parented) but stayed in the guard's process group goes too
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with suppress(OSError):
        os.killpg(os.getpgid(0), signal.SIGTERM)


def guard(parent: int, command: list[str], poll_s: float = 0.5) -> int:
    """Run ``command`` until it ends, this process is asked to stop (SIGTERM/SIGINT) or ``parent`` dies; then kill
    ``command`` and everything it started. Returns ``command``'s exit status (or 0 when it was stopped)."""
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    child = subprocess.Popen(command)
    try:
        while child.poll() is None and not stop and os.getppid() == parent:
            time.sleep(poll_s)
    finally:
        code = child.poll()
        _kill_all_below_me()
    return 0 if code is None else code


if __name__ == "__main__":  # python -m fedtalos.federation.superlink PARENT_PID -- COMMAND...
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m fedtalos.federation.superlink PARENT_PID -- COMMAND...")
    sys.exit(guard(int(args[0]), args[2:]))
