"""The classes a federated calibration saw (the calibration rows' ``calibration_class*`` values), on a synthetic
federation whose shards' classes are known: planning only, no model."""

from __future__ import annotations

import numpy as np

from fedtalos.config import RunConfig
from fedtalos.federation.calibration import calibration_classes
from fedtalos.federation.cohort import calibration_cohort
from fedtalos.task.partition import make_partitions

LABELS = np.repeat(np.arange(100), 60)  # 100 classes × 60 images


def _federation(**values):
    config = RunConfig.from_mapping(
        {"partitioning": "noniid", "classes-per-client": 1, "head": "ridge", "mask-rule": "least-sensitive"} | values
    )
    partitions = make_partitions(LABELS, config.num_clients, config.partitioning, config.classes_per_client, 0)
    return config, partitions


def _shard_classes(partitions, pids) -> set[int]:
    return {int(y) for pid in pids for y in np.unique(LABELS[partitions[pid]])}


def test_at_nc1_a_fixed_cohort_sees_the_classes_of_its_ten_clients_in_every_round():
    config, partitions = _federation(**{"fisher-samples": 8})
    cohort = calibration_cohort(config, 1)
    expected = _shard_classes(partitions, cohort)
    assert len(cohort) == 10 and len(expected) == 10, "one class per client"
    for r in (1, 2, 3, 4):
        assert calibration_classes(config, LABELS, partitions, r) == sorted(expected)


def test_a_redrawn_or_full_cohort_covers_more_classes():
    redraw, partitions = _federation(**{"fisher-samples": 8, "calibration-redraw": True})
    seen = set().union(*(calibration_classes(redraw, LABELS, partitions, r) for r in (1, 2, 3, 4)))
    cohorts = [calibration_cohort(redraw, r) for r in (1, 2, 3, 4)]
    assert seen == _shard_classes(partitions, {p for c in cohorts for p in c}) and len(seen) > 10
    full, partitions = _federation(**{"fisher-samples": 6, "calibration-fraction": 1.0})
    assert calibration_classes(full, LABELS, partitions, 1) == list(range(100))


def test_the_classes_are_those_of_the_scored_samples_not_of_the_whole_shard():
    config, partitions = _federation(**{"classes-per-client": 50, "fisher-samples": 2})
    seen = calibration_classes(config, LABELS, partitions, 1)
    shards = _shard_classes(partitions, calibration_cohort(config, 1))
    assert set(seen) <= shards and len(seen) <= 2 * config.calibration_cohort_size < len(shards)
