"""A sweep's progress: each running run's phase and round (read from its ``metrics.jsonl``) with its own ETA, and
the sweep's ETA (mean time of the runs run so far × runs left / slots)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from fedtalos.study.plan import PlannedRun, phase_rounds, steps_done
from fedtalos.tracking.metrics import read_rows


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
        return done, f"epoch {done}/{run.total_steps}"
    if not rows:
        return 0, f"starting (0/{run.total_steps} rounds)"
    last = rows[-1]
    total = phase_rounds(run.config).get(last.get("phase"), "?")
    done = int(last.get("step", len(rows)))
    return done, f"{last.get('phase')} round {last.get('round')}/{total} (step {done}/{run.total_steps})"


def sweep_eta(
    durations: Sequence[float],
    runs_left: int,
    slots: int,
    current_elapsed: float | None,
    current_left: float | None = None,
) -> float | None:
    """Seconds until a sweep ends: the current run's rest + the mean run time × the runs not started / slots.

    ``durations``: of the runs completed so far; ``current_elapsed``: how long the current run has run (None: no
    run is running); ``current_left``: its own estimate of what is left (None: no rate yet, assume the mean)."""
    if durations:
        mean = sum(durations) / len(durations)
    elif current_left is not None and current_elapsed is not None:
        mean = current_elapsed + current_left  # the current run's projected length
    else:
        return None
    if current_left is None:
        current_left = max(mean - current_elapsed, 0.0) if current_elapsed is not None else 0.0
    return current_left + mean * runs_left / slots


class RunWatcher:
    """Polls one running run's ``metrics.jsonl`` every ``poll_s`` seconds and reports its progress through ``say``
    when its phase changes and at most every ``every`` seconds otherwise; ``eta(run_left)`` gives the sweep's."""

    def __init__(
        self,
        run: PlannedRun,
        say: Callable[[str], None],
        eta: Callable[[float | None], float | None],
        clock: Callable[[], float],
        poll_s: float,
        every: float,
        prefix: str = "",
    ) -> None:
        self.run, self.say, self.eta, self.clock = run, say, eta, clock
        self.poll_s, self.every, self.prefix = poll_s, every, prefix
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.first_change: tuple[float, int] | None = None
        self.done = 0
        self.phase = None

    def __enter__(self) -> RunWatcher:
        self.done, _ = progress_of(self.run, read_rows(self.run.run_dir))
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
        elapsed = self.clock() - t0
        if self.done <= d0 or elapsed <= 0:
            return None
        return (self.run.total_steps - self.done) * elapsed / (self.done - d0)

    def _loop(self) -> None:
        last_print = self.clock()
        while not self.stop.wait(self.poll_s):
            rows = read_rows(self.run.run_dir)
            done, text = progress_of(self.run, rows)
            if done == self.done:
                continue
            now = self.clock()
            if self.first_change is None:
                self.first_change = (now, done)
            self.done = done
            phase = rows[-1].get("phase") if rows else None
            if phase != self.phase or now - last_print >= self.every:
                self.phase, last_print = phase, now
                left = self.remaining()
                self.say(
                    f"    {self.prefix}{self.run.name}: {text} · run ETA {format_duration(left)} · "
                    f"sweep ETA {format_duration(self.eta(left))}"
                )
