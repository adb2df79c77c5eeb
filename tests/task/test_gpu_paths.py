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


# ---------------------------------------------------------------------------------------------------------------
# Apple MPS has no float64 and lacks kthvalue: checked on the emulated device (tests/support/accelerator.py).


def _on_emulated_device(resources):
    """``resources`` with its model (a copy) on the emulated MPS device and no cached device splits."""
    import copy
    import dataclasses

    from tests.support.accelerator import DEVICE

    model = copy.deepcopy(resources.model).to(DEVICE)
    return dataclasses.replace(resources, device=DEVICE, model=model, _on_device={}, _partitions=None)


@pytest.fixture
def tiny_resources(fake_cifar_root):
    from fedtalos.config import RunConfig
    from fedtalos.task.resources import get_resources
    from tests.support.tiny import offline_tiny

    return get_resources(RunConfig.from_mapping(offline_tiny(fake_cifar_root, values={"val-fraction": 0.05})))


def test_train_and_evaluate_make_no_float64_tensor_on_the_device():
    from tests.support.accelerator import DEVICE, EmulatedMps

    model = build_model(TINY_TEST_VIT, image_size=32).to(DEVICE)
    x, y = torch.randn(4, 3, 32, 32, device=DEVICE), torch.randint(0, 100, (4,), device=DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with EmulatedMps() as mps:
        trained = train_steps(model, optimizer, [(x, y)] * 3)
        evaluated = evaluate(model, [(x, y), (x, y)])
    assert mps.violations == []
    assert (trained.count, trained.steps, evaluated.count, evaluated.steps) == (12, 3, 8, 2)


def test_loss_sums_are_the_float64_sums_in_step_order():
    """The host sums equal a float64 accumulator over the same steps, bit for bit (what the loops kept before)."""
    torch.manual_seed(0)
    model = build_model(TINY_TEST_VIT, image_size=32)
    batches = [(torch.randn(n, 3, 32, 32), torch.randint(0, 100, (n,))) for n in (5, 3, 7)]
    stats = evaluate(model, batches)
    expected = torch.zeros((), dtype=torch.float64)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    with torch.no_grad():
        for x, y in batches:
            expected += loss_fn(model(x).float(), y).double()
    assert stats.loss_sum == float(expected)


def test_ridge_heads_and_the_mask_threshold_keep_float64_and_kthvalue_off_the_device(tiny_resources):
    from fedtalos.central.head_and_mask import fit_ridge_head
    from fedtalos.editing.masks import update_mask
    from tests.support.accelerator import DEVICE, EmulatedMps

    resources = _on_emulated_device(tiny_resources)
    scores = {"a": torch.randn(10, device=DEVICE), "b": torch.randn(3, 4, device=DEVICE)}
    with EmulatedMps() as mps:
        scale = fit_ridge_head(resources, resources.config)  # editing.head.fit_head, as the federated head phase
        mask = update_mask(scores, None, 5)  # the threshold of the centralized calibration
    assert mps.violations == []
    assert scale > 0
    assert {n: (m.device, m.dtype) for n, m in mask.items()} == {n: (DEVICE, torch.bool) for n in scores}
