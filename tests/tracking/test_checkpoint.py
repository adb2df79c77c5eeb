"""The checkpoint store: every kind of damage is detected and reported, the store falls back to the previous good
checkpoint, a failed write (disk full) leaves the earlier checkpoints byte for byte as they were, and loading
never runs code."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedtalos.tracking.checkpoint import CheckpointError, CheckpointStore
from tests.support.corruptions import (
    CONFIG_HASH,
    CORRUPTIONS,
    checkpoint_meta,
    checkpoint_tensors,
    flip_tensor_byte,
    malicious_pickle,
    rewrite_record,
    truncate_tensors,
)


def _store(directory: Path, keep: int = 2, config_hash: str = CONFIG_HASH) -> CheckpointStore:
    return CheckpointStore(directory, config_hash, keep=keep)


def _filled(directory: Path, steps: int = 2, keep: int = 2) -> CheckpointStore:
    store = _store(directory, keep)
    for step in range(1, steps + 1):
        store.save(step, checkpoint_tensors(step), checkpoint_meta(step))
    return store


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    damage: str, tmp_path: Path, fedtalos_log: pytest.LogCaptureFixture
):
    store = _filled(tmp_path / "ckpt")
    tensor_path, json_path = store._paths(2)
    corrupt, message = CORRUPTIONS[damage]
    corrupt(tensor_path, json_path)
    latest = store.latest()
    assert latest is not None and latest.step == 1, "one step back, not further"
    assert _equal(latest.tensors, checkpoint_tensors(1)) and latest.meta == checkpoint_meta(1)
    assert message in fedtalos_log.text, fedtalos_log.text
    assert not (tmp_path / "pwned").exists()


def test_every_single_flipped_bit_of_a_json_companion_is_detected(tmp_path: Path):
    store = _filled(tmp_path / "ckpt")
    _, json_path = store._paths(2)
    original = json_path.read_bytes()
    for i in range(len(original)):
        data = bytearray(original)
        data[i] ^= 0x01
        json_path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError):
            store.load(2)
    json_path.write_bytes(original)
    assert _equal(store.load(2).tensors, checkpoint_tensors(2))


def test_format_1_records_without_their_own_hash_still_load(tmp_path: Path):
    # checkpoints written before records carried a hash: the tensor file is still verified by size and SHA-256
    store = _filled(tmp_path / "ckpt")
    tensor_path, json_path = store._paths(2)
    record = json.loads(json_path.read_text())
    del record["record_sha256"]
    json_path.write_text(json.dumps(dict(record, format=1)))
    assert _equal(store.load(2).tensors, checkpoint_tensors(2))
    flip_tensor_byte(tensor_path, json_path)
    with pytest.raises(CheckpointError, match="fails its SHA-256 check"):
        store.load(2)


def test_a_pickle_with_a_forged_record_is_still_never_unpickled(tmp_path: Path):
    # A forger who also rewrites the JSON (size, SHA-256, record hash) passes the checksums; the tensor file is
    # then parsed by safetensors, which has no code path that executes anything.
    store = _filled(tmp_path / "ckpt")
    tensor_path, json_path = store._paths(2)
    blob = malicious_pickle(tmp_path / "pwned")
    tensor_path.write_bytes(blob)
    rewrite_record(json_path, tensors_bytes=len(blob), tensors_sha256=hashlib.sha256(blob).hexdigest())
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        store.load(2)
    assert store.latest().step == 1
    assert not (tmp_path / "pwned").exists()


def test_a_record_cannot_point_at_another_file(tmp_path: Path):
    store = _filled(tmp_path / "ckpt")
    _, json_path = store._paths(2)
    rewrite_record(json_path, tensors_file="../../etc/passwd")
    with pytest.raises(CheckpointError, match="invalid fields"):
        store.load(2)


def test_no_usable_checkpoint_is_a_clear_error_and_deletes_nothing(tmp_path: Path):
    store = _filled(tmp_path / "ckpt")
    for step in (1, 2):
        truncate_tensors(*store._paths(step))
    before = _files(tmp_path / "ckpt")
    with pytest.raises(CheckpointError) as e:
        store.latest()
    text = str(e.value)
    assert "ckpt-000000001.safetensors" in text and "ckpt-000000002.safetensors" in text
    assert "resume=false" in text, "says what to do"
    assert _files(tmp_path / "ckpt") == before


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_at_stage(stage: str) -> Callable[[str], None]:
    def hook(current: str, step: int) -> None:
        if current == stage:
            _enospc()

    return hook


@pytest.mark.parametrize(
    "where", ["before-tensors", "writing-tensors", "after-tensors", "writing-json", "keep=1, after-tensors"]
)
def test_disk_full_while_writing_leaves_the_previous_checkpoints_intact(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    keep = 1 if where.startswith("keep=1") else 2
    store = _filled(tmp_path / "ckpt", keep=keep)
    before = _files(tmp_path / "ckpt")
    if where.startswith("writing-"):
        # the n-th fsync of a save: 1 = the tensor file's data, 3 = the JSON's (2 and 4 are the directory's)
        calls, fail_on = [0], 1 if where == "writing-tensors" else 3
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            calls[0] += 1
            if calls[0] == fail_on:
                _enospc()
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    else:
        store.fault_hook = _fail_at_stage(where.removeprefix("keep=1, "))
    with pytest.raises(CheckpointError) as e:
        store.save(3, checkpoint_tensors(3), checkpoint_meta(3))
    monkeypatch.undo()
    assert "No space left on device" in str(e.value)
    assert "previous checkpoints are intact" in str(e.value) and "run the same command again" in str(e.value)
    after = _files(tmp_path / "ckpt")
    assert {k: v for k, v in after.items() if k in before} == before, "earlier checkpoints byte for byte"
    assert not [n for n in after if n.endswith(".tmp")], "no temporary files left behind"
    assert set(after) - set(before) <= {"ckpt-000000003.safetensors"}, "at most the tensors of the failed write"
    latest = _store(tmp_path / "ckpt", keep).latest()
    assert latest.step == 2 and _equal(latest.tensors, checkpoint_tensors(2)), "nothing was pruned for a failed write"
    # the next save, once there is space again, completes and replaces any leftover
    store.fault_hook = lambda stage, step: None
    store.save(3, checkpoint_tensors(3), checkpoint_meta(3))
    assert _store(tmp_path / "ckpt", keep).latest().step == 3


def test_pruning_keeps_the_newest_and_the_best(tmp_path: Path):
    store = _store(tmp_path / "ckpt", keep=2)
    for step, score in [(1, 0.2), (2, 0.9), (3, 0.1), (4, 0.3)]:
        store.save(step, checkpoint_tensors(step), checkpoint_meta(step), score=score)
    assert store.steps() == [2, 3, 4]
    assert store.best().step == 2
