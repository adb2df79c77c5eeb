"""Where the ``fedtalos`` logger's lines go: stderr for the command line, Flower's handlers inside a ServerApp, and
a copy in the run directory (``log.txt``) while a run runs; and progress that suits where stderr goes: a bar on a
terminal, a log line now and then in a log file (SLURM, ``nohup``).

stderr and Flower's handlers are set up once: a process that has already given the logger a handler keeps it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

LOGGER = "fedtalos"
LOG_FILE = "log.txt"
PROGRESS_LINE_EVERY_S = 30.0  # a progress line in a log file at most this often


class CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes each record to whatever ``sys.stderr`` is at that moment.

    A plain ``StreamHandler()`` keeps the ``sys.stderr`` of the moment it was made; when that stream is replaced
    and closed (pytest's captured stderr at the end of a test), every later record fails with "ValueError: I/O
    operation on closed file". Looking the stream up per record follows the replacement instead.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # not StreamHandler.__init__: it would store a stream

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def log_to_stderr() -> None:
    """Log fedtalos' INFO lines, message only, to the current ``sys.stderr`` (once per process)."""
    ours = logging.getLogger(LOGGER)
    if not ours.handlers:
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def log_through_flower() -> None:
    """Log fedtalos' INFO lines through the ``flwr`` logger's handlers (once per process)."""
    # Flower streams its own logger's output to `flwr run --stream` and `flwr log`: log through its handlers.
    ours, flower = logging.getLogger(LOGGER), logging.getLogger("flwr")
    if not ours.handlers:
        for handler in flower.handlers:
            ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


@contextlib.contextmanager
def run_log(run_path: Path) -> Iterator[Path]:
    """Copy the ``fedtalos`` logger's lines, each with its time, into ``run_path/log.txt`` while the block runs
    (appended: a resumed run adds to it). Returns the file's path."""
    path = Path(run_path) / LOG_FILE
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    ours = logging.getLogger(LOGGER)
    level = ours.level
    if level == logging.NOTSET or level > logging.INFO:  # a library caller that set nothing up still gets the file
        ours.setLevel(logging.INFO)
    ours.addHandler(handler)
    try:
        yield path
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
        handler.close()


class ProgressLines:
    """The part of tqdm's interface a training loop uses (``update``, ``set_postfix``, ``close``), written as a log
    line at most every ``every_s`` seconds: ``train epoch 1/3: step 120/570 (21 %), 4.1 steps/s, loss=4.6``."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "",
        every_s: float = PROGRESS_LINE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.n, self.desc, self.every_s, self.clock = total, initial, desc, every_s, clock
        self.postfix: dict[str, Any] = {}
        self.last_time, self.last_n = clock(), initial

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last_time >= self.every_s:
            rate = (self.n - self.last_n) / (now - self.last_time)
            extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
            logging.getLogger(LOGGER).info(
                "%s: step %d/%d (%d %%), %.1f steps/s%s",
                self.desc,
                self.n,
                self.total,
                100 * self.n // max(self.total, 1),
                rate,
                extra,
            )
            self.last_time, self.last_n = now, self.n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass


class _NoProgress(ProgressLines):
    def update(self, n: int = 1) -> None:
        self.n += n


def progress(total: int, initial: int, desc: str, enabled: bool = True) -> Any:
    """A progress display of ``total`` steps: a tqdm bar when stderr is a terminal, else :class:`ProgressLines`
    (a redirected stderr would get every bar state joined by carriage returns); nothing when not ``enabled``."""
    if not enabled:
        return _NoProgress(total, initial, desc)
    if not sys.stderr.isatty():
        return ProgressLines(total, initial, desc)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True, mininterval=0.1)
