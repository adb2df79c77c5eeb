"""The checkpoint store: every kind of damage is detected and reported, the store falls back to the previous good
checkpoint, a failed write (disk full) leaves the earlier checkpoints byte for byte as they were, and loading
never runs code."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedtalos.tracking import checkpoint as ckpt_module
from fedtalos.tracking.checkpoint import CheckpointError, CheckpointStore

HASH = "cfg000000001"


def _tensors(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {"weights/a": torch.randn(4, 3, generator=g), "weights/b": torch.randn(7, generator=g)}


def _meta(step: int) -> dict:
    return {"step": step, "phase": "train", "phase_round": step, "rows": [{"round": step, "val_acc": 0.5}]}


def _store(directory: Path, keep: int = 2, config_hash: str = HASH) -> CheckpointStore:
    return CheckpointStore(directory, config_hash, keep=keep)


def _filled(directory: Path, steps: int = 2, keep: int = 2) -> CheckpointStore:
    store = _store(directory, keep)
    for step in range(1, steps + 1):
        store.save(step, _tensors(step), _meta(step))
    return store


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _MarkerPickle:
    """Unpickling this object creates ``path``: proof that a loader executed code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weights/a": _MarkerPickle(marker)})


def _rewrite_record(json_path: Path, **changes) -> None:
    """Edit a JSON companion *consistently*, as a deliberate forger would (record hash recomputed)."""
    record = json.loads(json_path.read_text())
    record.update(changes)
    record["record_sha256"] = ckpt_module._record_digest(record)
    json_path.write_text(json.dumps(record))


# ------------------------------------------------------------------------------------------- corruption kinds
def _truncate(tensor_path: Path, json_path: Path) -> None:
    tensor_path.write_bytes(tensor_path.read_bytes()[:-10])


def _flip_tensor_byte(tensor_path: Path, json_path: Path) -> None:
    data = bytearray(tensor_path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's values: still a valid safetensors file, with one value changed
    tensor_path.write_bytes(bytes(data))


def _empty_tensor_file(tensor_path: Path, json_path: Path) -> None:
    tensor_path.write_bytes(b"")


def _flip_json_value(tensor_path: Path, json_path: Path) -> None:
    # Valid JSON afterwards, just another phase_round: without the record's own hash this would resume silently
    # at the wrong round.
    text = json_path.read_text()
    assert '"phase_round": 2' in text
    json_path.write_text(text.replace('"phase_round": 2', '"phase_round": 3'))


def _truncate_json(tensor_path: Path, json_path: Path) -> None:
    json_path.write_bytes(json_path.read_bytes()[:-20])


def _delete_tensors(tensor_path: Path, json_path: Path) -> None:
    tensor_path.unlink()


def _delete_json(tensor_path: Path, json_path: Path) -> None:
    json_path.unlink()


def _foreign_config(tensor_path: Path, json_path: Path) -> None:
    # A checkpoint written by a run with another result-config hash (e.g. copied between run directories).
    tensor_path.unlink()
    json_path.unlink()
    _store(json_path.parent, config_hash="cfg999999999").save(2, _tensors(2), _meta(2))


def _pickle_instead_of_tensors(tensor_path: Path, json_path: Path) -> None:
    # padded to the recorded size (pickle ignores bytes after its STOP opcode), so only the hash can tell
    blob = malicious_pickle(json_path.parent.parent / "pwned")
    tensor_path.write_bytes(blob.ljust(tensor_path.stat().st_size, b"\0"))


CORRUPTIONS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    # name: (damage to checkpoint 2, what the warning must say)
    "truncated tensors": (_truncate, "(truncated?)"),
    "flipped tensor byte": (_flip_tensor_byte, "fails its SHA-256 check"),
    "empty tensor file": (_empty_tensor_file, "has 0 bytes"),
    "flipped json value": (_flip_json_value, "ckpt-000000002.json fails its SHA-256 check"),
    "truncated json": (_truncate_json, "unreadable metadata ckpt-000000002.json"),
    "missing tensor file": (_delete_tensors, "tensor file ckpt-000000002.safetensors is missing"),
    "missing json companion": (_delete_json, "companion ckpt-000000002.json is missing"),
    "another run config": (_foreign_config, "belongs to another run configuration"),
    "pickle instead of tensors": (_pickle_instead_of_tensors, "fails its SHA-256 check"),
}


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
    assert _equal(latest.tensors, _tensors(1)) and latest.meta == _meta(1)
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
    assert _equal(store.load(2).tensors, _tensors(2))


