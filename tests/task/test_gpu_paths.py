"""The GPU-oriented paths, checked on the CPU for equivalence: bf16 autocast, channels-last, batched resize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T

from fedtalos.task.batches import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, to_device
from fedtalos.task.model import TINY_TEST_VIT, build_model
from fedtalos.task.train import evaluate, train_steps


def test_bf16_autocast_trains_close_to_fp32():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 100, (16,))
    losses = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = build_model(TINY_TEST_VIT, image_size=32)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        losses[dtype] = train_steps(model, opt, [(x, y)] * 3, autocast_dtype=dtype).loss
        assert evaluate(model, [(x, y)], autocast_dtype=dtype).count == 16
    assert losses[None] == pytest.approx(losses[torch.bfloat16], rel=0.02)


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    model = build_model(TINY_TEST_VIT, image_size=32).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    plain = ImageTransform(32, train=False)(images)
    channels_last = ImageTransform(32, train=False, channels_last=True)(images)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = model(plain)
        assert torch.allclose(model.to(memory_format=torch.channels_last)(channels_last), reference, atol=1e-5)


def test_batched_resize_equals_per_image_torchvision():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    batched = ImageTransform(64, train=False)(images)
    per_image = torch.stack(
        [
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(
                T.Resize((64, 64), interpolation=T.InterpolationMode.BILINEAR, antialias=False)(img.float() / 255)
            )
            for img in images
        ]
    )
    assert torch.allclose(batched, per_image, atol=1e-5)
    assert torch.allclose(
        batched,
        (F.interpolate(images.float() / 255, size=64, mode="bilinear") - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
        atol=1e-5,
    )


def test_to_device_keeps_cpu_tensors_and_values():
    t = torch.arange(6).view(2, 3)
    moved = to_device(t, torch.device("cpu"))
    assert torch.equal(moved, t)
    if torch.cuda.is_available():  # pinned, asynchronous copy on CUDA machines
        assert torch.equal(to_device(t, torch.device("cuda")).cpu(), t)
