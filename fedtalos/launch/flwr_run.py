"""Starting a federated run (``fedtalos run``, ``edit``, ``sweep``): ``flwr run`` of the app with a run-config
file, its federation config, and Flower's final status (``flwr run`` exits 0 even when the run fails)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedtalos.config import ConfigError, RunConfig, read_toml

_RUN_ID = re.compile(r"Successfully started run (\d+)")
# `flwr ls --format json` colours its JSON where its environment asks for colour (seen under a Jupyter kernel)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

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


def app_run_config(app: Path) -> dict[str, Any]:
    """APP's ``[tool.flwr.app.config]``: the run config ``flwr run APP`` starts from, under the ``--run-config``
    overrides (nested tables flattened to dotted keys, as Flower does).

    Raises:
        ConfigError: APP is not a Flower app directory (no directory, no ``pyproject.toml``, or no
            ``[tool.flwr.app.components]`` in it), or its ``pyproject.toml`` cannot be read.
    """
    label = f"APP {str(app)!r}"
    if not app.is_dir():
        raise ConfigError([f"{label}: no such directory (give the directory of a Flower app, e.g. `.`)"])
    pyproject = app / "pyproject.toml"
    if not pyproject.is_file():
        raise ConfigError([f"{label}: not a Flower app (it has no pyproject.toml)"])
    flower = read_toml(pyproject, f"{label}: pyproject.toml").get("tool", {}).get("flwr", {}).get("app")
    if not isinstance(flower, dict) or not isinstance(flower.get("components"), dict):
        raise ConfigError([f"{label}: not a Flower app (its pyproject.toml has no [tool.flwr.app.components])"])
    return _flatten(flower.get("config", {}))


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_config_of(app: Path, overrides: Mapping[str, Any]) -> RunConfig:
    """The config that ``flwr run APP --run-config <overrides>`` runs: APP's run config under the overrides.

    Raises:
        ConfigError: APP is not a Flower app, or the merged values are invalid.
    """
    return RunConfig.from_mapping({**app_run_config(app), **overrides})


def default_federation_config(config: RunConfig, extra: str = "") -> str:
    """``num-supernodes`` = num-clients, plus each client resource that ``extra`` does not set, on its own.

    ``client-resources-num-cpus`` = 1 (two 1-CPU actors beat one 2-CPU actor for small per-client work, measured,
    see docs/performance.md). ``client-resources-num-gpus``, when the run may use CUDA (``device`` is not 'cpu' or
    'mps') and this machine has it: the share of the first card from its memory
    (:func:`~fedtalos.task.memory.gpu_fraction`).
    A key left out would be 0 for Ray, which then hides every GPU from the actors (``CUDA_VISIBLE_DEVICES=""``).
    """
    parts = [f"num-supernodes={config.num_clients}"]
    if "client-resources-num-cpus" not in extra:
        parts.append("client-resources-num-cpus=1")
    if "client-resources-num-gpus" not in extra and config.device.partition(":")[0] in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            from fedtalos.task.memory import gpu_fraction

            total = torch.cuda.get_device_properties(0).total_memory
            parts.append(f"client-resources-num-gpus={gpu_fraction(total, config):g}")
    return " ".join([*parts, extra]).strip()


def simulation_problems(config: RunConfig) -> list[str]:
    """Why ``config`` cannot run on Flower's simulation engine as it is (empty: it can)."""
    base, _, index = config.device.partition(":")
    if base == "cuda" and index and int(index) >= 1:
        return [
            f"device = {config.device!r}: in Flower's simulation every client actor sees only the GPU Ray assigned "
            "to it, as cuda:0, so cuda:N with N >= 1 fails in every client; use device = 'cuda' (to choose the "
            "cards, set CUDA_VISIBLE_DEVICES for the whole run)"
        ]
    return []


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

    A completed run's ``summary.json`` gets the launch's whole wall time and start-up (``record_launch``).

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
    launched_at = time.time()
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
    ended_at = time.time()
    status, details = wait_finished(run_id, full_env) if run_id else ("not started", "flwr run did not start a run")
    if status == "finished:completed":
        from fedtalos.tracking.rundir import record_launch

        with contextlib.suppress(ConfigError):  # overrides that flwr accepted but we cannot place: no summary
            record_launch(run_config_of(app, overrides).run_dir(), launched_at, ended_at)
    return LaunchResult(run_id, status, details, returncode, list(tail))


def wait_finished(run_id: str, env: Mapping[str, str], wait_s: float = 60.0) -> tuple[str, str]:
    """Flower's status of ``run_id`` once it is ``finished:*`` (or the last one seen after ``wait_s`` seconds).

    ``flwr run --stream`` can return while the SuperLink still lists the run as running (seen here: the log
    stream ended a moment before the run's status changed), so a status read at once may not be the final one.
    """
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
        [flwr, "ls", "--run-id", run_id, "--format", "json"],
        env={**env, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    out = _ANSI.sub("", out)
    try:
        runs = json.loads(out).get("runs", [])
    except ValueError:
        return "unknown", out.strip()[-500:]
    return (runs[0]["status"], runs[0].get("status-details", "")) if runs else ("unknown", "run not listed")


def stop_run(run_id: str, env: Mapping[str, str] | None = None, wait_s: float = 60.0) -> str:
    """``flwr stop RUN_ID``, then wait (up to ``wait_s``) until Flower reports the run finished; returns its status.

    Interrupting ``flwr run --stream`` only stops the streaming: the run goes on inside the SuperLink. A caller
    that is interrupted must stop it, or a second run started on the same run directory would write next to it.
    """
    full_env = {**os.environ, **ENV_DEFAULTS, **(env or {})}
    flwr = str(Path(sys.executable).parent / "flwr")
    subprocess.run([flwr, "stop", run_id], env=full_env, capture_output=True, text=True, check=False)
    return wait_finished(run_id, full_env, wait_s)[0]
