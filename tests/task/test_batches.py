"""Batched transforms and batch orders: equal to per-image references, reproducible from their generator."""

from __future__ import annotations

from pathlib import Path

import torch

from fedtalos.seeds import make_generator
from fedtalos.task.batches import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, index_batches, iterate_batches
from fedtalos.task.cifar import load_cifar100


def _reference_augment(img: torch.Tensor, oy: int, ox: int, flip: bool, pad: int = 4) -> torch.Tensor:
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    crop = padded[:, oy : oy + 32, ox : ox + 32]
    return crop.flip(-1) if flip else crop


def test_crop_and_flip_match_a_per_image_reference():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    transform = ImageTransform(32, train=True)
    out = transform._crop_and_flip(images, make_generator(5))
    g = make_generator(5)
    offsets = torch.randint(0, 9, (2, 16), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    for i in range(16):
        expected = _reference_augment(images[i], int(offsets[0, i]), int(offsets[1, i]), bool(flips[i]))
        assert torch.equal(out[i], expected)
    assert flips.any() and not flips.all()


def test_transform_is_reproducible_and_normalises():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    train = ImageTransform(64, train=True)
    a, b = train(images, make_generator(1, 2, 3)), train(images, make_generator(1, 2, 3))
    assert a.shape == (8, 3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(a, train(images, make_generator(1, 2, 4)))
    grey = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    out = ImageTransform(32, train=False)(grey)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[0, :, 0, 0], expected)


def test_index_batches_local_steps_are_full_and_cycle_permutations():
    batches = list(index_batches(10, 4, generator=make_generator(0), num_steps=5))
    assert [len(b) for b in batches] == [4] * 5
    flat = torch.cat(batches)
    assert sorted(flat[:10].tolist()) == list(range(10)), "the first 10 indices are one permutation"
    assert next(iter(index_batches(3, 8, generator=make_generator(0), num_steps=2))).numel() == 3


def test_index_batches_one_pass_covers_everything():
    batches = list(index_batches(10, 4))
    assert [len(b) for b in batches] == [4, 4, 2] and torch.equal(torch.cat(batches), torch.arange(10))


def test_iterate_batches_reproducible_from_seed_round_client(fake_cifar_root: Path):
    ds = load_cifar100(fake_cifar_root, download=False, verify=False)
    transform = ImageTransform(32, train=True)

    def run(*parts: int) -> list[torch.Tensor]:
        g = make_generator(*parts)
        batches = iterate_batches(ds.train_images, ds.train_labels, transform, batch_size=8, generator=g, num_steps=3)
        return [x for x, _ in batches]

    assert all(torch.equal(a, b) for a, b in zip(run(0, 1, 7), run(0, 1, 7), strict=True))
    assert not torch.equal(run(0, 1, 7)[0], run(0, 2, 7)[0])
