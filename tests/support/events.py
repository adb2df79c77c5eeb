"""A callback that records the round events of a run, to check their order."""

from __future__ import annotations

from typing import Any

from fedtalos.phases import Callback, Row, Unit


class Recorder(Callback):
    """Every event as (name, step or unit), in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_round_start(self, unit: Unit) -> None:
        self.events.append(("round_start", unit))

    def after_replies(self, unit: Unit) -> None:
        self.events.append(("after_replies", unit.step))

    def after_aggregate(self, unit: Unit) -> None:
        self.events.append(("after_aggregate", unit.step))

    def after_step(self, step: int) -> None:
        self.events.append(("after_step", step))

    def before_evaluate(self, unit: Unit) -> None:
        self.events.append(("before_evaluate", unit.step))

    def before_checkpoint(self, step: int, row: Row | None) -> None:
        self.events.append(("before_checkpoint", step))

    def on_checkpoint(self, step: int, row: Row | None, score: float | None) -> None:
        self.events.append(("on_checkpoint", step))

    def after_checkpoint(self, step: int, row: Row | None) -> None:
        self.events.append(("after_checkpoint", step))
