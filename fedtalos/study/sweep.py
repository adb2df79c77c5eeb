"""``fedtalos sweep``: run the planned runs of grid files through the real commands, on one or N slots.

Each run's overrides go to ``<output-root>/_sweeps/<family>/<run>.toml`` and its output to ``<run>.log`` beside it.
Finished runs are skipped, started ones resumed; a failed run is reported and the sweep goes on (exit status 1).
Runs are handed to the first free slot (:mod:`~fedtalos.study.slots`) once claimed (:mod:`~fedtalos.study.claims`);
Ctrl-C stops every slot's run and releases its claim. Progress lines: :mod:`~fedtalos.study.progress`. A run that
shares another's directory (``PlannedRun.shares``) is run once, as the first of them in the plan. A run that needs
others (``PlannedRun.needs``: the ``[[edit]]`` steps whose mask files it uses) waits until they are done, and fails
if one of them failed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fedtalos.study.claims import Claims
from fedtalos.study.plan import CONFLICT, DONE, PlannedRun, run_state, run_toml, write_manifest
from fedtalos.study.progress import RunWatcher, format_duration, sweep_eta
from fedtalos.study.runners import Runner, RunOutcome, stop_runner
from fedtalos.study.slots import Slot
from fedtalos.tracking.metrics import best_row, last_with, read_rows


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


@dataclass
class _Job:
    """A run handed to a slot: when it started, and its outcome to come."""

    run: PlannedRun
    slot: int
    started: float
    future: Future[RunOutcome] | None = None


class Sweep:
    """Runs planned runs on one or more slots (see the module docstring).

    ``runners``: one mapping kind → runner (one slot), or one mapping per slot. ``slots``: the slots' descriptions
    (labels in progress lines, GPU in claims), one per runner mapping. ``claims``: this worker's claims (None: no
    claiming, for a sweep known to be alone on its output root).
    """

    def __init__(
        self,
        runs: Sequence[PlannedRun],
        runners: Mapping[str, Runner] | Sequence[Mapping[str, Runner]],
        out: IO[str] | None = None,
        progress_every: float = 30.0,
        poll_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        analyze: Callable[[PlannedRun], tuple[bool, str]] | None = None,
        claims: Claims | None = None,
        slots: Sequence[Slot] | None = None,
    ) -> None:
        self.planned = list(runs)  # every family's runs, shared ones included (the manifests list them all)
        self.runs = _one_per_directory(self.planned)
        self.slot_runners = [runners] if isinstance(runners, Mapping) else list(runners)
        self.slots = list(slots) if slots is not None else [None] * len(self.slot_runners)
        if not self.slot_runners or len(self.slots) != len(self.slot_runners):
            raise ValueError("one runner mapping per slot, at least one")
        self.out = out
        self.progress_every = progress_every
        self.poll_s = poll_s
        self.clock = clock
        self.analyze = analyze
        self.claims = claims
        self.durations: list[float] = []  # seconds, of the runs completed so far
        self.todo = 0  # runs not started yet
        self.held: dict[str, str] = {}  # run name → who holds its claim, for runs left to other workers
        self._current_started: float | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._lost: set[str] = set()  # runs whose claim another worker took over while they ran here

    @property
    def parallel(self) -> int:
        return len(self.slot_runners)

    def say(self, line: str) -> None:
        out = self.out or sys.stdout  # looked up now: sys.stdout may have been replaced since (e.g. by pytest)
        with self._lock:
            out.write(line + "\n")
            out.flush()

    def eta(self, current_left: float | None = None) -> float | None:
        """Seconds until the sweep ends (:func:`~fedtalos.study.progress.sweep_eta`); ``current_left``: the current
        run's own estimate."""
        started = self._current_started
        elapsed = self.clock() - started if started is not None else None
        return sweep_eta(self.durations, self.todo, self.parallel, elapsed, current_left)

    def _slot_label(self, index: int) -> str:
        slot = self.slots[index]
        return slot.label if slot is not None else f"slot {index + 1}"

    def run(self) -> SweepReport:
        report = SweepReport()
        states = {run.name: run_state(run) for run in self.runs}
        pending = [r for r in self.runs if states[r.name][0] != DONE]
        conflicts = [r for r in self.runs if states[r.name][0] == CONFLICT]
        total = len(self.runs)
        self._done = total - len(pending)
        roots = sorted({str(r.config.resolved_output_root()) for r in self.runs})
        self.say(
            f"sweep: {total} runs under {', '.join(roots)}: {self._done} finished, "
            f"{sum(states[r.name][0] == 'resume' for r in pending)} to resume, "
            f"{sum(states[r.name][0] == 'new' for r in pending)} new"
            + (f", {len(conflicts)} in conflict (left alone)" if conflicts else "")
            + (
                f"; {self.parallel} slots: {', '.join(self._slot_label(i) for i in range(self.parallel))}"
                if self.parallel > 1
                else ""
            )
        )
        write_manifest(self.planned)
        shared = [r for r in self.planned if r not in self.runs]
        if shared:
            self.say(
                f"    {len(shared)} planned runs share the directory of an identical run, run once: "
                + ", ".join(f"{r.name} → {r.run_dir.name}" for r in shared)
            )
        report.skipped = [r.name for r in self.runs if states[r.name][0] == DONE]
        todo = [r for r in pending if states[r.name][0] != CONFLICT]
        for run in conflicts:
            report.failed[run.name] = states[run.name][1]
            self.say(f"[{self._done}/{total}] CONFLICT {run.name}: {states[run.name][1]}")
        free = list(range(self.parallel))
        active: dict[int, _Job] = {}
        beating = threading.Event()
        beats = threading.Thread(target=self._heartbeats, args=(active, beating), daemon=True)
        if self.claims is not None:
            beats.start()
        pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="sweep-slot")
        try:
            while True:
                while free and (job := self._next(todo, free[0], report, total)) is not None:
                    free.pop(0)
                    active[job.slot] = job
                    job.future = pool.submit(self._run_one, job.run, job.slot)
                if not active:
                    break
                futures = {job.future: job for job in active.values()}
                finished, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)  # short: Ctrl-C gets through
                for job in sorted((futures[f] for f in finished), key=lambda j: j.slot):
                    del active[job.slot]
                    free.append(job.slot)
                    free.sort()
                    self._finish(job, _outcome(job), report, total)
        except KeyboardInterrupt:
            self._interrupt(active)
            raise
        finally:
            beating.set()
            pool.shutdown(wait=False, cancel_futures=True)
        for run in todo:  # still waiting for a needed run: another worker holds it, or --only left it out
            waiting = self._needs(run, report)[0]
            if waiting and run.name not in self.held:
                report.failed[run.name] = f"waits for {', '.join(waiting)}, which did not finish here"
                self.say(f"[{self._done}/{total}] NOT RUN {run.name}: {report.failed[run.name]}")
        if self.analyze is not None:
            for run in self.runs:
                if run.mask_agreement_clients and run_state(run)[0] == DONE:
                    ok, detail = self.analyze(run)
                    if not ok:
                        report.analyses_failed[run.name] = detail
                    self.say(f"    analysis of {run.name}: {detail}")
        failed = f", {len(report.failed)} failed: " + ", ".join(report.failed) if report.failed else ""
        held = [name for name in self.held if name not in report.ran]
        others = f"; {len(held)} left to other workers: {', '.join(held)}" if held else ""
        self.say(
            f"sweep finished: {self._done}/{total} runs complete ({len(report.ran)} run now, {len(report.skipped)} "
            f"were already finished){failed}{others}. Table and figures: fedtalos summarize {' '.join(roots)}"
        )
        return report

    def _next(self, todo: list[PlannedRun], slot: int, report: SweepReport, total: int) -> _Job | None:
        """The first run of ``todo`` this worker may run now (claimed for ``slot``), removed from ``todo``."""
        for run in list(todo):
            how = ""
            waiting, failed = self._needs(run, report)
            if failed:
                todo.remove(run)
                report.failed[run.name] = f"needs {', '.join(failed)}, which failed"
                self.say(f"[{self._done}/{total}] FAILED {run.name}: {report.failed[run.name]}")
                continue
            if waiting:
                continue
            if self.claims is not None and run_state(run)[0] == DONE:  # finished by another worker: no claim
                todo.remove(run)
                self._done_elsewhere(run, report, total)
                continue
            if self.claims is not None:
                gpu = getattr(self.slots[slot], "gpu", None)
                ok, how = self.claims.acquire(run, slot=slot + 1, gpu=gpu)
                if not ok:
                    self.held[run.name] = how
                    continue
            todo.remove(run)
            self.held.pop(run.name, None)
            state, detail = run_state(run)  # now, under the claim: another worker may have run it meanwhile
            if state in (DONE, CONFLICT):
                if self.claims is not None:
                    self.claims.release(run, "already done" if state == DONE else state)
                if state == DONE:
                    self._done_elsewhere(run, report, total)
                else:
                    report.failed[run.name] = detail
                    self.say(f"[{self._done}/{total}] CONFLICT {run.name}: {detail}")
                continue
            self.todo = len(todo)
            job = _Job(run, slot, self.clock())
            self._current_started = job.started
            where = f" on {self._slot_label(slot)}" if self.parallel > 1 else ""
            took = f" · {how}" if how.startswith("took over") else ""
            self.say(
                f"[{self._done}/{total}] start {run.name}{where} "
                f"({'resuming at ' + detail if state == 'resume' else 'new'}){took} · "
                f"{len(report.failed)} failed so far · sweep ETA {format_duration(self.eta())}"
            )
            return job
        return None

    def _needs(self, run: PlannedRun, report: SweepReport) -> tuple[list[str], list[str]]:
        """(needed runs not done yet, needed runs that failed in this sweep) of ``run``."""
        by_name = {r.name: r for r in self.planned}
        failed = [n for n in run.needs if n in report.failed]
        waiting = [n for n in run.needs if n not in failed and n in by_name and run_state(by_name[n])[0] != DONE]
        return waiting, failed

    def _done_elsewhere(self, run: PlannedRun, report: SweepReport, total: int) -> None:
        self.held.pop(run.name, None)
        self._done += 1
        report.skipped.append(run.name)
        self.say(f"[{self._done}/{total}] {run.name}: finished by another worker")

    def _finish(self, job: _Job, outcome: RunOutcome, report: SweepReport, total: int) -> None:
        run = job.run
        elapsed = self.clock() - job.started
        self._current_started = None
        if run.name in self._lost:
            outcome = RunOutcome(False, "another worker took its claim over (this worker's heartbeats had stalled)")
        elif outcome.ok and run_state(run)[0] != DONE:
            outcome = RunOutcome(False, f"the command succeeded but {run.run_dir} holds no complete summary.json")
        if self.claims is not None and run.name not in self._lost:
            self.claims.release(run, "done" if outcome.ok else "failed")
        if outcome.ok:
            self.durations.append(elapsed)  # only complete runs: a quick failure says nothing about run time
            self._done += 1
            report.ran.append(run.name)
            self.say(f"[{self._done}/{total}] done {run.name} in {format_duration(elapsed)}: {_result_line(run)}")
        else:
            report.failed[run.name] = outcome.detail
            self.say(
                f"[{self._done}/{total}] FAILED {run.name} after {format_duration(elapsed)}: {outcome.detail} "
                f"(log: {run.log_path})"
            )

    def _heartbeats(self, active: dict[int, _Job], stop: threading.Event) -> None:
        """Every ``claims.heartbeat_s``: beat the claims of the running runs; stop a run whose claim was lost."""
        assert self.claims is not None
        while not stop.wait(self.claims.heartbeat_s):
            for job in list(active.values()):
                if job.run.name not in self._lost and not self.claims.beat(job.run):
                    self._lost.add(job.run.name)
                    self.say(f"    {job.run.name}: claim taken over by another worker; stopping it here")
                    for runner in self.slot_runners[job.slot].values():
                        stop_runner(runner)

    def _interrupt(self, active: dict[int, _Job]) -> None:
        """Ctrl-C: stop every slot's run (in parallel), wait for them, release their claims."""
        self._stopping.set()
        if active:
            self.say(f"interrupted: stopping {len(active)} run(s): {', '.join(j.run.name for j in active.values())}")
        runners = [runner for job in active.values() for runner in self.slot_runners[job.slot].values()]
        if runners:
            stoppers = ThreadPoolExecutor(max_workers=len(runners), thread_name_prefix="sweep-stop")
            wait([stoppers.submit(stop_runner, runner) for runner in runners], timeout=90)
            stoppers.shutdown(wait=False)
        wait([job.future for job in active.values() if job.future is not None], timeout=90)
        for job in active.values():
            if self.claims is not None:
                self.claims.release(job.run, "interrupted")

    def _run_one(self, run: PlannedRun, slot: int = 0) -> RunOutcome:
        runner = self.slot_runners[slot].get(run.kind)
        if runner is None:
            return RunOutcome(False, f"no runner for {run.kind} runs")
        run.sweep_dir.mkdir(parents=True, exist_ok=True)
        run.toml_path.write_text(run_toml(run))
        prefix = f"{self._slot_label(slot)} " if self.parallel > 1 else ""
        watcher = RunWatcher(run, self.say, self.eta, self.clock, self.poll_s, self.progress_every, prefix)
        with open(run.log_path, "a") as log, watcher:
            where = f" ({self._slot_label(slot)})" if self.parallel > 1 else ""
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')}{where} $ {' '.join(runner.command(run))}\n")
            log.flush()
            try:
                return runner(run, log)
            except Exception as e:  # a runner bug must not end the sweep: report it as this run's failure
                return RunOutcome(False, f"{type(e).__name__}: {e}")


def _one_per_directory(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The first run of ``runs`` for each run directory, in order (runs that share a directory run once)."""
    first: dict[Path, PlannedRun] = {}
    for run in runs:
        first.setdefault(run.run_dir, run)
    return list(first.values())


def _outcome(job: _Job) -> RunOutcome:
    """The finished job's outcome; an error outside the runner (e.g. writing its TOML) fails only this run."""
    assert job.future is not None
    try:
        return job.future.result()
    except Exception as e:
        return RunOutcome(False, f"{type(e).__name__}: {e}")


def _result_line(run: PlannedRun) -> str:
    if run.edit:  # an [[edit]] step trains nothing: what it made is its mask file
        return f"mask file {run.config.mask_save_path}"
    rows = [r for r in read_rows(run.run_dir) if r.get("phase") == "train"]
    tested, best = last_with(rows, "test_acc"), best_row(rows)
    parts = []
    if tested is not None:
        parts.append(f"test acc {100 * tested['test_acc']:.2f} %")
    if best is not None:
        parts.append(f"best val acc {100 * best['val_acc']:.2f} %")
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
            # an analysis without the noise floor is run again
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
