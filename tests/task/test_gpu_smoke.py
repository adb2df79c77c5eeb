"""GPU smoke tests: training, evaluation, Fisher scores and the ridge head of the tiny model on ``cuda`` and on
``mps``, skipped on machines without that device (every CPU-only CI). They check that each step runs there and
agrees with the CPU within the tolerance of float32 kernels; the GPU paths' CPU checks are in test_gpu_paths.py."""

from __future__ import annotations

import pytest
import torch

from fedtalos.editing.fisher import fisher_scores
from fedtalos.editing.head import ridge_statistics, solve_ridge
from fedtalos.editing.masks import update_mask
from fedtalos.task.device import resolve_device
from fedtalos.task.model import TINY_TEST_VIT, build_model
from fedtalos.task.train import evaluate, train_steps

AVAILABLE = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}


@pytest.fixture(params=["cuda", "mps"])
def device(request) -> torch.device:
    if not AVAILABLE[request.param]:
        pytest.skip(f"no {request.param} device on this machine")
    return resolve_device(request.param)


def _data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=generator)
    y = torch.randint(0, 100, (16,), generator=generator)
    return x.to(device), y.to(device)


def _models(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    cpu = build_model(TINY_TEST_VIT, image_size=32)
    on_device = build_model(TINY_TEST_VIT, image_size=32)
    on_device.load_state_dict(cpu.state_dict())
    return cpu, on_device.to(device)


def test_train_and_evaluate(device):
    x, y = _data(device)
    cpu, model = _models(device)
    for m, (xs, ys) in ((cpu, (x.cpu(), y.cpu())), (model, (x, y))):
        optimizer = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        trained = train_steps(m, optimizer, [(xs, ys)] * 2)
        assert trained.count == 32 and torch.isfinite(torch.tensor(trained.loss))
    on_cpu, on_device = evaluate(cpu, [(x.cpu(), y.cpu())]), evaluate(model, [(x, y)])
    assert on_device.count == 16
    assert on_device.loss == pytest.approx(on_cpu.loss, rel=1e-3)


def test_fisher_scores_and_the_mask(device):
    x, _ = _data(device)
    cpu, model = _models(device)
    scores = fisher_scores(model, [x], generator=torch.Generator(device=device).manual_seed(0))
    assert all(s.device.type == device.type and s.dtype == torch.float32 for s in scores.values())
    assert set(scores) == set(fisher_scores(cpu, [x.cpu()]))
    total = sum(float(s.sum()) for s in scores.values())  # label draws differ from the CPU's: no value check
    assert total > 0 and torch.isfinite(torch.tensor(total))
    mask = update_mask(scores, None, 100)
    assert sum(int(m.sum()) for m in mask.values()) >= 100


def test_ridge_head(device):
    x, y = _data(device)
    cpu, model = _models(device)
    stats, reference = ridge_statistics(model, [(x, y)], 100), ridge_statistics(cpu, [(x.cpu(), y.cpu())], 100)
    assert stats.gram.dtype == torch.float64 and stats.gram.device.type == "cpu"
    assert torch.allclose(stats.gram, reference.gram, rtol=1e-3, atol=1e-3)
    weight, bias = solve_ridge(stats, 1.0)
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()


def test_deterministic_training_is_bit_identical_on_the_device(device):
    """What ``deterministic = true`` promises on a GPU: the same steps from the same state give the same bits."""
    from fedtalos.task.device import set_deterministic

    if device.type != "cuda":
        pytest.skip("deterministic = true targets CUDA's kernels")
    saved = torch.are_deterministic_algorithms_enabled()
    set_deterministic(True)
    try:
        x, y = _data(device)
        results = []
        for _ in range(2):
            _, model = _models(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            train_steps(model, optimizer, [(x, y)] * 3, autocast_dtype=torch.bfloat16)
            results.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
        assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    finally:
        torch.use_deterministic_algorithms(saved)
