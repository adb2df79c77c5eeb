"""Batches on the model's device: cut, augmented (random crop with 4-pixel zero padding + horizontal flip), resized
to the model's resolution and normalised with the model's statistics on whole tensors; all randomness comes from an
explicit ``torch.Generator``, so a client's batches are a pure function of (seed, round, client)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageTransform:
    """Batched preprocessing on the images' device: (B,3,32,32) uint8 → (B,3,S,S) float, (x/255 − mean)/std.

    ``mean`` / ``std``: per RGB channel in [0, 1] units, those the model was pretrained with
    (:func:`fedtalos.task.model.input_normalisation`; ImageNet's by default).

    With ``train=True`` each image gets a random crop from its 4-pixel zero-padded version and a random
    horizontal flip (probability 1/2), drawn from the given CPU generator so results do not depend on the device.
    """

    image_size: int
    train: bool
    padding: int = 4
    channels_last: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None, *, draws: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Transform a batch; with ``train=True`` its crops and flips are ``draws`` (see :meth:`draw`, on any
        device), or drawn here from ``generator``."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected a uint8 batch (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if self.train:
            images = self._crop_and_flip(images, self.draw(len(images), generator) if draws is None else draws)
        x = images.float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        scale, shift = _normalisation(x.device, self.mean, self.std)
        x = torch.addcmul(shift, x, scale)  # (x/255 − mean)/std in one pass: interpolation is linear, so order is free
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def draw(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """The random part of a training batch, (3, B) int64 on the CPU: row offsets and column offsets of the
        crops in [0, 2·padding], flips (0/1). Drawn from ``generator`` as offsets (2, B) then flips (B,)."""
        offsets = torch.randint(0, 2 * self.padding + 1, (2, batch_size), generator=generator)
        flips = torch.rand(batch_size, generator=generator) < 0.5
        return torch.cat([offsets, flips[None].long()])

    def _crop_and_flip(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.padding
        dev = images.device
        draws = draws.to(dev)  # no copy when already there (iterate_batches sends them ahead)
        rows = draws[0, :, None] + torch.arange(h, device=dev)  # (B, H)
        cols = draws[1, :, None] + torch.arange(w, device=dev)
        cols = torch.where(draws[2, :, None].bool(), cols.flip(1), cols)  # (B, W)
        padded = F.pad(images, (p, p, p, p))
        batch_idx = torch.arange(b, device=dev)[:, None, None, None]
        chan_idx = torch.arange(c, device=dev)[None, :, None, None]
        return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


@functools.lru_cache(maxsize=8)
def _normalisation(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x·scale + shift = (x/255 − mean)/std, per channel, as (1, 3, 1, 1) tensors on ``device``."""
    std = torch.tensor(std, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def index_batches(
    n: int, batch_size: int, *, generator: torch.Generator | None = None, num_steps: int | None = None
) -> Iterator[torch.Tensor]:
    """Index batches over ``range(n)``.

    ``num_steps=None``: one pass in order (``generator=None``) or in a random permutation, the last batch
    possibly smaller. ``num_steps=J``: exactly J full batches from a stream of fresh permutations (wrapping
    across epochs), as a client's J local steps need.
    """
    if n < 1:
        raise ValueError("cannot make batches from an empty set")
    if num_steps is None:
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        yield from order.split(batch_size)
        return
    size = min(batch_size, n)
    buffer = torch.empty(0, dtype=torch.int64)
    for _ in range(num_steps):
        while len(buffer) < size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:size]
        buffer = buffer[size:]


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: ImageTransform,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    num_steps: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) batches on the device that ``images`` live on; see :func:`index_batches`.

    Augmentation randomness and the order both come from ``generator``, so the batches are reproducible. All of
    it is drawn up front, in the order a batch-by-batch loop draws it (the order as needed, then each batch's
    crops and flips: the same values), and reaches the device in one pinned, asynchronous copy rather than in
    blocking copies at every step.
    """
    plan = []  # per batch: (1, B) indices, then (3, B) crops and flips when augmenting
    for idx in index_batches(len(labels), batch_size, generator=generator, num_steps=num_steps):
        plan.append(torch.cat([idx[None], transform.draw(len(idx), generator)]) if transform.train else idx[None])
    if not plan:  # num_steps=0
        return
    sizes = [part.shape[1] for part in plan]
    for part in to_device(torch.cat(plan, dim=1), images.device).split(sizes, dim=1):
        idx = part[0]
        yield transform(images[idx], draws=part[1:] if transform.train else None), labels[idx]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a CPU tensor to ``device``, through pinned memory for CUDA (asynchronous copy)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
