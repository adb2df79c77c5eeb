"""``fedtalos sweep``: run the planned runs of grid files one after another, through the real commands.

Federated runs go through ``flwr run`` (after a local preflight of data and weights on the CPU), centralized runs
through ``python -m fedtalos.cli central --config <run>.toml``. Each run's overrides are written to
``<output-root>/_sweeps/<family>/<run>.toml`` and its output to ``<run>.log`` beside it, so any single run can be
repeated by hand with the command ``--dry-run`` prints.

Finished runs (``summary.json`` of a complete run of the same configuration) are skipped; started ones are
resumed by running the same command again (the apps continue from their last checkpoint). A failed run is
reported and the sweep goes on; the exit status is 1 if any run failed. Ctrl-C stops the current run (for a
federated run also inside the SuperLink, with ``flwr stop``), and the same command later continues where it was.

Progress: one line per run start and end with runs done / total and the sweep's ETA (mean time of the runs run so
far × runs left), and in between, at most every ``progress_every`` seconds, the current run's phase and round
(read from its ``metrics.jsonl``) with its own ETA.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from fedtalos.study.plan import (
    CONFLICT,
    DONE,
    PlannedRun,
    phase_rounds,
    run_state,
    run_toml,
    steps_done,
    write_manifest,
)
from fedtalos.tracking.metrics import read_rows


@dataclass
class RunOutcome:
    """What a runner reports: success, and a one-line reason otherwise."""

    ok: bool
    detail: str = ""


class Runner(Protocol):
    """Runs one planned run to its end (or failure) and says how it went."""

    def command(self, run: PlannedRun) -> list[str]: ...

    def __call__(self, run: PlannedRun, log: IO[str]) -> RunOutcome: ...


# ---------------------------------------------------------------------------------------------------------------
# Runners.


class FederatedRunner:
    """``flwr run APP --run-config <run>.toml --federation-config "num-supernodes=K ..." --stream``.

    Before the first run of each data set / model, the same preflight as ``fedtalos run`` (data set present or
    downloaded once, weights loadable) runs here, on the CPU: a wrong path fails in a second instead of after
    Ray's start, and this process never holds GPU memory while Flower trains.
    """

    def __init__(self, app: Path, federation_config: str = "", env: Mapping[str, str] | None = None) -> None:
        self.app = Path(app)
        self.extra = federation_config
        self.env = dict(env or {})
        self._checked: set[tuple] = set()

    def federation_config(self, run: PlannedRun) -> str:
        from fedtalos.federation.launcher import default_federation_config

        return default_federation_config(run.config, self.extra)

    def command(self, run: PlannedRun) -> list[str]:
        from fedtalos.federation.launcher import flwr_command

        return flwr_command(self.app, run.toml_path, self.federation_config(run))

    def preflight(self, run: PlannedRun) -> None:
        from fedtalos.config import ConfigError
        from fedtalos.federation.launcher import simulation_problems

        c = run.config
        if problems := simulation_problems(c):
            raise ConfigError(problems)
        key = (c.resolved_dataset_root(), c.dataset_download, c.dataset_verify, c.model, c.pretrained, c.weights_path)
        if key in self._checked:
            return
        from fedtalos.server_app import preflight
        from fedtalos.task.resources import get_resources

        preflight(c.replace(device="cpu", num_threads=0))
        get_resources.cache_clear()  # the data and model were loaded only to check them
        self._checked.add(key)

    def __call__(self, run: PlannedRun, log: IO[str]) -> RunOutcome:
        from fedtalos.federation.launcher import flwr_run, stop_run

        try:
            self.preflight(run)
        except Exception as e:  # bad data path, missing weights, ...: this run cannot start
            return RunOutcome(False, f"preflight: {e}")
        started: list[str] = []
        try:
            result = flwr_run(
                self.app,
                run.overrides,
                self.federation_config(run),
                env=self.env,
                echo=False,
                on_line=lambda line: (log.write(line), log.flush()),
                on_start=started.append,
                run_config_file=run.toml_path,
            )
        except KeyboardInterrupt:
            if started:
                print(f"stopping Flower run {started[0]} ({run.name}) ...", flush=True)
                status = stop_run(started[0], {**self.env})
                print(f"Flower run {started[0]}: {status}", flush=True)
            raise
        if result.ok:
            return RunOutcome(True, f"Flower run {result.run_id}: {result.status}")
        return RunOutcome(False, f"Flower run {result.run_id} ended as {result.status!r} ({result.details})")


class CentralizedRunner:
    """``python -m fedtalos.cli central --config <run>.toml`` (the ``fedtalos central`` command)."""

    def __init__(self, python: str = sys.executable, env: Mapping[str, str] | None = None) -> None:
        self.python = python
        self.env = dict(env or {})

    def command(self, run: PlannedRun) -> list[str]:
        return [self.python, "-m", "fedtalos.cli", "central", "--config", str(run.toml_path)]

    def __call__(self, run: PlannedRun, log: IO[str]) -> RunOutcome:
        import os

        process = subprocess.Popen(
            self.command(run), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, text=True
        )
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
        return RunOutcome(code == 0, f"exit status {code}")


def default_runners(
    app: Path = Path("."), federation_config: str = "", env: Mapping[str, str] | None = None
) -> dict[str, Runner]:
    return {"federated": FederatedRunner(app, federation_config, env), "centralized": CentralizedRunner(env=env)}


# ---------------------------------------------------------------------------------------------------------------
# Progress.


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_of(run: PlannedRun, rows: Sequence[dict]) -> tuple[int, str]:
    """(steps done, text): the server's completed rounds over all phases (federated) or epochs (centralized)."""
    if run.kind == "centralized":
        done = steps_done(rows, "centralized")
        return done, f"epoch {done}/{run.config.epochs}"
    if not rows:
        return 0, f"starting (0/{run.total_steps} rounds)"
    last = rows[-1]
    total = phase_rounds(run.config).get(last.get("phase"), "?")
    done = int(last.get("step", len(rows)))
    return done, f"{last.get('phase')} round {last.get('round')}/{total} (step {done}/{run.total_steps})"


