"""The phase machine of a run, shared by the federated server and the centralized trainer.

A run is a list of phases (``head``, ``calibration``, ``train``; see ``federation/server.py`` and
``central/trainer.py``), each a number of *units*: rounds in a federated run, epochs in a centralized one. The
machine resumes at the position a checkpoint recorded (phase name, units done in it) and runs the rest. A unit ends
with :meth:`PhaseMachine.checkpoint`, and around it the machine emits the round events of :class:`Callback`, to
which cross-cutting concerns attach: writing the checkpoint, the metric log, timings (``tracking/callbacks.py``),
fault injection (``testing/faults.py``), after pfl-research's ``TrainingProcessCallback``. Events of one unit,
in order::

    on_round_start → [after_replies → after_aggregate]  (federated rounds that ask clients)
                   → [after_step ...]                    (centralized optimizer steps)
                   → before_evaluate (when due) → before_checkpoint → on_checkpoint → after_checkpoint

Within one event, callbacks run in the order they were given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]

# ``FEDTALOS_KILL_AT="<point>@<step>"`` switches fault injection on (the kill-anywhere tests; see
# tracking.callbacks.fault_injection and fedtalos.testing.faults).
FAULT_INJECTION_ENV = "FEDTALOS_KILL_AT"


@dataclass(frozen=True)
class Unit:
    """The unit (round or epoch) in progress.

    Attributes:
        phase: its phase's name.
        index: its number within the phase, 1-based.
        step: the index of the checkpoint it ends with (federated: rounds over all phases; centralized: checkpoints
            written so far + 1).
        carried_s: wall-clock seconds spent on it before a resume (a centralized epoch resumed in its middle).
    """

    phase: str
    index: int
    step: int
    carried_s: float = 0.0


class Callback:
    """Hooks of a run's life cycle; each does nothing unless overridden."""

    def on_round_start(self, unit: Unit) -> None:
        """A unit begins (nothing of it has happened yet)."""

    def after_replies(self, unit: Unit) -> None:
        """A federated round's usable replies are in; nothing is aggregated yet."""

    def after_aggregate(self, unit: Unit) -> None:
        """A federated round's replies are aggregated into the server state; not evaluated, not saved."""

    def after_step(self, step: int) -> None:
        """A centralized optimizer step is done; ``step`` counts the steps of the whole run."""

    def before_evaluate(self, unit: Unit) -> None:
        """The unit's work is done and its evaluation begins."""

    def before_checkpoint(self, step: int, row: Row | None) -> None:
        """Checkpoint ``step`` is about to be written; ``row`` is the unit's metric row (None inside an epoch)."""

    def on_checkpoint(self, step: int, row: Row | None, score: float | None) -> None:
        """Write checkpoint ``step`` (``score``: what ranks the best checkpoint, e.g. validation accuracy)."""

    def after_checkpoint(self, step: int, row: Row | None) -> None:
        """Checkpoint ``step`` is written (or handed to its writer)."""


class Callbacks(Callback):
    """Several callbacks as one: every event goes to each of them, in order."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_round_start(self, unit: Unit) -> None:
        for c in self.callbacks:
            c.on_round_start(unit)

    def after_replies(self, unit: Unit) -> None:
        for c in self.callbacks:
            c.after_replies(unit)

    def after_aggregate(self, unit: Unit) -> None:
        for c in self.callbacks:
            c.after_aggregate(unit)

    def after_step(self, step: int) -> None:
        for c in self.callbacks:
            c.after_step(step)

    def before_evaluate(self, unit: Unit) -> None:
        for c in self.callbacks:
            c.before_evaluate(unit)

    def before_checkpoint(self, step: int, row: Row | None) -> None:
        for c in self.callbacks:
            c.before_checkpoint(step, row)

    def on_checkpoint(self, step: int, row: Row | None, score: float | None) -> None:
        for c in self.callbacks:
            c.on_checkpoint(step, row, score)

    def after_checkpoint(self, step: int, row: Row | None) -> None:
        for c in self.callbacks:
            c.after_checkpoint(step, row)


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """A phase: its name, its number of units, and the function that runs unit ``index`` (1-based) to its end."""

    name: str
    units: int
    run_unit: Callable[[int], None]


class PhaseMachine:
    """Runs the phases of a run in order, from the position the owner's state records.

    Args:
        phases: the run's phases, in order.
        callbacks: the round events' callbacks (see :class:`Callback`).
        position: () → (name of the phase in progress, units of it done); the owner's state, which its checkpoints
            hold.
        enter: called with each phase before its first unit runs in this process, and whether the run is entering
            it now (True: reset the position to (phase, 0); False: a resume inside it).
    """

    def __init__(
        self,
        phases: Sequence[Phase],
        callbacks: Callbacks,
        position: Callable[[], tuple[str, int]],
        enter: Callable[[Phase, bool], None],
    ) -> None:
        self.phases = list(phases)
        self.callbacks = callbacks
        self.position = position
        self.enter = enter

    def run(self) -> None:
        """Run (or continue) every phase to its end."""
        names = [p.name for p in self.phases]
        current, _ = self.position()
        if current not in names:
            raise ValueError(f"the run is in phase {current!r}, which this configuration does not have ({names})")
        for phase in self.phases[names.index(current) :]:
            self.enter(phase, self.position()[0] != phase.name)
            while (done := self.position()[1]) < phase.units:
                phase.run_unit(done + 1)

    def checkpoint(self, step: int, row: Row | None = None, score: float | None = None) -> None:
        """End a unit (or save inside one, ``row`` None): before_checkpoint → on_checkpoint → after_checkpoint."""
        self.callbacks.before_checkpoint(step, row)
        self.callbacks.on_checkpoint(step, row, score)
        self.callbacks.after_checkpoint(step, row)
