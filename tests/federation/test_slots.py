"""Shared-memory slots: overwritten in place, read only whole, only for the payload and partition asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedtalos.federation import slots


def _tensors(scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4) * scale,
        "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16) * scale,
        "n": torch.tensor([7, 8, 9], dtype=torch.int64),
        "e": torch.empty(0, 5),
    }


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_a_slot_is_overwritten_in_place_and_read_bit_for_bit(tmp_path: Path):
    path, reader = tmp_path / "up-0.slot", slots.Reader()
    slots.write(path, _tensors(), sequence=11, pid=4)
    inode = path.stat().st_ino
    assert _equal(reader.read(path, 11, pid=4)[0], _tensors())
    slots.write(path, {"w": _tensors(3.0)["w"]}, sequence=12, pid=4)  # smaller payload, same file
    read, size = reader.read(path, 12, pid=4)
    assert _equal(read, {"w": _tensors(3.0)["w"]}) and size < path.stat().st_size
    slots.write(path, {**_tensors(), "big": torch.ones(1000)}, sequence=13, pid=4)  # the slot grows
    assert _equal(reader.read(path, 13, pid=4)[0], {**_tensors(), "big": torch.ones(1000)})
    assert path.stat().st_ino == inode, "never a new file"


def test_a_stale_or_foreign_payload_is_refused(tmp_path: Path):
    path, reader = tmp_path / "up-0.slot", slots.Reader()
    slots.write(path, _tensors(), sequence=21, pid=2)
    with pytest.raises(slots.SlotError, match="another payload"):
        reader.read(path, 22, pid=2)  # the previous round's upload is still there
    with pytest.raises(slots.SlotError, match="partition 2, not 3"):
        reader.read(path, 21, pid=3)


def test_a_writer_killed_mid_write_leaves_a_slot_nobody_takes(tmp_path: Path, monkeypatch):
    path, reader = tmp_path / "weights.slot", slots.Reader()
    slots.write(path, _tensors(), sequence=31)

    def killed(fd, views, offset):
        raise KeyboardInterrupt  # the process dies between the first and the last header write

    monkeypatch.setattr(slots, "_write_all", killed)
    with pytest.raises(KeyboardInterrupt):
        slots.write(path, _tensors(2.0), sequence=32)
    for sequence in (31, 32):
        with pytest.raises(slots.SlotError, match="incomplete"):
            reader.read(path, sequence)
    monkeypatch.undo()
    slots.write(path, _tensors(2.0), sequence=32)  # the retry's write
    assert _equal(reader.read(path, 32)[0], _tensors(2.0))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:40], "empty slot|index beyond"),
        (lambda b: b"NOTASLOT" + b[8:], "not a slot file"),
        (lambda b: b[:64] + b"{not json" + b[73:], "garbled index"),
        (lambda b: b[: len(b) - 16], "beyond the end"),
    ],
    ids=["truncated header", "magic", "index", "truncated data"],
)
def test_garbage_in_a_slot_is_a_slot_error(tmp_path: Path, damage, reason: str):
    path = tmp_path / "up-1.slot"
    slots.write(path, _tensors(), sequence=41, pid=1)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(slots.SlotError, match=reason):
        slots.Reader().read(path, 41, pid=1)


def test_a_reader_that_does_not_reuse_hands_out_tensors_the_caller_keeps(tmp_path: Path):
    path, reader = tmp_path / "up-0.slot", slots.Reader(reuse=False)
    slots.write(path, _tensors(), sequence=51, pid=0)
    first, _ = reader.read(path, 51, pid=0)
    slots.write(path, _tensors(5.0), sequence=52, pid=0)
    second, _ = reader.read(path, 52, pid=0)
    assert _equal(first, _tensors()) and _equal(second, _tensors(5.0))


def test_a_process_reads_the_global_weights_of_a_payload_once(tmp_path: Path):
    path, reader = tmp_path / "weights.slot", slots.Reader()
    slots.write(path, _tensors(), sequence=61)
    first, _ = reader.read(path, 61)
    path.unlink()  # a second client of the round, served by the same process: no file access
    again, _ = reader.read(path, 61)
    assert again is first and _equal(again, _tensors())
    slots.write(path, _tensors(2.0), sequence=62)  # the next round's payload is read from the slot
    assert _equal(reader.read(path, 62)[0], _tensors(2.0))
