"""How a sweep runs one planned run: a federated run through ``flwr run`` (after ``fedtalos run``'s preflight,
on the CPU), a centralized one through ``python -m fedtalos.cli central``; one runner of each kind per slot. A
runner's ``stop()`` (Ctrl-C, a lost claim) stops its run: ``flwr stop``, or SIGTERM for a centralized process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from fedtalos.study.plan import PlannedRun
from fedtalos.study.slots import Slot


@dataclass
class RunOutcome:
    """What a runner reports: success, and a one-line reason otherwise."""

    ok: bool
    detail: str = ""


class Runner(Protocol):
    """Runs one planned run to its end (or failure) and says how it went."""

    def command(self, run: PlannedRun) -> list[str]: ...

    def __call__(self, run: PlannedRun, log: IO[str]) -> RunOutcome: ...


def stop_runner(runner: Runner) -> None:
    """Ask ``runner`` to stop its current run (from another thread); runners without ``stop()`` are left to end."""
    stop = getattr(runner, "stop", None)
    if stop is not None:
        stop()


class FederatedRunner:
    """``flwr run APP --run-config <run>.toml --federation-config "num-supernodes=K ..." --stream``.

    Before the first run of each data set / model, the same preflight as ``fedtalos run`` (data set present or
    downloaded once, weights loadable) runs here, on the CPU: a wrong path fails in a second instead of after
    Ray's start, and this process never holds GPU memory while Flower trains.
    """

    _preflight_lock = threading.Lock()  # slots preflight one at a time (the data set is downloaded once)

    def __init__(
        self, app: Path, federation_config: str = "", env: Mapping[str, str] | None = None, slot: Slot | None = None
    ) -> None:
        self.app = Path(app)
        self.extra = federation_config
        self.env = dict(env or {})
        self.slot = slot
        self._checked: set[tuple] = set()
        self._current: list[str] = []  # Flower's id of the run going on now (set from the streaming thread)
        self._stopping = threading.Event()

    def federation_config(self, run: PlannedRun) -> str:
        from fedtalos.launch.flwr_run import default_federation_config

        extra = self.slot.federation_extra(self.extra) if self.slot is not None else self.extra
        return default_federation_config(run.config, extra)

    def flwr_env(self) -> dict[str, str]:
        """``env``, on the slot's own SuperLink when there is a slot (started on first use)."""
        return {**self.env, **self.slot.flwr_env()} if self.slot is not None else dict(self.env)

    def stop(self) -> None:
        """Stop the current Flower run (``flwr stop``), or the next one as soon as it has started."""
        self._stopping.set()
        if self._current:
            from fedtalos.launch.flwr_run import stop_run

            stop_run(self._current[0], self.flwr_env())

    def _started(self, run_id: str) -> None:
        self._current.append(run_id)
        if self._stopping.is_set():
            self.stop()

    def command(self, run: PlannedRun) -> list[str]:
        from fedtalos.launch.flwr_run import flwr_command

        return flwr_command(self.app, run.toml_path, self.federation_config(run))

    def preflight(self, run: PlannedRun) -> None:
        from fedtalos.config import ConfigError
        from fedtalos.launch.flwr_run import simulation_problems

        c = run.config
        if problems := simulation_problems(c):
            raise ConfigError(problems)
        key = (c.resolved_dataset_root(), c.dataset_download, c.dataset_verify, c.model, c.pretrained, c.weights_path)
        if key in self._checked:
            return
        from fedtalos.run.preflight import preflight
        from fedtalos.task.resources import get_resources

        with self._preflight_lock:
            preflight(c.replace(device="cpu", num_threads=0), "federated")
            get_resources.cache_clear()  # the data and model were loaded only to check them
        self._checked.add(key)

    def __call__(self, run: PlannedRun, log: IO[str]) -> RunOutcome:
        from fedtalos.launch.flwr_run import flwr_run, stop_run

        try:
            self.preflight(run)
        except Exception as e:  # bad data path, missing weights, ...: this run cannot start
            return RunOutcome(False, f"preflight: {e}")
        self._current.clear()
        self._stopping.clear()
        env = self.flwr_env()
        try:
            result = flwr_run(
                self.app,
                run.overrides,
                self.federation_config(run),
                env=env,
                echo=False,
                on_line=lambda line: (log.write(line), log.flush()),
                on_start=self._started,
                run_config_file=run.toml_path,
            )
        except KeyboardInterrupt:
            if self._current:
                print(f"stopping Flower run {self._current[0]} ({run.name}) ...", flush=True)
                status = stop_run(self._current[0], env)
                print(f"Flower run {self._current[0]}: {status}", flush=True)
            raise
        finally:
            self._current.clear()
        if result.ok:
            return RunOutcome(True, f"Flower run {result.run_id}: {result.status}")
        return RunOutcome(False, f"Flower run {result.run_id} ended as {result.status!r} ({result.details})")


class CentralizedRunner:
    """``python -m fedtalos.cli central --config <run>.toml`` (the ``fedtalos central`` command)."""

    def __init__(
        self, python: str = sys.executable, env: Mapping[str, str] | None = None, slot: Slot | None = None
    ) -> None:
        self.python = python
        self.env = {**(env or {}), **(slot.process_env() if slot is not None else {})}
        self._process: subprocess.Popen | None = None

    def stop(self) -> None:
        """Terminate the current run's process (it resumes from its last checkpoint later)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def command(self, run: PlannedRun) -> list[str]:
        return [self.python, "-m", "fedtalos.cli", "central", "--config", str(run.toml_path)]

    def __call__(self, run: PlannedRun, log: IO[str]) -> RunOutcome:
        import os

        process = subprocess.Popen(
            self.command(run), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, text=True
        )
        self._process = process
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
        return RunOutcome(code == 0, f"exit status {code}")


def default_runners(
    app: Path = Path("."), federation_config: str = "", env: Mapping[str, str] | None = None, slot: Slot | None = None
) -> dict[str, Runner]:
    """One slot's runners (``slot`` None: the runs use the SuperLink and GPUs this process's environment names)."""
    return {
        "federated": FederatedRunner(app, federation_config, env, slot),
        "centralized": CentralizedRunner(env=env, slot=slot),
    }
