"""The server's walk through a run's rounds: resumes at the recorded position, runs each remaining round once."""

from __future__ import annotations

import pytest
import torch

from fedtalos.federation.state import ServerState
from fedtalos.run.phases import PhaseSpec, remaining

PHASES = [
    PhaseSpec("head", 1, "all", evaluates=True, stream="head"),
    PhaseSpec("calibration", 2, "all", evaluates=False, stream="calibration"),
    PhaseSpec("train", 3, "head", evaluates=True, stream="train"),
]


def walk(phase: str, done: int, phases: list[PhaseSpec] = PHASES) -> list[tuple[str, int]]:
    return [(spec.name, index) for spec, index in remaining(phases, phase, done)]


def test_a_fresh_run_walks_every_phase_and_round():
    calibration, train = [("calibration", 1), ("calibration", 2)], [("train", 1), ("train", 2), ("train", 3)]
    assert walk("head", 0) == [("head", 1), *calibration, *train]


def test_a_resume_continues_inside_the_recorded_phase_and_skips_the_done_ones():
    assert walk("calibration", 1) == [("calibration", 2), ("train", 1), ("train", 2), ("train", 3)]


def test_a_finished_phase_recorded_as_current_runs_nothing_of_it():
    assert walk("train", 3) == []
    assert walk("calibration", 2) == [("train", 1), ("train", 2), ("train", 3)]


def test_a_position_in_a_phase_the_config_lacks_is_refused():
    with pytest.raises(ValueError, match="'calibration'"):
        walk("calibration", 0, PHASES[2:])


def test_advancing_the_state_records_the_position_a_resume_walks_from():
    state = ServerState(step=0, phase="head", phase_round=0, weights={"w": torch.zeros(1)})
    ran = []
    for spec, index in remaining(PHASES, state.phase, state.phase_round):
        ran.append((spec.name, index))
        state.advance(spec.name, index, {"round": index})
        if (spec.name, index) == ("calibration", 1):
            break  # killed after this round's checkpoint
    assert (state.step, state.phase, state.phase_round) == (2, "calibration", 1)
    ran += walk(state.phase, state.phase_round)
    assert ran == walk("head", 0) and len(state.rows) == 2
