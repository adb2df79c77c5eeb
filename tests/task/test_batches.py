"""Batched transforms and batch orders: equal to per-image references, reproducible from their generator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedtalos.seeds import make_generator
from fedtalos.task.batches import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, index_batches, iterate_batches
from fedtalos.task.cifar import load_cifar100
from fedtalos.testing.dispatch import count_transfers


def _reference_augment(img: torch.Tensor, oy: int, ox: int, flip: bool, pad: int = 4) -> torch.Tensor:
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    crop = padded[:, oy : oy + 32, ox : ox + 32]
    return crop.flip(-1) if flip else crop


def test_crop_and_flip_match_a_per_image_reference():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    transform = ImageTransform(32, train=True)
    out = transform._crop_and_flip(images, transform.draw(16, make_generator(5)))
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


def _per_step_batches(images, labels, transform, *, batch_size, generator=None, num_steps=None):
    """iterate_batches as it was before its draws were made up front: indices, crops and flips drawn batch by
    batch from the generator, interleaved, and crop indices built on the CPU."""

    def crop_and_flip(x):
        b, c, h, w = x.shape
        p = transform.padding
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator)
        flips = torch.rand(b, generator=generator) < 0.5
        rows = offsets[0, :, None] + torch.arange(h)
        cols = offsets[1, :, None] + torch.arange(w)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        bi, ci = torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None]
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]

    plain = ImageTransform(transform.image_size, train=False, channels_last=transform.channels_last)
    for idx in index_batches(len(labels), batch_size, generator=generator, num_steps=num_steps):
        x = images[idx]
        yield plain(crop_and_flip(x) if transform.train else x), labels[idx]


@pytest.mark.parametrize(
    "train, image_size, batch_size, seeded, num_steps",
    [
        (True, 32, 8, True, 7),  # J local steps, wrapping over permutations of 20 images
        (True, 48, 6, True, None),  # one shuffled pass (the centralized epoch), last batch smaller, resized
        (False, 32, 8, False, None),  # evaluation: in order, no augmentation
        (True, 32, 8, True, 0),
    ],
)
def test_draws_made_up_front_give_the_per_step_batches_bit_for_bit(train, image_size, batch_size, seeded, num_steps):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (20,), generator=g)
    transform = ImageTransform(image_size, train=train)
    gen_a, gen_b = (make_generator(3, 1, 4), make_generator(3, 1, 4)) if seeded else (None, None)
    kwargs = dict(batch_size=batch_size, num_steps=num_steps)
    ours = list(iterate_batches(images, labels, transform, generator=gen_a, **kwargs))
    before = list(_per_step_batches(images, labels, transform, generator=gen_b, **kwargs))
    assert len(ours) == len(before) == (num_steps if num_steps is not None else 20 // batch_size + 1)
    for (x, y), (x_ref, y_ref) in zip(ours, before, strict=True):
        assert torch.equal(x.view(torch.int32), x_ref.view(torch.int32)) and torch.equal(y, y_ref)
    if seeded:  # the same number of draws: whatever comes next from the generator is unchanged too
        assert torch.equal(gen_a.get_state(), gen_b.get_state())


@pytest.mark.parametrize("num_steps", [2, 9])
def test_the_batch_plan_reaches_the_device_in_one_copy_however_many_steps(num_steps):
    """Indices, crops and flips go to the device once per iterate_batches, not in copies at every step (the
    meta device stands in for a GPU: tensors with shapes and no data, moved by the same copy operators)."""
    images = torch.empty((20, 3, 32, 32), dtype=torch.uint8, device="meta")
    labels = torch.empty(20, dtype=torch.int64, device="meta")
    batches = []
    transfers = count_transfers(
        lambda: batches.extend(
            iterate_batches(
                images,
                labels,
                ImageTransform(32, train=True),
                batch_size=8,
                generator=make_generator(1),
                num_steps=num_steps,
            )
        )
    )
    assert len(batches) == num_steps and all(x.device.type == "meta" and x.shape == (8, 3, 32, 32) for x, _ in batches)
    assert transfers == {"cpu->meta": 1}
