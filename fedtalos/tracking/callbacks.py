"""The round callbacks every run has: its checkpoint, its timings, its metric log (see :mod:`fedtalos.phases`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from fedtalos.phases import FAULT_INJECTION_ENV, Callback, Callbacks, Row, Unit
from fedtalos.tracking.checkpoint import CheckpointStore
from fedtalos.tracking.metrics import MetricsLog

log = logging.getLogger(__name__)


class CheckpointCallback(Callback):
    """Writes the checkpoint through ``save(step, score)``, the owner's encoding of its state."""

    def __init__(self, save: Callable[[int, float | None], None]) -> None:
        self.save = save

    def on_checkpoint(self, step: int, row: Row | None, score: float | None) -> None:
        self.save(step, score)


class TimingCallback(Callback):
    """A unit's ``wall_s`` (from its start to its checkpoint, earlier attempts included; in the checkpoint) and
    ``checkpoint_s`` (handing the checkpoint over; known only afterwards, so the next checkpoint carries it)."""

    def __init__(self) -> None:
        self.started = self.checkpoint_at = time.perf_counter()
        self.carried = 0.0

    def on_round_start(self, unit: Unit) -> None:
        self.started, self.carried = time.perf_counter(), unit.carried_s

    def before_checkpoint(self, step: int, row: Row | None) -> None:
        self.checkpoint_at = time.perf_counter()
        if row is not None:
            row["wall_s"] = self.carried + self.checkpoint_at - self.started

    def after_checkpoint(self, step: int, row: Row | None) -> None:
        if row is not None:
            row["checkpoint_s"] = time.perf_counter() - self.checkpoint_at


class MetricsCallback(Callback):
    """Appends each unit's row to the run's metric log (files and sinks) and logs it as one line."""

    def __init__(self, metrics: MetricsLog, format_line: Callable[[Row], str]) -> None:
        self.metrics = metrics
        self.format_line = format_line

    def after_checkpoint(self, step: int, row: Row | None) -> None:
        if row is not None:
            self.metrics.append(row)
            log.info(self.format_line(row))


def fault_injection(store: CheckpointStore, prefix: str = "") -> list[Callback]:
    """The fault-injection callback when ``FEDTALOS_KILL_AT`` is set (tests only), else nothing.

    Only then is :mod:`fedtalos.testing` imported: the app itself never depends on test tooling.
    """
    if not os.environ.get(FAULT_INJECTION_ENV):
        return []
    from fedtalos.testing.faults import FaultInjection

    return [FaultInjection(store, prefix)]


def run_callbacks(
    save: Callable[[int, float | None], None],
    metrics: MetricsLog,
    format_line: Callable[[Row], str],
    store: CheckpointStore,
    fault_prefix: str = "",
) -> Callbacks:
    """The callbacks of every run, in their order: timing (so rows carry ``wall_s`` before they are saved), the
    checkpoint, the metric log, and fault injection when the environment asks for it (:func:`fault_injection`)."""
    return Callbacks(
        [
            TimingCallback(),
            CheckpointCallback(save),
            MetricsCallback(metrics, format_line),
            *fault_injection(store, fault_prefix),
        ]
    )
