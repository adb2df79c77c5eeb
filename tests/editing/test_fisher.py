"""Fisher scores: vectorized == per-sample loop, Σg² (not (Σg)²), labels sampled from the model, repeats."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedtalos.editing.fisher import fisher_scores, per_sample_loop_scores
from fedtalos.task.model import TINY_TEST_VIT, build_model


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(TINY_TEST_VIT, num_classes=10, image_size=32)
    with torch.no_grad():  # a small non-zero head (timm zero-inits new heads): a spread, non-uniform softmax
        model.head.weight.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 32, 32, generator=g), torch.zeros(n, dtype=torch.long)) for n in (5, 4)]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for name in a:
        scale = b[name].abs().max().clamp_min(1e-30)
        assert (a[name] - b[name]).abs().max() <= rtol * scale, name


def _random_soft_mask(model: nn.Module) -> dict[str, torch.Tensor]:
    g = _gen(7)
    return {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters() if n.startswith("blocks.")}


@pytest.mark.parametrize("method", ["vmap", "hooks"])
@pytest.mark.parametrize("target", ["logit", "log-prob"])
@pytest.mark.parametrize("soft", [False, True])
def test_vectorized_equals_the_per_sample_loop(vit, batches, target, soft, method):
    """Batches of 5 and 4 in chunks of 3: chunk boundaries inside batches (and, for hooks, across them)."""
    soft_mask = _random_soft_mask(vit) if soft else None
    kwargs = dict(target=target, soft_mask=soft_mask, soft_value=0.1, repeats=2)
    fast = fisher_scores(vit, batches, generator=_gen(), chunk_size=3, method=method, **kwargs)
    slow = per_sample_loop_scores(vit, batches, generator=_gen(), **kwargs)
    assert set(fast) == {n for n, _ in vit.named_parameters() if not n.startswith("head.")}
    assert all(t.dtype == torch.float32 and t.shape == vit.get_parameter(n).shape for n, t in fast.items())
    assert all(bool((t > 0).any()) for t in fast.values())
    _assert_close(fast, slow)


@pytest.mark.parametrize("method", ["vmap", "hooks"])
def test_scores_are_sums_of_squares_not_squares_of_sums(vit, batches, method):
    """The batch-gradient shortcut, (Σg)² or B·(mean g)², fails the comparison the equality test makes."""
    names = ["blocks.0.mlp.fc1.weight", "norm.weight", "cls_token"]
    x = batches[0][0]
    reference = per_sample_loop_scores(vit, [x], params=names, generator=_gen())
    _assert_close(fisher_scores(vit, [x], params=names, generator=_gen(), method=method), reference)
    # The shortcut, with the very same sampled labels: one backward through the summed per-sample targets.
    labels = torch.multinomial(torch.softmax(vit(x), -1), 1, generator=_gen())
    summed = torch.autograd.grad(vit(x).gather(1, labels).sum(), [vit.get_parameter(n) for n in names])
    squared_sum = {n: g.square() for n, g in zip(names, summed, strict=True)}
    for shortcut in (squared_sum, {n: t / len(x) for n, t in squared_sum.items()}):
        with pytest.raises(AssertionError):
            _assert_close(shortcut, reference, rtol=1e-2)
    # Cauchy–Schwarz: (Σg)² ≤ B·Σg², so the two are related but not equal.
    assert all(bool((squared_sum[n] <= len(x) * reference[n] * (1 + 1e-4)).all()) for n in names)


def test_labels_are_sampled_from_the_models_prediction(vit, batches):
    a = fisher_scores(vit, batches, generator=_gen(3))
    b = fisher_scores(vit, batches, generator=_gen(3))
    c = fisher_scores(vit, batches, generator=_gen(4))
    assert all(torch.equal(a[n], b[n]) for n in a)  # a fixed generator reproduces the scores
    assert any(not torch.allclose(a[n], c[n]) for n in a)  # another seed draws other labels
    # Given labels are ignored: bare inputs give the same scores as (inputs, labels) pairs.
    d = fisher_scores(vit, [x for x, _ in batches], generator=_gen(3))
    assert all(torch.equal(a[n], d[n]) for n in a)


@pytest.mark.parametrize("method", ["vmap", "hooks"])
def test_a_confident_model_scores_its_predicted_class(method):
    """With an almost one-hot softmax the draws are the argmax, whatever the seed, and s is that logit."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    x = torch.randn(10, 6)
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([0.0, 60.0, 0.0, 0.0]))  # class 1 has probability ≈ 1 - 3e-26
    names = ["0.weight", "0.bias"]
    expected = {n: torch.zeros_like(model.get_parameter(n)) for n in names}
    for xi in x:
        grads = torch.autograd.grad(model(xi[None])[0, 1], [model.get_parameter(n) for n in names])
        for n, g in zip(names, grads, strict=True):
            expected[n] += g.square()
    for seed in (0, 1):
        scores = fisher_scores(model, [x], params=names, generator=_gen(seed), method=method)
        _assert_close(scores, expected, rtol=1e-5)