@dataclass
class SweepReport:
    """What a sweep did: names of runs done now, skipped as finished, failed (with reasons), in conflict."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    analyses_failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.analyses_failed


class _Watcher:
    """Polls the current run's ``metrics.jsonl`` and prints its progress now and then."""

    def __init__(self, sweep: Sweep, run: PlannedRun) -> None:
        self.sweep, self.run = sweep, run
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.start_done: int | None = None
        self.first_change: tuple[float, int] | None = None
        self.done = 0
        self.phase = None

    def __enter__(self) -> _Watcher:
        self.start_done, _ = progress_of(self.run, read_rows(self.run.run_dir))
        self.done = self.start_done
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def remaining(self) -> float | None:
        """Seconds left in this run, from its rate since its first new row (start-up time is not a rate)."""
        if self.first_change is None:
            return None
        t0, d0 = self.first_change
        elapsed = self.sweep.clock() - t0
        if self.done <= d0 or elapsed <= 0:
            return None
        return (self.run.total_steps - self.done) * elapsed / (self.done - d0)

    def _loop(self) -> None:
        last_print = self.sweep.clock()
        while not self.stop.wait(self.sweep.poll_s):
            rows = read_rows(self.run.run_dir)
            done, text = progress_of(self.run, rows)
            if done == self.done:
                continue
            now = self.sweep.clock()
            if self.first_change is None:
                self.first_change = (now, done)
            self.done = done
            phase = rows[-1].get("phase") if rows else None
            if phase != self.phase or now - last_print >= self.sweep.progress_every:
                self.phase, last_print = phase, now
                left = self.remaining()
                self.sweep.say(
                    f"    {self.run.name}: {text} · run ETA {format_duration(left)} · "
                    f"sweep ETA {format_duration(self.sweep.eta(left))}"
                )


