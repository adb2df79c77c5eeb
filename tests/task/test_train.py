"""The shared loops: learning on generated data, exact loss/accuracy bookkeeping, the regularizer hook."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedtalos.seeds import make_generator
from fedtalos.task.batches import ImageTransform, iterate_batches
from fedtalos.task.cifar import load_cifar100
from fedtalos.task.model import TINY_TEST_VIT, build_model
from fedtalos.task.train import LoopStats, evaluate, top_k_correct, train_steps


def test_tiny_model_learns_generated_data_above_chance(fake_cifar_root):
    torch.manual_seed(0)
    ds = load_cifar100(fake_cifar_root, download=False, verify=False)
    model = build_model(TINY_TEST_VIT, image_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = iterate_batches(
        ds.train_images,
        ds.train_labels,
        ImageTransform(32, train=True),
        batch_size=64,
        generator=make_generator(0),
        num_steps=300,
    )
    stats = train_steps(model, opt, batches)
    assert stats.steps == 300 and stats.count == 300 * 64
    test = evaluate(
        model, iterate_batches(ds.test_images, ds.test_labels, ImageTransform(32, train=False), batch_size=128)
    )
    assert test.count == 500
    assert test.accuracy > 0.10, f"chance is 0.01, got {test.accuracy:.3f}"


def test_evaluate_matches_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    stats = evaluate(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    logits = model(x)
    assert stats.count == 10 and stats.steps == 2
    assert abs(stats.loss - nn.functional.cross_entropy(logits, y).item()) < 1e-6
    assert stats.correct == int((logits.argmax(-1) == y).sum())


def test_top5_counts_a_label_among_the_five_largest_logits():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 0], [0.0, 1, 2, 3, 4, 5, 6], [1.0, 0, 0, 0, 0, 0, 0]])
    labels = torch.tensor([4, 1, 0])  # 5th largest (in), 6th largest (out), largest (in)
    assert int(top_k_correct(logits, labels, 5)) == 2
    assert int(top_k_correct(logits[:, :3], torch.tensor([2, 0, 1]), 5)) == 3, "three classes: every label is in"
    model = nn.Linear(7, 7, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(7))  # logits = inputs
    stats = evaluate(model, [(logits[:2], labels[:2]), (logits[2:], labels[2:])])
    assert (stats.correct, stats.correct_top5, stats.count) == (1, 2, 3)
    assert stats.top5_accuracy == 2 / 3 and stats.accuracy == 1 / 3


def test_train_steps_reports_pre_step_loss_and_calls_hooks():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    expected = nn.functional.cross_entropy(model(x), y).item()
    seen = []
    calls = []

    def reg() -> torch.Tensor:
        calls.append(1)
        return model.weight.pow(2).sum() * 0.0

    stats = train_steps(
        model, torch.optim.SGD(model.parameters(), lr=0.1), [(x, y)], regularizer=reg, after_step=seen.append
    )
    assert abs(stats.loss - expected) < 1e-6, "the reported loss excludes the regularizer and is pre-step"
    assert seen == [1] and calls == [1]


def test_regularizer_changes_the_update():
    def run(reg_weight: float) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Linear(5, 3)
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        train_steps(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            [(x, y)],
            regularizer=lambda: reg_weight * model.weight.pow(2).sum(),
        )
        return model.weight.detach().clone()

    assert not torch.equal(run(0.0), run(1.0))


def test_loop_stats_of_segments_add_up_to_the_stats_of_the_whole_loop():
    torch.manual_seed(0)
    batches = [(torch.randn(6, 5), torch.randint(0, 3, (6,))) for _ in range(4)]

    def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(1)
        model = nn.Linear(5, 3)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    whole = train_steps(*model_and_optimizer(), batches)
    model, optimizer = model_and_optimizer()
    first, second = train_steps(model, optimizer, batches[:1]), train_steps(model, optimizer, batches[1:])
    summed = LoopStats() + first + second
    assert summed == LoopStats(0.0 + first.loss_sum + second.loss_sum, first.correct + second.correct, 24, 4)
    assert (summed.correct, summed.count, summed.steps) == (whole.correct, whole.count, whole.steps)
    assert abs(summed.loss - whole.loss) < 1e-12, "the same examples, summed in another grouping"
    assert LoopStats() == LoopStats(0.0, 0, 0, 0) and math.isnan(LoopStats().loss)
