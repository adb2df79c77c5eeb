"""The train/validation split and the K client shards. All index arrays are int64 numpy arrays into the train
labels; every draw comes from a seeded stream of ``seeds.py``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedtalos.seeds import iid_shards_rng, noniid_shards_rng, split_rng

_REBALANCE_PASSES = 200


def _as_numpy(labels: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    return np.asarray(labels, dtype=np.int64)


def split_train_val(labels: np.ndarray | torch.Tensor, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation split of the train set.

    Each class gives ``round(val_fraction · n_c)`` of its samples to validation (the per-class counts are
    adjusted by largest remainder so the total is ``round(val_fraction · N)``). Returns sorted, disjoint index
    arrays that together cover ``range(N)``; the same seed gives the same split.
    """
    labels = _as_numpy(labels)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = split_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * val_fraction
    take = np.floor(exact).astype(np.int64)
    short = round(val_fraction * len(labels)) - int(take.sum())
    if short > 0:
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:short]] += 1
    val_parts = []
    for cls, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        val_parts.append(rng.permutation(members)[:k])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train.astype(np.int64), val.astype(np.int64)


def shard_iid(labels: np.ndarray | torch.Tensor, num_clients: int, seed: int) -> list[np.ndarray]:
    """IID sharding: disjoint, covering, client sizes differ by at most 1.

    Samples are ordered class by class (shuffled within each class) and dealt round-robin from a random
    starting client, so every client holds ⌊n_c/K⌋ or ⌈n_c/K⌉ samples of each class c: its class histogram is
    the global one up to one sample per class.
    """
    labels = _as_numpy(labels)
    n = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"cannot give {num_clients} clients at least one sample each from {n} samples")
    rng = iid_shards_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    owner = (np.arange(n) + rng.integers(num_clients)) % num_clients
    client_ids = rng.permutation(num_clients)  # which client gets which deal
    shards = [np.sort(order[owner == k]) for k in range(num_clients)]
    return [shards[i] for i in client_ids]


