"""Every random stream of the project, with its tag, in one place.

A stream's seed is :func:`derive_seed` of the run's ``seed`` and the stream's tags (and, where it recurs, the round,
epoch or client), so each draw is a pure function of where it happens: a resumed run replays the same cohorts,
batches, samples and labels, and no two streams share a seed. Changing a tag below changes every result that
depends on it; add new streams with new tags instead.

| stream | seeded from | used by |
|---|---|---|
| validation split | seed, ``SPLIT`` | ``task.partition.split_train_val`` |
| iid / non-iid shards | seed, ``IID_SHARDS`` / ``NONIID_SHARDS`` | ``task.partition.shard_iid`` / ``shard_noniid`` |
| head initialisation | seed (torch's global RNG) | ``task.resources`` |
| cohort of a federated round | seed, stream code, round, ``COHORT`` | ``federation.cohort.sample_cohort`` |
| a client's batches (order, augmentation) | seed, stream code, round, client | ``client_app.train`` |
| a client's calibration samples | seed, calibration code, round, client | ``editing.scoring`` |
| fixed calibration: cohort, samples | seed, ``FIXED_CALIBRATION`` (, client) | ``federation.cohort``, ``scoring`` |
| a client's sampled Fisher labels | seed, calibration code, round, client, ``LABELS`` | ``editing.scoring`` |
| federated random mask rule | seed | ``federation.calibration`` |
| centralized torch RNG at a fresh start | seed, ``CENTRAL`` | ``central.trainer`` |
| centralized epoch (order, augmentation) | seed, ``CENTRAL``, phase code, epoch | ``central.trainer`` |
| centralized calibration samples | seed, ``CENTRAL``, calibration code, round | ``central.head_and_mask`` |
| centralized samples of a fixed calibration | seed, ``CENTRAL``, ``FIXED_CALIBRATION`` | ``central.head_and_mask`` |
| mask-agreement iid subsets (noise floor) | seed, ``AGREEMENT``, subset (, round, ``LABELS``) | ``study.agreement`` |
| centralized labels / random mask rule | seed, ``CENTRAL``, calibration code | ``central.head_and_mask`` |
| search proposals (Optuna TPE) | seed, trials so far | ``study.search`` |
| DP noise of the n-th noised aggregate | seed, ``DP_NOISE``, n | ``strategies.dp`` |
"""

from __future__ import annotations

import numpy as np
import torch

# Tags (arbitrary constants; their values decide every result, so they never change).
SPLIT = 0x5E11
IID_SHARDS = 0x11D
NONIID_SHARDS = 0x2011D
COHORT = 0xC0407
CENTRAL = 0xCE47
LABELS = 1
# Codes of the federated streams. A stream is not a phase: the 'head' phase's rounds draw from 'probe' (linear
# probing) and the round config names the stream the client draws from.
FEDERATED_STREAMS = {"head": 1, "calibration": 2, "train": 3, "probe": 4, "evaluate": 5}
# Phase codes of the centralized streams.
CENTRAL_PHASES = {"head": 1, "calibration": 2, "train": 3}
# The one draw of a calibration that scores the same cohort and samples in every round (``calibration-redraw =
# false``): a code of its own, distinct from the stream and phase codes above, so it shares no seed with a round's.
FIXED_CALIBRATION = 6
AGREEMENT = 0xA64EE
DP_NOISE = 0xD90153


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (e.g. (seed, round, client)); stable across platforms."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def make_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``parts`` (see :func:`derive_seed`)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


# ------------------------------------------------------------------------------------------------ data
def split_rng(seed: int) -> np.random.Generator:
    """The stratified train/validation split."""
    return np.random.default_rng(derive_seed(seed, SPLIT))


def iid_shards_rng(seed: int) -> np.random.Generator:
    """The iid sharding of the train split."""
    return np.random.default_rng(derive_seed(seed, IID_SHARDS))


def noniid_shards_rng(seed: int) -> np.random.Generator:
    """The non-iid sharding of the train split (class choice and apportioning)."""
    return np.random.default_rng(derive_seed(seed, NONIID_SHARDS))


