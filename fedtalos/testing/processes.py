"""Process tools for tests and benchmarks: process trees, free ports, a private simulation SuperLink."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedtalos.federation.launcher import ENV_DEFAULTS


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def private_simulation_superlink(flwr_home: Path, timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """A simulation SuperLink of our own on a free port, as the default connection of ``flwr_home``.

    ``flwr run`` otherwise shares one managed SuperLink on the fixed port 39091 with every other `flwr run` of
    the machine (another sweep, a test run), and whoever stops it stops everyone's runs. Yields the environment
    for ``flwr`` (``FLWR_HOME`` and friends); the SuperLink, its simulation and Ray are killed on exit.
    """
    import time
    import urllib.request

    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {**os.environ, **ENV_DEFAULTS, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = str(bin_dir) + os.pathsep + env.get("PATH", "")
    command = [
        str(bin_dir / "flower-superlink"),
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
    with open(flwr_home / "superlink.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the SuperLink did not start; see {flwr_home / 'superlink.log'}") from None
                time.sleep(0.5)
        yield env
    finally:
        stop_local_superlink(flwr_home)
