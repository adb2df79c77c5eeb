"""Shared-memory slots: mapped once, overwritten in place, read only whole, only for the payload and partition asked
for, never changed under a reader that holds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedtalos.federation import shared_memory


def _tensors(scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4) * scale,
        "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16) * scale,
        "n": torch.tensor([7, 8, 9], dtype=torch.int64),
        "e": torch.empty(0, 5),
        "t": torch.arange(6, dtype=torch.float32).reshape(2, 3).t() * scale,  # not contiguous
    }


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_a_slot_is_overwritten_in_place_and_read_bit_for_bit(tmp_path: Path):
    path = tmp_path / "up-0.slot"
    writer, reader = shared_memory.Slot(path, create=True), shared_memory.Slot(path)
    writer.write(_tensors(), sequence=11, pid=4)
    inode = path.stat().st_ino
    assert _equal(reader.read(11, pid=4)[0], _tensors())
    writer.write({"w": _tensors(3.0)["w"]}, sequence=12, pid=4)  # smaller payload, same file
    read, size = reader.read(12, pid=4)
    assert _equal(read, {"w": _tensors(3.0)["w"]}) and size < path.stat().st_size
    bigger = {**_tensors(), "big": torch.ones(100_000)}
    writer.write(bigger, sequence=13, pid=4)  # the slot grows: both sides map it anew
    assert _equal(reader.read(13, pid=4)[0], bigger)
    assert path.stat().st_ino == inode, "never a new file"


def test_a_reader_takes_views_of_the_slot_not_copies(tmp_path: Path):
    path = tmp_path / "weights.slot"
    writer, reader = shared_memory.Slot(path, create=True), shared_memory.Slot(path)
    writer.write(_tensors(), sequence=5)
    with reader.holding():
        first, _ = reader.read(5)
    writer.write(_tensors(2.0), sequence=6)  # the next payload, written in place
    assert _equal(first, _tensors(2.0)), "the views show what the slot holds now: they are the slot"
    assert all(t.is_contiguous() and t.data_ptr() % shared_memory.ALIGN == 0 for t in first.values() if t.numel())


def test_views_of_a_mapping_outlive_the_slot_growing(tmp_path: Path):
    path = tmp_path / "up-0.slot"
    writer, reader = shared_memory.Slot(path, create=True), shared_memory.Slot(path)
    writer.write(_tensors(), sequence=1, pid=0)
    old, _ = reader.read(1, pid=0)
    writer.write({"big": torch.ones(200_000)}, sequence=2, pid=0)
    assert torch.equal(reader.read(2, pid=0)[0]["big"], torch.ones(200_000))
    assert old["w"].shape == (3, 4) and float(old["w"].sum()) == float(old["w"].sum())  # still mapped: no crash


def test_a_stale_or_foreign_payload_is_refused(tmp_path: Path):
    path = tmp_path / "up-0.slot"
    shared_memory.Slot(path, create=True).write(_tensors(), sequence=21, pid=2)
    reader = shared_memory.Slot(path)
    with pytest.raises(shared_memory.SlotError, match="another payload"):
        reader.read(22, pid=2)  # the previous round's upload is still there
    with pytest.raises(shared_memory.SlotError, match="partition 2, not 3"):
        reader.read(21, pid=3)


def test_a_writer_killed_mid_write_leaves_a_slot_nobody_takes(tmp_path: Path, monkeypatch):
    path = tmp_path / "weights.slot"
    writer = shared_memory.Slot(path, create=True)
    writer.write(_tensors(), sequence=31)

    def killed(views, tensors):
        raise KeyboardInterrupt  # the process dies between the first and the last header write

    monkeypatch.setattr(shared_memory, "_copy_into", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.write(_tensors(2.0), sequence=32)
    for sequence in (31, 32):
        with pytest.raises(shared_memory.SlotError, match="incomplete"):
            shared_memory.Slot(path).read(sequence)
    monkeypatch.undo()
    writer.write(_tensors(2.0), sequence=32)  # the retry's write (the lock was let go)
    assert _equal(shared_memory.Slot(path).read(32)[0], _tensors(2.0))


def test_a_held_slot_is_not_written_under_its_reader(tmp_path: Path):
    path = tmp_path / "up-3.slot"
    client, server = shared_memory.Slot(path, create=True), shared_memory.Slot(path)
    client.write(_tensors(), sequence=41, pid=3)
    server.hold()
    views, _ = server.read(41, pid=3)
    with pytest.raises(shared_memory.SlotBusy):
        client.write(_tensors(9.0), sequence=42, pid=3, wait=False)  # a late writer
    assert _equal(views, _tensors()) and _equal(server.read(41, pid=3)[0], _tensors())
    server.release()
    client.write(_tensors(9.0), sequence=42, pid=3, wait=False)
    assert _equal(server.read(42, pid=3)[0], _tensors(9.0))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:40], "empty slot"),
        (lambda b: b"NOTASLOT" + b[8:], "not a slot file"),
        (lambda b: b[:64] + b"{not json" + b[73:], "garbled index"),
        (lambda b: b[: len(b) - 16], "beyond the end"),
    ],
    ids=["truncated header", "magic", "index", "truncated data"],
)
def test_garbage_in_a_slot_is_a_slot_error(tmp_path: Path, damage, reason: str):
    path = tmp_path / "up-1.slot"
    shared_memory.Slot(path, create=True).write(_tensors(), sequence=41, pid=1)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(shared_memory.SlotError, match=reason):
        shared_memory.Slot(path).read(41, pid=1)


def test_a_pinned_slot_registers_each_mapping_and_unregisters_it_before_it_goes(tmp_path: Path, monkeypatch):
    registered: dict[int, int] = {}  # address → bytes, as CUDA would hold them

    def lock(data: torch.Tensor) -> bool:
        registered[data.data_ptr()] = data.numel()
        return True

    monkeypatch.setattr(shared_memory, "_page_lock", lock)
    monkeypatch.setattr(shared_memory, "_page_unlock", lambda data: registered.pop(data.data_ptr()))
    path = tmp_path / "up-0.slot"
    slot = shared_memory.Slot(path, create=True, pin=True)
    slot.write(_tensors(), sequence=1)
    assert slot.pinned and list(registered.values()) == [path.stat().st_size], "the whole mapping, once"
    slot.write({"big": torch.ones(100_000)}, sequence=2)  # grows: a new mapping
    assert list(registered.values()) == [path.stat().st_size], "the old mapping was unregistered"
    slot.close()
    assert registered == {}
    shared_memory.Slot(path, create=True).write(_tensors(), sequence=3)
    assert registered == {}, "an unpinned slot registers nothing"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the pinned path is forced on the CPU above)")
def test_on_cuda_a_pinned_slot_takes_an_upload_from_the_device_and_gives_weights_back_in_one_copy(tmp_path: Path):
    from fedtalos.task.staging import WeightStaging

    torch.cuda.init()
    model = torch.nn.Linear(64, 32).cuda()
    upload = {n: p.detach() * 2 for n, p in model.named_parameters()}
    slot = shared_memory.Slot(tmp_path / "up-0.slot", create=True, pin=True)
    slot.write(upload, sequence=7, pid=0)  # straight from the device into page-locked shared memory
    assert slot.pinned
    views, _ = slot.read(7, pid=0)
    assert all(torch.equal(views[n].cuda(), v) for n, v in upload.items())
    stager = WeightStaging()
    stager.load(model, views, key=("up-0.slot", 7))
    assert stager._global_buffer is not None and stager._global_buffer.is_cuda, "one copy of the region"
    assert all(torch.equal(p.detach(), upload[n]) for n, p in model.named_parameters())
    slot.close()
    assert not slot.pinned