class Sweep:
    """Runs planned runs one after another (see the module docstring)."""

    def __init__(
        self,
        runs: Sequence[PlannedRun],
        runners: Mapping[str, Runner],
        out: IO[str] | None = None,
        progress_every: float = 30.0,
        poll_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        analyze: Callable[[PlannedRun], tuple[bool, str]] | None = None,
    ) -> None:
        self.runs = list(runs)
        self.runners = runners
        self.out = out
        self.progress_every = progress_every
        self.poll_s = poll_s
        self.clock = clock
        self.analyze = analyze
        self.durations: list[float] = []  # seconds, of the runs completed so far
        self.todo = 0  # runs still to run after the current one
        self._current_started: float | None = None
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        out = self.out or sys.stdout  # looked up now: sys.stdout may have been replaced since (e.g. by pytest)
        with self._lock:
            out.write(line + "\n")
            out.flush()

    def eta(self, current_left: float | None = None) -> float | None:
        """Seconds until the sweep ends: the current run's rest + the mean run time × the runs after it."""
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
        elif current_left is not None and self._current_started is not None:
            mean = self.clock() - self._current_started + current_left  # the current run's projected length
        else:
            return None
        if current_left is None:  # no rate yet: assume the current run takes the mean time
            started = self._current_started
            current_left = max(mean - (self.clock() - started), 0.0) if started is not None else 0.0
        return current_left + mean * self.todo

    def run(self) -> SweepReport:
        report = SweepReport()
        states = {run.name: run_state(run) for run in self.runs}
        pending = [r for r in self.runs if states[r.name][0] != DONE]
        conflicts = [r for r in self.runs if states[r.name][0] == CONFLICT]
        total = len(self.runs)
        done = total - len(pending)
        roots = sorted({str(r.config.resolved_output_root()) for r in self.runs})
        self.say(
            f"sweep: {total} runs under {', '.join(roots)}: {done} finished, "
            f"{sum(states[r.name][0] == 'resume' for r in pending)} to resume, "
            f"{sum(states[r.name][0] == 'new' for r in pending)} new"
            + (f", {len(conflicts)} in conflict (left alone)" if conflicts else "")
        )
        write_manifest(self.runs)
        report.skipped = [r.name for r in self.runs if states[r.name][0] == DONE]
        runnable = [r for r in pending if states[r.name][0] != CONFLICT]
        for run in conflicts:
            report.failed[run.name] = states[run.name][1]
            self.say(f"[{done}/{total}] CONFLICT {run.name}: {states[run.name][1]}")
        for i, run in enumerate(runnable):
            self.todo = len(runnable) - i - 1
            state, detail = states[run.name]
            self._current_started = self.clock()
            eta = self.eta()
            self.say(
                f"[{done}/{total}] start {run.name} ({'resuming at ' + detail if state == 'resume' else 'new'}) · "
                f"{len(report.failed)} failed so far · sweep ETA {format_duration(eta)}"
            )
            outcome = self._run_one(run)
            elapsed = self.clock() - self._current_started
            self._current_started = None
            if outcome.ok and run_state(run)[0] != DONE:
                outcome = RunOutcome(False, f"the command succeeded but {run.run_dir} holds no complete summary.json")
            if outcome.ok:
                self.durations.append(elapsed)  # only complete runs: a quick failure says nothing about run time
                done += 1
                report.ran.append(run.name)
                self.say(f"[{done}/{total}] done {run.name} in {format_duration(elapsed)}: {_result_line(run)}")
            else:
                report.failed[run.name] = outcome.detail
                self.say(
                    f"[{done}/{total}] FAILED {run.name} after {format_duration(elapsed)}: {outcome.detail} "
                    f"(log: {run.log_path})"
                )
        if self.analyze is not None:
            for run in self.runs:
                if run.mask_agreement_clients and run_state(run)[0] == DONE:
                    ok, detail = self.analyze(run)
                    if not ok:
                        report.analyses_failed[run.name] = detail
                    self.say(f"    analysis of {run.name}: {detail}")
        failed = f", {len(report.failed)} failed: " + ", ".join(report.failed) if report.failed else ""
        self.say(
            f"sweep finished: {done}/{total} runs complete ({len(report.ran)} run now, {len(report.skipped)} were "
            f"already finished){failed}. Table and figures: fedtalos summarize {' '.join(roots)}"
        )
        return report

    def _run_one(self, run: PlannedRun) -> RunOutcome:
        runner = self.runners.get(run.kind)
        if runner is None:
            return RunOutcome(False, f"no runner for {run.kind} runs")
        run.sweep_dir.mkdir(parents=True, exist_ok=True)
        run.toml_path.write_text(run_toml(run))
        with open(run.log_path, "a") as log, _Watcher(self, run):
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(runner.command(run))}\n")
            log.flush()
            try:
                return runner(run, log)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a runner bug must not end the sweep: report it as this run's failure
                return RunOutcome(False, f"{type(e).__name__}: {e}")


def _result_line(run: PlannedRun) -> str:
    rows = [r for r in read_rows(run.run_dir) if r.get("phase") == "train"]
    tested = [r for r in rows if r.get("test_acc") is not None]
    validated = [r for r in rows if r.get("val_acc") is not None]
    parts = []
    if tested:
        parts.append(f"test acc {100 * tested[-1]['test_acc']:.2f} %")
    if validated:
        parts.append(f"best val acc {100 * max(r['val_acc'] for r in validated):.2f} %")
    return ", ".join(parts) or "no evaluation rows"


def analyze_in_subprocess(run: PlannedRun, python: str = sys.executable) -> tuple[bool, str]:
    """``fedtalos analyze mask-agreement RUN --clients N`` in its own process (its memory is freed afterwards);
    skipped when the analysis of this run with these many clients exists already."""
    import json

    from fedtalos.study.agreement import OUTPUT_JSON

    out = run.run_dir / OUTPUT_JSON
    if out.is_file():
        try:
            done = json.loads(out.read_text())
            # an analysis from before the noise floor existed is run again
            if done.get("clients_requested") == run.mask_agreement_clients and "noise_floor" in done:
                return True, f"mask agreement already in {out}"
        except ValueError:
            pass
    command = [python, "-m", "fedtalos.cli", "analyze", "mask-agreement", str(run.run_dir)]
    command += ["--clients", str(run.mask_agreement_clients)]
    with open(run.log_path, "a") as log:
        log.write(f"\n===== $ {' '.join(command)}\n")
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    return (code == 0, f"mask agreement → {out}" if code == 0 else f"mask agreement failed (see {run.log_path})")
