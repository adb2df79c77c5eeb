"""A hook listener that records the named points a run passes, to check their order."""

from __future__ import annotations


class Recorder:
    """Every point as (point, step), in order (a listener of ``fedtalos.tracking.hooks.Hooks``)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def __call__(self, point: str, step: int) -> None:
        self.events.append((point, step))

    @property
    def points(self) -> list[str]:
        return [point for point, _ in self.events]

    @property
    def steps(self) -> list[int]:
        return [step for _, step in self.events]
