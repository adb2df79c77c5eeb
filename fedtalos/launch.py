"""``fedtalos run``: check a federated run locally in a second, then start it with ``flwr run`` and wait for it.

``flwr run`` only validates the run config once Ray is up (about 30 s) and exits 0 even when the run fails.
This launcher merges the overrides with the app's defaults, validates them and preflights the output root,
the data set (downloading it once, here, rather than in every process) and the weights, then runs
``flwr run APP --run-config <merged.toml> --federation-config "num-supernodes=<num-clients> ..." --stream`` and
exits with 0 only if Flower reports the run ``finished:completed``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from flwr.common.config import parse_config_args

from fedtalos.config import ConfigError, RunConfig

_RUN_ID = re.compile(r"Successfully started run (\d+)")

ENV_DEFAULTS = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # else Flower `uv sync`s torch into a fresh env per run
    "FLWR_TELEMETRY_ENABLED": "0",
}


@dataclass
class LaunchResult:
    """The outcome of one ``flwr run``: Flower's run id and final status (``finished:completed`` on success)."""

    run_id: str | None
    status: str
    details: str
    returncode: int
    tail: list[str] = field(default_factory=list)  # the last lines Flower printed (for failure reports)

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def merged_config(overrides: Mapping[str, Any]) -> RunConfig:
    """The run config ``flwr run`` would build from the app's defaults and ``overrides``, validated."""
    return RunConfig.from_mapping(overrides)


def default_federation_config(config: RunConfig, extra: str = "") -> str:
    """``num-supernodes`` = num-clients, plus client resources suited to this machine unless ``extra`` sets them."""
    parts = [f"num-supernodes={config.num_clients}"]
    if "client-resources-num-cpus" not in extra and "client-resources-num-gpus" not in extra:
        import torch

        if torch.cuda.is_available():
            parts.append("client-resources-num-cpus=1 client-resources-num-gpus=0.25")
        else:
            # two 1-CPU actors beat one 2-CPU actor for small per-client work (measured, see README)
            parts.append("client-resources-num-cpus=1")
    return " ".join([*parts, extra]).strip()


def flwr_command(app: Path, run_config_file: Path, federation_config: str) -> list[str]:
    """The ``flwr run`` command line (this venv's ``flwr``) for a run-config TOML file."""
    return [
        str(Path(sys.executable).parent / "flwr"),
        "run",
        str(app),
        "--run-config",
        str(run_config_file),
        "--federation-config",
        federation_config,
        "--stream",
    ]


def flwr_run(
    app: Path,
    overrides: Mapping[str, Any],
    federation_config: str,
    *,
    env: Mapping[str, str] | None = None,
    echo: bool = True,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    run_config_file: Path | None = None,
) -> LaunchResult:
    """Run ``flwr run`` with ``overrides`` (written to a TOML file) and return Flower's final status.

    ``on_line`` receives every output line of ``flwr run`` (e.g. for a log file), ``on_start`` Flower's run id as
    soon as it is known (e.g. to ``flwr stop`` it on an interrupt). ``run_config_file``: an existing TOML file that
    holds ``overrides`` (e.g. one a sweep keeps), passed to ``flwr run`` as it is; None = a temporary file.
    """
    full_env = {**os.environ, **ENV_DEFAULTS, **(env or {})}
    bin_dir = str(Path(sys.executable).parent)  # flwr starts `flower-superlink` from PATH: use this venv's
    full_env["PATH"] = bin_dir + os.pathsep + full_env.get("PATH", "")
    if run_config_file is None:
        with tempfile.NamedTemporaryFile("wb", suffix=".toml", delete=False) as f:
            tomli_w.dump(dict(overrides), f)
            toml_path = f.name
    else:
        toml_path = str(run_config_file)
    command = flwr_command(app, Path(toml_path), federation_config)
    if echo:
        print("$ " + shlex.join(command), flush=True)
    run_id = None
    tail: deque[str] = deque(maxlen=40)
    try:
        process = subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        try:
            for line in process.stdout:
                tail.append(line.rstrip("\n"))
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if on_line is not None:
                    on_line(line)
                if run_id is None and (m := _RUN_ID.search(line)):
                    run_id = m.group(1)
                    if on_start is not None:
                        on_start(run_id)
            returncode = process.wait(timeout=timeout)
        except BaseException:  # an interrupt: do not leave `flwr run --stream` behind
            process.terminate()
            process.wait()
            raise
    finally:
        if run_config_file is None:
            os.unlink(toml_path)
    status, details = wait_finished(run_id, full_env) if run_id else ("not started", "flwr run did not start a run")
    return LaunchResult(run_id, status, details, returncode, list(tail))


