"""A private simulation SuperLink: its own free port, its own ``FLWR_HOME``, its own environment, and a guard.

``flwr run`` otherwise shares one managed SuperLink on port 39091 with every other ``flwr run`` of the machine,
which then runs with *its* environment (venv, ``CUDA_VISIBLE_DEVICES``). A private one per sweep slot (or test)
isolates runs: the slot's environment reaches its simulation and the Ray that starts. The SuperLink runs under a
*guard* (``python -m fedtalos.launch.superlink PARENT_PID -- COMMAND...``) that kills it, with its simulation and
Ray, when the starter dies, even by SIGKILL, so an orphaned run never writes a run directory another worker took.
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

import psutil

from fedtalos.launch.flwr_run import ENV_DEFAULTS


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
    (:func:`~fedtalos.launch.flwr_run.flwr_run` ``env=``). ``flwr_home`` should be on local disk.

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
    guard_command = [sys.executable, "-m", "fedtalos.launch.superlink", str(os.getpid()), "--", *command]
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
    """PIDs of every descendant of ``pid`` (empty when it is gone)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


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


if __name__ == "__main__":  # python -m fedtalos.launch.superlink PARENT_PID -- COMMAND...
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m fedtalos.launch.superlink PARENT_PID -- COMMAND...")
    sys.exit(guard(int(args[0]), args[2:]))