@pytest.mark.parametrize("method", ["vmap", "hooks"])
def test_repeats_add_the_passes_with_the_generator_continuing(vit, batches, method):
    single_batch = batches[:1]
    twice = fisher_scores(vit, single_batch, repeats=2, generator=_gen(5), method=method)
    g = _gen(5)
    first = fisher_scores(vit, single_batch, generator=g, method=method)
    second = fisher_scores(vit, single_batch, generator=g, method=method)
    _assert_close(twice, {n: first[n] + second[n] for n in first}, rtol=1e-6)
    assert any(not torch.allclose(first[n], second[n]) for n in first)  # the second pass drew other labels


@pytest.mark.parametrize("method", ["vmap", "hooks"])
def test_soft_mask_gradient_is_taken_with_respect_to_the_original_weights(method):
    """Frozen entries: s(θ·c) differentiated in θ, i.e. soft_value × the gradient at the effective weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(6, 5)
    mask = torch.rand(7, 5) < 0.5
    soft = {"0.weight": mask}
    kwargs = dict(params=["0.weight"], generator=_gen(), method=method)
    scores = fisher_scores(model, [x], soft_mask=soft, soft_value=0.1, **kwargs)
    # Reference by hand: a copy whose weight *is* the effective weight, with the same sampled labels.
    effective = model[0].weight.detach() * torch.where(mask, 1.0, 0.1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    params["0.weight"] = effective.clone().requires_grad_(True)
    labels = torch.multinomial(torch.softmax(functional_call(model, params, (x,)), -1), 1, generator=_gen())
    expected = torch.zeros(7, 5)
    for xi, yi in zip(x, labels[:, 0], strict=True):
        (g,) = torch.autograd.grad(functional_call(model, params, (xi[None],))[0, yi], params["0.weight"])
        expected += (g * torch.where(mask, 1.0, 0.1)).square()
    _assert_close(scores, {"0.weight": expected}, rtol=1e-5)
    # soft_value 1.0 = no soft zeroing at all.
    plain = fisher_scores(model, [x], params=["0.weight"], generator=_gen(), method=method)
    same = fisher_scores(
        model, [x], params=["0.weight"], soft_mask=soft, soft_value=1.0, generator=_gen(), method=method
    )
    assert torch.equal(plain["0.weight"], same["0.weight"])


@pytest.mark.parametrize("method", ["vmap", "hooks"])
def test_mode_is_restored_and_parameters_untouched(vit, batches, method):
    vit.train()
    before = {n: p.detach().clone() for n, p in vit.named_parameters()}
    hooks = [(m._forward_hooks.copy(), m._forward_pre_hooks.copy()) for m in vit.modules()]
    fisher_scores(vit, batches[:1], generator=_gen(), method=method, soft_mask=_random_soft_mask(vit))
    assert vit.training and all(m.training for m in vit.modules())
    assert all(torch.equal(before[n], p) and p.grad is None for n, p in vit.named_parameters())
    assert all(p.requires_grad for p in vit.parameters())
    assert hooks == [(m._forward_hooks.copy(), m._forward_pre_hooks.copy()) for m in vit.modules()]  # all removed
    vit.eval()


def test_bad_arguments_are_rejected(vit, batches):
    with pytest.raises(KeyError):
        fisher_scores(vit, batches, params=["nope"])
    with pytest.raises(ValueError):
        fisher_scores(vit, batches, target="loss")
    with pytest.raises(ValueError):
        fisher_scores(vit, batches, soft_mask={"norm.weight": torch.ones(32)})  # not bool
    with pytest.raises(ValueError):
        fisher_scores(vit, batches, method="loop")
    with pytest.raises(ValueError):
        fisher_scores(vit, batches, chunk_size=0)
