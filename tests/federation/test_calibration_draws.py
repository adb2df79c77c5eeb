"""Which clients and samples a federated calibration scores: by default the same ones in every round (TaLoS
re-scores the same data); with ``calibration-redraw`` a fresh cohort and fresh samples per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fedtalos.config import RunConfig
from fedtalos.editing import scoring
from fedtalos.federation import protocol as P
from fedtalos.federation.calibration import calibration_classes
from fedtalos.federation.cohort import calibration_cohort, sample_cohort
from fedtalos.task.resources import get_resources
from fedtalos.tracking.metrics import read_rows
from tests.support.fakegrid import run_server

pytestmark = pytest.mark.usefixtures("flower_task_identity")

ROUNDS = 3
EDIT = {
    "head": "ridge",
    "mask-rule": "least-sensitive",
    "calibration-rounds": ROUNDS,
    "calibration-fraction": 0.2,  # 2 of the 10 clients
    "fisher-samples": 8,
    "num-server-rounds": 1,
}


def _calibrate(values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[list, dict]:
    """Run the server against the real ClientApp; (cohort per round, (pid, round) → the sample indices scored)."""
    scored: dict[tuple[int, int], torch.Tensor] = {}
    draw = scoring.calibration_samples

    def recording(config: RunConfig, shard_size: int, round_index: int, pid: int) -> torch.Tensor:
        scored[pid, round_index] = take = draw(config, shard_size, round_index, pid)
        return take

    monkeypatch.setattr(scoring, "calibration_samples", recording)
    _, grid = run_server(values)
    cohorts: dict[int, list[int]] = {}
    for message in grid.sent:
        if message.metadata.message_type == P.FISHER:
            round_index = int(message.content[P.CONFIG]["round"])
            cohorts.setdefault(round_index, []).append(grid.pid_of[message.metadata.dst_node_id])
    return [sorted(cohorts[r]) for r in range(1, ROUNDS + 1)], scored


def test_the_default_scores_one_cohort_and_one_sample_set_in_every_round(tiny_run_config, monkeypatch):
    values = {**tiny_run_config, **EDIT}
    cohorts, scored = _calibrate(values, monkeypatch)
    config = RunConfig.from_mapping(values)
    assert not config.calibration_redraw, "the default"
    assert cohorts == [calibration_cohort(config, 1)] * ROUNDS and len(cohorts[0]) == 2
    assert sorted(scored) == [(pid, r) for pid in cohorts[0] for r in range(1, ROUNDS + 1)]
    for pid in cohorts[0]:
        first = scored[pid, 1]
        assert len(first) == 8 and len(set(first.tolist())) == 8
        assert all(torch.equal(first, scored[pid, r]) for r in range(2, ROUNDS + 1)), f"client {pid}: new samples"


def test_calibration_redraw_draws_a_new_cohort_and_new_samples_per_round(tiny_run_config, monkeypatch):
    values = {**tiny_run_config, **EDIT, "calibration-redraw": True}
    cohorts, scored = _calibrate(values, monkeypatch)
    # the behaviour before the fixed default, bit for bit: the cohort of (seed, 'calibration', round)
    assert cohorts == [sample_cohort(0, "calibration", r, 10, 2) for r in range(1, ROUNDS + 1)]
    assert len({tuple(c) for c in cohorts}) > 1, "the cohort changes between rounds"
    again = [(pid, r) for pid, r in scored if (pid, r + 1) in scored]
    assert again, "some client scores in two consecutive rounds (seed 0)"
    for pid, r in again:
        assert not torch.equal(scored[pid, r], scored[pid, r + 1]), f"client {pid} re-scored the same samples"
    _rows_name_the_classes_scored(values, scored)


def _rows_name_the_classes_scored(values: dict[str, Any], scored: dict) -> None:
    """Each calibration row names the classes of the samples its cohort scored, and how many so far."""
    run_dir = Path(values["output-root"]) / values["run-name"]
    rows = [r for r in read_rows(run_dir) if r["phase"] == "calibration"]
    config = RunConfig.from_mapping(values)
    resources = get_resources(config, pretrained=True)
    labels = resources.data.train_labels.numpy()[resources.train_idx]
    union: set[int] = set()
    for row in rows:
        r = row["round"]
        scored_labels = {
            int(y) for (pid, rr), take in scored.items() if rr == r for y in labels[resources.partitions[pid]][take]
        }
        assert row["calibration_class_ids"] == " ".join(map(str, sorted(scored_labels)))
        assert row["calibration_classes"] == len(scored_labels)
        assert scored_labels == set(calibration_classes(config, labels, resources.partitions, r))
        union |= scored_labels
        assert row["calibration_classes_seen"] == len(union)