def wait_finished(run_id: str, env: Mapping[str, str], wait_s: float = 60.0) -> tuple[str, str]:
    """Flower's status of ``run_id`` once it is ``finished:*`` (or the last one seen after ``wait_s`` seconds).

    ``flwr run --stream`` can return while the SuperLink still lists the run as running (seen here: the log
    stream ended a moment before the run's status changed), so a status read at once may not be the final one.
    """
    import time

    deadline = time.monotonic() + wait_s
    while True:
        status, details = run_status(run_id, env)
        if status.startswith("finished") or time.monotonic() >= deadline:
            return status, details
        time.sleep(1.0)


def run_status(run_id: str, env: Mapping[str, str]) -> tuple[str, str]:
    """Flower's status of ``run_id`` (e.g. ``finished:completed``) and its details."""
    flwr = str(Path(sys.executable).parent / "flwr")
    out = subprocess.run(
        [flwr, "ls", "--run-id", run_id, "--format", "json"], env=dict(env), capture_output=True, text=True, check=False
    ).stdout
    try:
        runs = json.loads(out).get("runs", [])
    except ValueError:
        return "unknown", out.strip()[-500:]
    return (runs[0]["status"], runs[0].get("status-details", "")) if runs else ("unknown", "run not listed")


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


def stop_run(run_id: str, env: Mapping[str, str] | None = None, wait_s: float = 60.0) -> str:
    """``flwr stop RUN_ID``, then wait (up to ``wait_s``) until Flower reports the run finished; returns its status.

    Interrupting ``flwr run --stream`` only stops the streaming: the run goes on inside the SuperLink. A caller
    that is interrupted must stop it, or a second run started on the same run directory would write next to it.
    """
    full_env = {**os.environ, **ENV_DEFAULTS, **(env or {})}
    flwr = str(Path(sys.executable).parent / "flwr")
    subprocess.run([flwr, "stop", run_id], env=full_env, capture_output=True, text=True, check=False)
    return wait_finished(run_id, full_env, wait_s)[0]


def main(argv: Sequence[str]) -> int:
    """``fedtalos run APP [--run-config ...] [--federation-config ...]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="fedtalos run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    parser.add_argument(
        "--run-config",
        "-c",
        action="append",
        default=None,
        help="overrides as for flwr run: 'k1=v1 k2=\"s\"' (repeatable) or one TOML file",
    )
    parser.add_argument(
        "--federation-config", default="", help="extra federation settings, e.g. 'client-resources-num-gpus=0.5'"
    )
    parser.add_argument("--check", action="store_true", help="only validate and preflight, do not run")
    args = parser.parse_args(argv)
    try:
        overrides = parse_config_args(args.run_config)
        config = merged_config(overrides)
        from fedtalos.server_app import preflight

        preflight(config)
    except (ConfigError, ValueError, OSError, RuntimeError) as e:
        print(f"fedtalos run: {e}", file=sys.stderr)
        return 2
    print(f"run directory: {config.run_dir()}", flush=True)
    if args.check:
        return 0
    started: list[str] = []
    try:
        result = flwr_run(
            Path(args.app),
            overrides,
            default_federation_config(config, args.federation_config),
            on_start=started.append,
        )
    except KeyboardInterrupt:
        # Interrupting `flwr run --stream` only ends the stream; the run would go on writing its directory.
        if started:
            print(f"\nstopping Flower run {started[0]} ...", file=sys.stderr)
            print(f"run {started[0]}: {stop_run(started[0])}; the same command resumes it", file=sys.stderr)
        return 130
    if not result.ok:
        print(
            f"fedtalos run: Flower run {result.run_id} ended as {result.status!r} ({result.details}); see the log "
            "above. Run the same command again to resume from the last checkpoint.",
            file=sys.stderr,
        )
        return 1
    print(f"done: {config.run_dir()}")
    return 0