def test_format_1_records_without_their_own_hash_still_load(tmp_path: Path):
    # checkpoints written before records carried a hash: the tensor file is still verified by size and SHA-256
    store = _filled(tmp_path / "ckpt")
    tensor_path, json_path = store._paths(2)
    record = json.loads(json_path.read_text())
    del record["record_sha256"]
    json_path.write_text(json.dumps(dict(record, format=1)))
    assert _equal(store.load(2).tensors, _tensors(2))
    _flip_tensor_byte(tensor_path, json_path)
    with pytest.raises(CheckpointError, match="fails its SHA-256 check"):
        store.load(2)


def test_a_pickle_with_a_forged_record_is_still_never_unpickled(tmp_path: Path):
    # A forger who also rewrites the JSON (size, SHA-256, record hash) passes the checksums; the tensor file is
    # then parsed by safetensors, which has no code path that executes anything.
    store = _filled(tmp_path / "ckpt")
    tensor_path, json_path = store._paths(2)
    blob = malicious_pickle(tmp_path / "pwned")
    tensor_path.write_bytes(blob)
    _rewrite_record(json_path, tensors_bytes=len(blob), tensors_sha256=hashlib.sha256(blob).hexdigest())
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        store.load(2)
    assert store.latest().step == 1
    assert not (tmp_path / "pwned").exists()


def test_a_record_cannot_point_at_another_file(tmp_path: Path):
    store = _filled(tmp_path / "ckpt")
    _, json_path = store._paths(2)
    _rewrite_record(json_path, tensors_file="../../etc/passwd")
    with pytest.raises(CheckpointError, match="invalid fields"):
        store.load(2)


def test_no_usable_checkpoint_is_a_clear_error_and_deletes_nothing(tmp_path: Path):
    store = _filled(tmp_path / "ckpt")
    for step in (1, 2):
        _truncate(*store._paths(step))
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

        monkeypatch.setattr(ckpt_module.os, "fsync", fsync)
    else:
        store.fault_hook = _fail_at_stage(where.removeprefix("keep=1, "))
    with pytest.raises(CheckpointError) as e:
        store.save(3, _tensors(3), _meta(3))
    monkeypatch.undo()
    assert "No space left on device" in str(e.value)
    assert "previous checkpoints are intact" in str(e.value) and "run the same command again" in str(e.value)
    after = _files(tmp_path / "ckpt")
    assert {k: v for k, v in after.items() if k in before} == before, "earlier checkpoints byte for byte"
    assert not [n for n in after if n.endswith(".tmp")], "no temporary files left behind"
    assert set(after) - set(before) <= {"ckpt-000000003.safetensors"}, "at most the tensors of the failed write"
    latest = _store(tmp_path / "ckpt", keep).latest()
    assert latest.step == 2 and _equal(latest.tensors, _tensors(2)), "nothing was pruned for a failed write"
    # the next save, once there is space again, completes and replaces any leftover
    store.fault_hook = lambda stage, step: None
    store.save(3, _tensors(3), _meta(3))
    assert _store(tmp_path / "ckpt", keep).latest().step == 3


def test_pruning_keeps_the_newest_and_the_best(tmp_path: Path):
    store = _store(tmp_path / "ckpt", keep=2)
    for step, score in [(1, 0.2), (2, 0.9), (3, 0.1), (4, 0.3)]:
        store.save(step, _tensors(step), _meta(step), score=score)
    assert store.steps() == [2, 3, 4]
    assert store.best().step == 2
