"""The mean folded as replies arrive equals the mean of the list, bit for bit, whatever the order of arrival."""

from __future__ import annotations

import itertools

import torch

from fedtalos.federation.aggregate import ClientUpdate, RunningMean, aggregate

REFERENCE = {"w": torch.zeros(3, 5), "b": torch.zeros(7)}


def _updates() -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(3)
    out = []
    for pid, n in ((2, 17), (5, 3), (9, 11), (12, 29)):
        tensors = {k: torch.randn(v.shape, generator=g) for k, v in REFERENCE.items()}
        distance = sum(float(torch.dist(v, REFERENCE[k])) ** 2 for k, v in tensors.items())
        out.append(ClientUpdate(pid, n, tensors, {"train-loss": 0.1 * pid}, distance))
    return out


def _counts(updates: list[ClientUpdate]) -> dict[int, int | None]:
    return {u.pid: u.num_examples for u in updates}


def test_any_order_of_arrival_gives_the_bits_of_aggregate():
    updates = _updates()
    expected = aggregate(updates, REFERENCE, coordinates=50)
    for order in itertools.permutations(updates):
        running = RunningMean()
        for update in order:
            running.offer(update, REFERENCE, _counts(updates))
        assert running.complete
        got = running.result(REFERENCE, coordinates=50)
        assert all(torch.equal(got.average[k], expected.average[k]) for k in expected.average)
        assert list(got.average) == list(expected.average)
        assert (got.drift, got.metrics, got.num_examples) == (expected.drift, expected.metrics, expected.num_examples)


def test_a_missing_client_leaves_the_mean_incomplete():
    updates = _updates()
    running = RunningMean()
    for update in updates[1:]:  # the lowest pid never answers: nothing can be folded
        running.offer(update, REFERENCE, _counts(updates))
    assert not running.complete and not running.average


def test_an_unexpected_count_or_an_unknown_one_makes_it_unusable():
    updates = _updates()
    counts = _counts(updates)
    running = RunningMean()
    running.offer(updates[0], REFERENCE, {**counts, updates[0].pid: updates[0].num_examples + 1})
    assert not running.complete
    unknown = RunningMean()
    for update in updates:
        unknown.offer(update, REFERENCE, {**counts, 12: None})
    assert not unknown.complete
    twice = RunningMean()
    for update in [*updates, updates[0]]:
        twice.offer(update, REFERENCE, counts)
    assert not twice.complete
