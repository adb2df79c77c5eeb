"""A run's life cycle, for both kinds: its phases, what is left from any position, when it evaluates, what trains."""

from __future__ import annotations

from typing import Any

import pytest

from fedtalos.config import RunConfig
from fedtalos.run.phases import (
    Kind,
    PhaseSpec,
    evaluation_due,
    remaining,
    run_phases,
    total_units,
)

SMALL = {"num-server-rounds": 4, "epochs": 3, "probe-rounds": 2, "eval-every": 2}


def config(**values: Any) -> RunConfig:
    return RunConfig.from_mapping({**SMALL, **{k.replace("_", "-"): v for k, v in values.items()}})


def shape(phases: list[PhaseSpec]) -> list[tuple[str, int, str, str]]:
    """(name, units, frozen, stream) of each phase."""
    return [(p.name, p.units, p.frozen, p.stream) for p in phases]


@pytest.mark.parametrize(
    ("values", "kind", "expected"),
    [
        ({}, "federated", [("train", 4, "none", "train")]),
        ({}, "centralized", [("train", 3, "none", "train")]),
        ({"freeze": "backbone"}, "centralized", [("train", 3, "backbone", "train")]),
        (
            {"head": "ridge", "mask_rule": "least-sensitive", "calibration_rounds": 3},
            "federated",
            [("head", 1, "all", "head"), ("calibration", 3, "all", "calibration"), ("train", 4, "head", "train")],
        ),
        (
            {"head": "ridge", "mask_rule": "least-sensitive", "calibration_rounds": 3},
            "centralized",  # one step: it scores the pooled samples R' times within it
            [("head", 1, "all", "head"), ("calibration", 1, "all", "calibration"), ("train", 3, "head", "train")],
        ),
        (
            {"head": "probe", "mask_rule": "random", "calibration_rounds": 3},
            "federated",  # the random rule reads no scores: one round whatever R' is
            [("head", 2, "backbone", "probe"), ("calibration", 1, "all", "calibration"), ("train", 4, "head", "train")],
        ),
        (
            {"head": "probe", "mask_rule": "lowest-magnitude"},
            "centralized",
            [("head", 2, "backbone", "probe"), ("calibration", 1, "all", "calibration"), ("train", 3, "head", "train")],
        ),
        ({"mask_path": "/nonexistent/mask.safetensors"}, "federated", [("train", 4, "head", "train")]),
        ({"mask_path": "/nonexistent/mask.safetensors"}, "centralized", [("train", 3, "head", "train")]),
    ],
)
def test_the_phases_of_each_kind_of_run(values: dict[str, Any], kind: Kind, expected: list[tuple[str, int, str, str]]):
    c = config(**values)
    phases = run_phases(c, kind)
    assert shape(phases) == expected
    assert total_units(c, kind) == sum(units for _, units, _, _ in expected)


def test_only_sgd_phases_train_and_every_phase_but_calibration_evaluates():
    c = config(head="probe", mask_rule="least-sensitive")
    head, calibration, train = run_phases(c, "federated")
    assert (head.trains, calibration.trains, train.trains) == (True, False, True)
    assert (head.evaluates, calibration.evaluates, train.evaluates) == (True, False, True)
    ridge = run_phases(config(head="ridge"), "centralized")[0]
    assert not ridge.trains and ridge.evaluates, "the ridge head computes, then is evaluated"


PHASES = [
    PhaseSpec("head", 1, "all", evaluates=True, stream="head"),
    PhaseSpec("calibration", 2, "all", evaluates=False, stream="calibration"),
    PhaseSpec("train", 3, "head", evaluates=True, stream="train"),
]
EVERY_UNIT = [("head", 1), ("calibration", 1), ("calibration", 2), ("train", 1), ("train", 2), ("train", 3)]


@pytest.mark.parametrize("position", range(len(EVERY_UNIT) + 1))
def test_remaining_from_every_position_is_the_rest_of_the_run(position: int):
    # a position is (phase in progress, units of it done): after k units of the run, it is the k-th unit's phase
    # and index; at the very start, the first phase with none done
    phase, done = EVERY_UNIT[position - 1] if position else ("head", 0)
    got = [(spec.name, index) for spec, index in remaining(PHASES, phase, done)]
    assert got == EVERY_UNIT[position:]


def test_remaining_yields_the_phase_objects_and_skips_phases_without_units():
    phases = [PhaseSpec("calibration", 1, "all", False, "calibration"), PhaseSpec("train", 0, "none", True, "train")]
    assert list(remaining(phases, "calibration", 0)) == [(phases[0], 1)], "an edit-only run: no fine-tuning epoch"
    assert list(remaining(phases, "train", 0)) == []


def test_a_position_in_a_phase_the_config_lacks_is_refused():
    with pytest.raises(ValueError, match="in phase 'calibration', which this configuration does not have"):
        list(remaining(run_phases(config(), "federated"), "calibration", 1))


def test_evaluation_is_due_every_eval_every_units_and_at_each_evaluating_phases_end():
    c = config(head="probe", probe_rounds=3, mask_rule="least-sensitive", num_server_rounds=5, eval_every=2)
    head, calibration, train = run_phases(c, "federated")
    assert [i for i in range(1, 4) if evaluation_due(c, head, i)] == [2, 3]
    assert [i for i in range(1, 3) if evaluation_due(c, calibration, i)] == [], "calibration never evaluates"
    assert [i for i in range(1, 6) if evaluation_due(c, train, i)] == [2, 4, 5]
    every = config(eval_every=1)
    assert all(evaluation_due(every, run_phases(every, "centralized")[0], i) for i in range(1, 4))
