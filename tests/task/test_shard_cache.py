"""A client's shard file: the same bytes as the shard cut in memory, mapped without loading the data set, and never
misread when stale, corrupted or truncated (it is cut and written again)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedtalos.config import RunConfig
from fedtalos.task import cifar, resources, shard_cache
from fedtalos.task.cifar import CIFAR_FOLDER
from fedtalos.task.resources import get_resources
from fedtalos.testing.synthetic import write_fake_cifar100
from tests.support.tiny import offline_tiny

PID = 1


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    root = write_fake_cifar100(tmp_path / "data", train_per_class=4, test_per_class=1)
    return RunConfig.from_mapping(offline_tiny(root, values={"num-clients": 4}))


def fresh_client(config: RunConfig) -> resources.Resources:
    """A new process's client resources (no cached data set, no cached resources)."""
    get_resources.cache_clear()
    cifar._load_cached.cache_clear()
    return get_resources(config, client=True)


def shard_file(config: RunConfig) -> Path:
    folder = Path(config.resolved_dataset_root()) / CIFAR_FOLDER
    return shard_cache.shard_path(folder, fresh_client(config).shard_identity(), PID)


def expected_shard(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    get_resources.cache_clear()
    return get_resources(config).client_data(PID)  # the in-memory shard, as a simulation's client cuts it


def no_data_set_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the whole data set was loaded")

    monkeypatch.setattr(cifar, "read_cifar100_folder", refuse)


def test_a_new_process_maps_the_same_shard_without_loading_the_data_set(config, monkeypatch):
    images, labels = expected_shard(config)
    first = fresh_client(config).client_data(PID)  # cuts the shard and writes its file
    no_data_set_load(monkeypatch)
    second = fresh_client(config).client_data(PID)
    for got in (first, second):
        assert torch.equal(got[0], images) and torch.equal(got[1], labels)
        assert got[0].dtype == torch.uint8 and got[1].dtype == torch.int64
    second[0][0, 0, 0, 0] ^= 1  # a copy-on-write map: the file keeps its bytes
    assert torch.equal(fresh_client(config).client_data(PID)[0], images)


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # a label byte
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-8])


def garbage(path: Path) -> None:
    path.write_bytes(b"not a shard")


def newer_source(path: Path) -> None:
    train = path.parent.parent / "train"
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))


@pytest.mark.parametrize("damage", [corrupt, truncate, garbage, newer_source])
def test_a_damaged_or_stale_shard_file_is_cut_again_never_misread(config, damage):
    images, labels = expected_shard(config)
    fresh_client(config).client_data(PID)
    path = shard_file(config)
    damage(path)
    folder = Path(config.resolved_dataset_root()) / CIFAR_FOLDER
    assert shard_cache.read_shard(folder, fresh_client(config).shard_identity(), PID, verified=False) is None
    got = fresh_client(config).client_data(PID)
    assert torch.equal(got[0], images) and torch.equal(got[1], labels)
    assert shard_cache.read_shard(folder, fresh_client(config).shard_identity(), PID, verified=False) is not None


def test_other_code_or_an_unverified_source_is_a_miss(config, monkeypatch):
    fresh_client(config).client_data(PID)
    folder = Path(config.resolved_dataset_root()) / CIFAR_FOLDER
    identity = fresh_client(config).shard_identity()
    assert shard_cache.read_shard(folder, identity, PID, verified=False) is not None
    assert shard_cache.read_shard(folder, identity, PID, verified=True) is None  # cut without an MD5 check
    assert shard_cache.read_shard(folder, {**identity, "seed": 1}, PID, verified=False) is None
    monkeypatch.setattr(shard_cache, "code_digest", lambda: "other code")
    assert shard_cache.read_shard(folder, identity, PID, verified=False) is None
