"""The mask file format: round trip, no pickle, corruption detected, the checks that a mask fits a run's model, and
a run directory's mask (no head) in the same format; the ``.npz`` layout of older run directories read."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedtalos.editing import mask_file as mf
from tests.support.masks import write_npz_mask


def model_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "cls_token": torch.randn(1, 1, 4, generator=g),
        "blocks.0.attn.qkv.weight": torch.randn(12, 4, generator=g),
        "blocks.0.attn.qkv.bias": torch.randn(12, generator=g),
        "head.weight": torch.zeros(3, 4),
        "head.bias": torch.zeros(3),
    }


def make(weights: dict[str, torch.Tensor], seed: int = 1) -> mf.MaskFile:
    g = torch.Generator().manual_seed(seed)
    mask = {k: torch.rand(v.shape, generator=g) < 0.3 for k, v in weights.items() if not k.startswith("head.")}
    head = {"head.weight": torch.randn(3, 4, generator=g), "head.bias": torch.randn(3, generator=g)}
    return mf.MaskFile(
        mask=mask,
        head=head,
        model="vit-tiny-test",
        weights_hash=mf.weights_hash(weights),
        rule="least-sensitive",
        sparsity=0.7,
        scope="global",
        rounds=2,
        samples=32,
        seed=0,
        head_kind="ridge",
        calibrated="centralized",
        config={"sparsity": 0.7},
    )


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, mf.MaskFile]:
    path = tmp_path / "m.safetensors"
    return path, mf.write(path, make(model_weights()))


def test_round_trip_keeps_mask_head_and_provenance(written):
    path, original = written
    back = mf.read(path)
    assert list(back.mask) == list(original.mask)
    assert all(torch.equal(back.mask[k], original.mask[k]) and back.mask[k].dtype == torch.bool for k in back.mask)
    assert all(torch.equal(back.head[k], original.head[k]) for k in mf.HEAD_KEYS)
    assert back.info() == original.info() and back.content_hash == original.content_hash != ""
    assert back.shapes == {k: tuple(v.shape) for k, v in model_weights().items() if not k.startswith("head.")}
    assert back.density() == pytest.approx(sum(int(m.sum()) for m in original.mask.values()) / (4 + 48 + 12))
    assert not path.with_name(path.name + ".tmp").exists(), "written atomically: no temporary file left"


def test_the_content_hash_names_the_contents(tmp_path: Path):
    weights = model_weights()
    a = mf.write(tmp_path / "a.safetensors", make(weights, seed=1))
    again = mf.write(tmp_path / "b.safetensors", make(weights, seed=1))
    other = mf.write(tmp_path / "c.safetensors", make(weights, seed=2))
    assert a.content_hash == again.content_hash != other.content_hash


def test_the_bits_are_packed_one_per_entry(written):
    path, _ = written
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        bits = f.get_tensor("bits")
        assert json.loads(f.metadata()["fedtalos"])["tensors"][0] == ["cls_token", [1, 1, 4]]
    assert bits.dtype == torch.uint8 and bits.numel() == (4 + 48 + 12 + 7) // 8


def test_a_changed_byte_anywhere_is_refused_as_corrupted(written):
    path, _ = written
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the tensor data (the head's)
    path.write_bytes(bytes(data))
    with pytest.raises(mf.MaskFileError, match="corrupted"):
        mf.read(path)


def test_edited_metadata_is_refused_as_corrupted(written):
    path, _ = written
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    info = json.loads(metadata["fedtalos"])
    info["sparsity"] = 0.5  # claims another sparsity than the mask was calibrated at
    save_file(tensors, str(path), metadata={**metadata, "fedtalos": json.dumps(info)})
    with pytest.raises(mf.MaskFileError, match="corrupted"):
        mf.read(path)


def test_truncated_pickled_and_foreign_files_are_refused(tmp_path: Path, written):
    path, _ = written
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(mf.MaskFileError, match="not a readable mask file"):
        mf.read(truncated)
    pickled = tmp_path / "p.safetensors"
    pickled.write_bytes(pickle.dumps({"bits": [1, 2, 3]}))  # never unpickled
    with pytest.raises(mf.MaskFileError, match="not a readable mask file"):
        mf.read(pickled)
    foreign = tmp_path / "f.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(mf.MaskFileError, match="not a fedtalos mask file"):
        mf.read(foreign)
    with pytest.raises(mf.MaskFileError, match="does not exist"):
        mf.read(tmp_path / "missing.safetensors")


def test_weights_hash_covers_the_backbone_and_ignores_the_head():
    weights = model_weights()
    base = mf.weights_hash(weights)
    assert mf.weights_hash({**weights, "head.weight": torch.ones(3, 4)}) == base
    nudged = weights["blocks.0.attn.qkv.bias"].clone()
    nudged[3] = torch.nextafter(nudged[3], torch.tensor(10.0))  # one entry, one ulp
    assert mf.weights_hash({**weights, "blocks.0.attn.qkv.bias": nudged}) != base
    assert mf.weights_hash(model_weights(seed=1)) != base


def test_a_fitting_mask_passes(written):
    mf.check_fits(mf.read(written[0]), "vit-tiny-test", model_weights())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, w: (dataclasses.replace(m, model="vit_small_patch16_224.dino"), w), "calibrated for model"),
        (lambda m, w: (m, {**w, "cls_token": torch.zeros(1, 1, 5)}), "other shapes"),
        (lambda m, w: (m, {**w, "blocks.1.norm.weight": torch.zeros(4)}), "not this model's scored tensors"),
        (lambda m, w: (m, {**w, "head.weight": torch.zeros(10, 4), "head.bias": torch.zeros(10)}), "head.weight"),
        (lambda m, w: (m, model_weights(seed=5)), "other starting weights"),
    ],
    ids=["model", "shapes", "tensors", "head", "weights"],
)
def test_a_mask_that_does_not_fit_is_refused_with_the_reason(written, change, message):
    found, weights = change(mf.read(written[0]), model_weights())
    with pytest.raises(mf.MaskFileError, match=message):
        mf.check_fits(found, "vit-tiny-test", weights)


def test_other_starting_weights_can_be_accepted_explicitly(written):
    mf.check_fits(mf.read(written[0]), "vit-tiny-test", model_weights(seed=5), any_weights=True)


def test_a_run_directory_mask_has_the_format_without_head_or_provenance(tmp_path: Path, written):
    _, original = written
    path = tmp_path / "mask.safetensors"
    digest = mf.write_mask(path, original.mask)
    back = mf.read_mask(path)
    assert list(back) == list(original.mask) and all(torch.equal(back[k], original.mask[k]) for k in back)
    assert len(digest) == 64
    full = mf.read_mask(written[0])  # the mask of a mask file, read the same way
    assert all(torch.equal(full[k], original.mask[k]) for k in full)
    with pytest.raises(mf.MaskFileError, match="without the head"):
        mf.read(path)  # mask-path needs the head the mask was calibrated with
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(mf.MaskFileError, match="corrupted"):
        mf.read_mask(path)


def test_the_npz_layout_of_older_run_directories_is_read(tmp_path: Path, written):
    _, original = written
    write_npz_mask(tmp_path / "mask.npz", original.mask)
    back = mf.read_npz_mask(tmp_path / "mask.npz")
    assert list(back) == list(original.mask) and all(torch.equal(back[k], original.mask[k]) for k in back)
