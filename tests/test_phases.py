"""The phase machine: resumes at the recorded position, enters each phase once, emits the round events in order."""

from __future__ import annotations

import pytest

from fedtalos.phases import Callbacks, Phase, PhaseMachine
from tests.support.events import Recorder


class Owner:
    """A minimal owner of a position (phase, units done), as the trainers keep it in their states."""

    def __init__(self, phase: str, done: int) -> None:
        self.phase, self.done = phase, done
        self.ran: list[tuple[str, int]] = []
        self.entered: list[tuple[str, bool]] = []

    def unit(self, name: str, index: int) -> None:
        self.ran.append((name, index))
        self.done = index

    def machine(self, lengths: dict[str, int], callbacks: Callbacks | None = None) -> PhaseMachine:
        def enter(phase: Phase, fresh: bool) -> None:
            self.entered.append((phase.name, fresh))
            if fresh:
                self.phase, self.done = phase.name, 0

        phases = [Phase(n, k, lambda i, n=n: self.unit(n, i)) for n, k in lengths.items()]
        return PhaseMachine(phases, callbacks or Callbacks([]), lambda: (self.phase, self.done), enter)


def test_a_fresh_run_enters_every_phase_and_runs_every_unit():
    owner = Owner("head", 0)
    owner.machine({"head": 1, "calibration": 2, "train": 3}).run()
    assert owner.ran == [("head", 1), ("calibration", 1), ("calibration", 2), ("train", 1), ("train", 2), ("train", 3)]
    assert owner.entered == [("head", False), ("calibration", True), ("train", True)]


def test_a_resume_continues_inside_the_recorded_phase_and_skips_the_done_ones():
    owner = Owner("calibration", 1)
    owner.machine({"head": 1, "calibration": 2, "train": 2}).run()
    assert owner.ran == [("calibration", 2), ("train", 1), ("train", 2)]
    assert owner.entered == [("calibration", False), ("train", True)]


def test_a_finished_phase_recorded_as_current_runs_nothing_of_it():
    owner = Owner("train", 2)
    owner.machine({"head": 1, "train": 2}).run()
    assert owner.ran == [] and owner.entered == [("train", False)]


def test_a_position_in_a_phase_the_config_lacks_is_refused():
    with pytest.raises(ValueError, match="'calibration'"):
        Owner("calibration", 0).machine({"train": 1}).run()


def test_checkpoint_emits_before_on_after_in_callback_order():
    first, second = Recorder(), Recorder()
    machine = Owner("train", 0).machine({"train": 1}, Callbacks([first, second]))
    machine.checkpoint(7, {"round": 1}, 0.5)
    assert first.events == second.events == [("before_checkpoint", 7), ("on_checkpoint", 7), ("after_checkpoint", 7)]