def shard_noniid(
    labels: np.ndarray | torch.Tensor, num_clients: int, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Non-IID sharding: every client holds exactly ``classes_per_client`` (Nc) distinct classes.

    Disjoint and covering; every class present in ``labels`` is used. Construction:

    1. K·Nc class slots are shared among the C classes in proportion to their sizes (largest remainder), each
       class getting between 1 and min(K, n_c) slots.
    2. The slots, listed class by class, are dealt round-robin to the K clients. A class has at most K slots and
       its slots are consecutive, so no client receives the same class twice: each gets exactly Nc classes.
    3. Each class's samples are split among its clients by water-filling (emptier clients get more, every client
       at least one sample of each of its classes), then every class is re-filled given all the others until
       nothing changes, which lowers the largest client further.

    Size guarantee: when all classes have the same size and C divides K·Nc (CIFAR-100 after the stratified
    split with K=100 and Nc ∈ {1, 5, 10, 50}, or K=1000 and Nc=1), client sizes differ by at most 1. With
    equal class sizes otherwise they differ by a few samples (tests check ≤ 2 on such cases). With unequal
    class sizes the data itself can forbid balance (Nc=1 and a class of 5 samples means a client of ≤ 5),
    so no fixed bound holds; the spread is logged with the run.

    Raises:
        ValueError: with the reason, when Nc > C, K·Nc < C (a class would be left out), K·Nc exceeds the slots
            the classes can hold (a class cannot give the same client two slots), or K > N.
    """
    labels = _as_numpy(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n, num_classes = len(labels), len(classes)
    k, nc = num_clients, classes_per_client
    if k < 1 or nc < 1:
        raise ValueError(f"num_clients and classes_per_client must be >= 1, got {k} and {nc}")
    if nc > num_classes:
        raise ValueError(f"classes_per_client = {nc} exceeds the {num_classes} classes in the data")
    if k > n:
        raise ValueError(f"cannot give {k} clients at least one sample each from {n} samples")
    if k * nc < num_classes:
        raise ValueError(
            f"{k} clients × {nc} classes each = {k * nc} class slots cannot cover all {num_classes} classes; "
            "raise num_clients or classes_per_client"
        )
    capacity = np.minimum(counts, k)  # a class can appear at most once per client and once per sample
    if k * nc > capacity.sum():
        raise ValueError(
            f"{k} clients × {nc} classes each need {k * nc} (client, class) pairs, but the classes can only "
            f"form {int(capacity.sum())} (each class at most once per client and at most once per sample)"
        )
    slots = _apportion(k * nc, counts, capacity)

    rng = noniid_shards_rng(seed)
    # Deal the classes with the most slots first: every client then gets a similar number of shared classes,
    # whose sample counts the water-filling below can adjust, and of whole classes, which it cannot.
    class_order = rng.permutation(num_classes)
    class_order = class_order[np.argsort(-slots[class_order], kind="stable")]
    slot_classes = np.repeat(class_order, slots[class_order])
    start = int(rng.integers(k))
    slot_clients = (np.arange(len(slot_classes)) + start) % k

    owners = {c: slot_clients[slot_classes == c] for c in class_order}
    amounts = {c: np.zeros(len(owners[c]), dtype=np.int64) for c in class_order}
    totals = np.zeros(k, dtype=np.int64)
    # Water-fill class by class, then re-fill each class given all the others (coordinate descent on the
    # largest client size) until nothing changes: a few passes suffice.
    for _ in range(_REBALANCE_PASSES):
        changed = False
        for c in class_order:
            totals[owners[c]] -= amounts[c]
            new = _water_fill(totals[owners[c]], int(counts[c]))
            changed |= not np.array_equal(new, amounts[c])
            amounts[c] = new
            totals[owners[c]] += new
        if not changed:
            break
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in class_order:
        members = rng.permutation(np.flatnonzero(labels == classes[c]))
        for owner, piece in zip(owners[c], np.split(members, np.cumsum(amounts[c])[:-1]), strict=True):
            parts[owner].append(piece)
    client_ids = rng.permutation(k)
    shards = [np.sort(np.concatenate(p)) for p in parts]
    return [shards[i] for i in client_ids]


def _apportion(total: int, counts: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Integers s_c in [1, capacity_c] summing to ``total``, proportional to ``counts`` (largest remainder)."""
    exact = total * counts / counts.sum()
    slots = np.clip(np.floor(exact).astype(np.int64), 1, capacity)
    while slots.sum() != total:
        if slots.sum() < total:
            room = np.flatnonzero(slots < capacity)
            slots[room[np.argmax((exact - slots)[room])]] += 1
        else:
            room = np.flatnonzero(slots > 1)
            slots[room[np.argmin((exact - slots)[room])]] -= 1
    return slots


def _water_fill(current: np.ndarray, amount: int) -> np.ndarray:
    """Split ``amount`` into len(current) parts >= 1 that bring the smallest ``current`` totals up first."""
    m = len(current)
    give = np.ones(m, dtype=np.int64)
    rest = amount - m
    level = current + give
    order = np.argsort(level, kind="stable")
    # Raise the lowest clients to a common level L, then spread the remainder one by one.
    sorted_level = level[order]
    for i in range(1, m + 1):
        target = sorted_level[i] if i < m else None
        need = 0 if target is None else int((target - sorted_level[:i]).sum())
        if target is None or need > rest:
            base, extra = divmod(rest + int(sorted_level[:i].sum()), i)
            new = np.full(i, base, dtype=np.int64)
            new[:extra] += 1
            give[order[:i]] += new - sorted_level[:i]
            return give
    return give  # pragma: no cover - loop always returns


def make_partitions(
    labels: np.ndarray | torch.Tensor, num_clients: int, partitioning: str, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Shard by name: ``'iid'`` or ``'noniid'`` (see :func:`shard_iid` and :func:`shard_noniid`)."""
    if partitioning == "iid":
        return shard_iid(labels, num_clients, seed)
    if partitioning == "noniid":
        return shard_noniid(labels, num_clients, classes_per_client, seed)
    raise ValueError(f"unknown partitioning {partitioning!r}")