# ------------------------------------------------------------------------------------------------ federated
def cohort_rng(seed: int, stream: str, round_index: int) -> np.random.Generator:
    """The clients sampled in round ``round_index`` of ``stream`` ('train', 'probe', 'calibration', 'evaluate')."""
    return np.random.default_rng(derive_seed(seed, FEDERATED_STREAMS[stream], round_index, COHORT))


def client_generator(seed: int, stream: str, round_index: int, pid: int) -> torch.Generator:
    """Client ``pid``'s draws in a round: batch order and augmentation ('train', 'probe'), or the calibration
    samples ('calibration')."""
    return make_generator(seed, FEDERATED_STREAMS[stream], round_index, pid)


def calibration_cohort_rng(seed: int, round_index: int | None) -> np.random.Generator:
    """The calibration cohort: of round ``round_index`` when every round redraws it, or (None) the one cohort of a
    fixed calibration."""
    if round_index is not None:
        return cohort_rng(seed, "calibration", round_index)
    return np.random.default_rng(derive_seed(seed, FIXED_CALIBRATION, 0, COHORT))


def calibration_sample_generator(seed: int, round_index: int | None, pid: int) -> torch.Generator:
    """Client ``pid``'s calibration samples: of round ``round_index`` when every round redraws them, or (None) the
    one sample set of a fixed calibration."""
    if round_index is not None:
        return client_generator(seed, "calibration", round_index, pid)
    return make_generator(seed, FIXED_CALIBRATION, 0, pid)


def client_label_seed(seed: int, round_index: int, pid: int) -> int:
    """Client ``pid``'s sampled Fisher labels in calibration round ``round_index`` (a generator on its device)."""
    return derive_seed(seed, FEDERATED_STREAMS["calibration"], round_index, pid, LABELS)


def federated_random_mask_seed(seed: int) -> int:
    """The subset of the federated 'random' mask rule."""
    return seed


def dp_noise_generator(seed: int, release: int) -> torch.Generator:
    """The Gaussian noise of the ``release``-th noised aggregate of a run (0-based; the count is checkpointed)."""
    return make_generator(seed, DP_NOISE, release)


# ------------------------------------------------------------------------------------------------ centralized
def central_start_seed(seed: int) -> int:
    """torch's global RNG at the start of a fresh centralized run (a run never depends on the process's past)."""
    return derive_seed(seed, CENTRAL)


def central_epoch_generator(seed: int, phase: str, epoch: int) -> torch.Generator:
    """A centralized epoch's batch order and augmentation."""
    return make_generator(seed, CENTRAL, CENTRAL_PHASES[phase], epoch)


def central_calibration_generator(seed: int, round_index: int | None) -> torch.Generator:
    """The train images scored in centralized calibration round ``round_index`` (0-based), or (None) the one sample
    set of a fixed calibration."""
    if round_index is None:
        return make_generator(seed, CENTRAL, FIXED_CALIBRATION)
    return make_generator(seed, CENTRAL, CENTRAL_PHASES["calibration"], round_index)


def central_calibration_seed(seed: int) -> int:
    """The centralized calibration's label draws (continuing across rounds) or its 'random' rule."""
    return derive_seed(seed, CENTRAL, CENTRAL_PHASES["calibration"])


# ------------------------------------------------------------------------------------------------ study
def agreement_subset_generator(seed: int, subset: int) -> torch.Generator:
    """Which pooled calibration samples iid subset ``subset`` of the mask-agreement noise floor holds."""
    return make_generator(seed, AGREEMENT, subset)


def agreement_label_seed(seed: int, subset: int, round_index: int) -> int:
    """The sampled Fisher labels of iid subset ``subset`` in calibration round ``round_index``."""
    return derive_seed(seed, AGREEMENT, subset, round_index, LABELS)


def search_sampler_seed(seed: int, trials_so_far: int) -> int:
    """Optuna's TPE sampler of a search continued after ``trials_so_far`` trials (32 bits)."""
    return derive_seed(seed, trials_so_far) % 2**32
