"""The ridge head: additive client statistics, the closed form, classification, temperature, step 0 in one call,
set_head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedtalos.editing.head import (
    RidgeStats,
    backbone_features,
    feature_statistics,
    fit_head,
    fit_logit_scale,
    ridge_statistics,
    set_head,
    solve_ridge,
    validation_features,
)
from fedtalos.task.model import TINY_TEST_VIT, build_model

C = 7


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_model(TINY_TEST_VIT, num_classes=C, image_size=32)


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, C, (n,), generator=g)) for n in (9, 6, 11)]


def test_summed_client_statistics_equal_the_statistics_of_the_union(vit, batches):
    clients = [ridge_statistics(vit, [b], C) for b in batches]
    union = ridge_statistics(vit, batches, C)
    total = RidgeStats.sum(clients)
    assert total.count == union.count == 26
    assert total.gram.dtype == total.cross.dtype == torch.float64
    assert total.gram.shape == (33, 33) and total.cross.shape == (33, C)
    assert torch.allclose(total.gram, union.gram, rtol=1e-12) and torch.allclose(total.cross, union.cross, rtol=1e-12)
    assert sum(clients).count == 26  # the builtin sum works as well
    # The constant feature's row: the count, and the class histogram.
    assert total.gram[-1, -1] == 26
    assert torch.equal(total.cross[-1], torch.bincount(union_labels(batches), minlength=C).double())


def union_labels(batches) -> torch.Tensor:
    return torch.cat([y for _, y in batches])


def test_solution_equals_the_augmented_least_squares_problem(vit, batches):
    lam = 0.3
    features = torch.cat([backbone_features(vit, x) for x, _ in batches]).double()
    targets = F.one_hot(union_labels(batches), C).double()
    weight, bias = solve_ridge(ridge_statistics(vit, batches, C), lam)
    # λ is relative to n: min ‖ΦW − Y‖² + λn‖W_features‖²  ⇔  least squares on [Φ; √(λn)·(I 0)] W = [Y; 0]
    # (the bias unpenalised)
    d, n = features.shape[1], len(features)
    phi = torch.cat([features, torch.ones(n, 1, dtype=torch.float64)], 1)
    penalty = torch.cat([(lam * n) ** 0.5 * torch.eye(d, dtype=torch.float64), torch.zeros(d, 1).double()], 1)
    solution = torch.linalg.lstsq(torch.cat([phi, penalty]), torch.cat([targets, torch.zeros(d, C).double()])).solution
    assert torch.allclose(weight, solution[:d].T, atol=1e-9)
    assert torch.allclose(bias, solution[d], atol=1e-9)
    assert weight.shape == (C, d) and bias.shape == (C,)


def test_the_bias_is_not_regularised():
    g = torch.Generator().manual_seed(2)
    features, labels = torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)
    weight, bias = solve_ridge(feature_statistics(features, labels, 3), lam=1e9)
    assert weight.abs().max() < 1e-6  # crushed weights …
    assert torch.allclose(bias, torch.bincount(labels, minlength=3).double() / 50, atol=1e-6)  # … class frequencies


def test_ridge_head_classifies_separable_features():
    g = torch.Generator().manual_seed(3)
    means = 4 * torch.randn(10, 16, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=g)
        return means[labels] + torch.randn(n, 16, generator=g), labels

    train_x, train_y = sample(2000)
    test_x, test_y = sample(500)
    shards = zip(train_x.split(300), train_y.split(300), strict=True)  # 7 clients
    stats = RidgeStats.sum(feature_statistics(x, y, 10) for x, y in shards)
    weight, bias = solve_ridge(stats, lam=1e-3)
    accuracy = ((test_x.double() @ weight.T + bias).argmax(1) == test_y).double().mean()
    assert accuracy > 0.95


def test_lambda_is_relative_to_the_number_of_samples():
    # the same data repeated k times: ΦᵀΦ and ΦᵀY grow k-fold, and so does the penalty λ·n, so the head is the same
    # (an absolute λ would regularise the 45k-sample union far less than one client's shard)
    g = torch.Generator().manual_seed(5)
    features, labels = torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    once = feature_statistics(features, labels, 4)
    many = RidgeStats.sum([once] * 50)
    for a, b in zip(solve_ridge(once, 0.5), solve_ridge(many, 0.5), strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    gram = once.gram.clone()
    gram[:-1, :-1] += 0.5 * 40 * torch.eye(6, dtype=torch.float64)
    expected = torch.linalg.solve(gram, once.cross)
    assert torch.allclose(solve_ridge(once, 0.5)[0], expected[:-1].T, atol=1e-10)


def test_fit_logit_scale_recovers_a_known_temperature():
    g = torch.Generator().manual_seed(4)
    logits = torch.rand(20000, 10, generator=g)  # least-squares-like outputs in [0, 1]
    true_alpha = 6.0
    labels = torch.multinomial(torch.softmax(true_alpha * logits, -1), 1, generator=g).squeeze(1)
    alpha = fit_logit_scale(logits, labels)
    assert alpha == pytest.approx(true_alpha, rel=0.05)
    # It is the minimiser: a bit more or less is worse.
    ce = lambda a: float(F.cross_entropy(a * logits.double(), labels))  # noqa: E731
    assert ce(alpha) < min(ce(alpha * 1.05), ce(alpha / 1.05))
    assert ce(alpha) < ce(1.0)


def test_set_head_changes_the_outputs_as_expected(batches):
    vit = build_model(TINY_TEST_VIT, num_classes=C, image_size=32)  # its own model: set_head mutates it
    x = batches[0][0]
    g = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(C, 32, generator=g, dtype=torch.float64), torch.randn(C, generator=g).double()
    set_head(vit, weight, bias, scale=2.5)
    expected = 2.5 * (backbone_features(vit, x).double() @ weight.T + bias)
    with torch.no_grad():
        assert torch.allclose(vit(x).double(), expected, atol=1e-4)
    with pytest.raises(ValueError):
        set_head(vit, weight[:, :5], bias)


def test_fit_head_is_the_ridge_solution_with_its_temperature_on_the_validation_features(vit, batches):
    stats = ridge_statistics(vit, batches[:2], C)
    val_inputs, val_labels = batches[2]
    features = validation_features(vit, [val_inputs[:5], val_inputs[5:]])
    assert features.dtype == torch.float64 and torch.allclose(features, backbone_features(vit, val_inputs).double())
    head = fit_head(stats, 0.1, features, val_labels)
    weight, bias = solve_ridge(stats, 0.1)
    assert torch.equal(head.weight, weight) and torch.equal(head.bias, bias)
    logits = features @ weight.T + bias
    assert head.scale == fit_logit_scale(logits, val_labels)
    assert head.fitted_loss == float(F.cross_entropy(head.scale * logits, val_labels))
    rounded = fit_head(stats, 0.1, features, val_labels, logits_dtype=torch.float32)  # the federated server's
    assert rounded.scale == fit_logit_scale(logits.float(), val_labels)
