"""SparseSGDM: bitwise parity with SGD, frozen entries that never move, the masking pitfalls, checkpoints."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedtalos.editing.optim import SparseSGDM
from fedtalos.testing.dispatch import count_aten_ops


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Raw float32 bit patterns: distinguishes -0.0 from 0.0 and compares NaNs exactly."""
    return t.detach().contiguous().view(torch.int32)


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [(7, 5), (5,), (3, 2, 4)]]


def _grads(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def _run(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        for p, grad in zip(params, _grads(step, params), strict=True):
            p.grad = grad.to(p.dtype)
        opt.step()


GRID = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 0.05], [False, True])
    if not (n and (m == 0 or d != 0))  # nesterov needs momentum and no dampening (as in torch.optim.SGD)
]


@pytest.mark.parametrize("foreach", [False, True], ids=["sgd-single-tensor", "sgd-foreach"])
@pytest.mark.parametrize("masked", [True, False], ids=["all-true-masks", "no-masks"])
@pytest.mark.parametrize("opts", GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_all_true_masks_and_no_masks_are_bit_identical_to_sgd(opts, masked, foreach):
    ref, ours = _params(), _params()
    sgd = torch.optim.SGD(ref, lr=0.1, foreach=foreach, **opts)
    masks = [torch.ones_like(p, dtype=torch.bool) for p in ours] if masked else None
    sparse = SparseSGDM(ours, masks, lr=0.1, **opts)
    _run(sgd, ref, 6)
    _run(sparse, ours, 6)
    for a, b in zip(ref, ours, strict=True):
        assert torch.equal(_bits(a), _bits(b))
        if opts["momentum"]:
            assert torch.equal(_bits(sgd.state[a]["momentum_buffer"]), _bits(sparse.state[b]["momentum_buffer"]))


def test_mixed_dtypes_in_one_group_are_bit_identical_to_sgd():
    """foreach calls take one dtype each: the parameters are grouped by (device, dtype) as SGD groups them."""

    def params() -> list[torch.nn.Parameter]:
        return [
            torch.nn.Parameter(p.detach().to(dtype))
            for p, dtype in zip(_params(), [torch.float64, torch.float32, torch.float32], strict=True)
        ]

    ref, ours = params(), params()
    assert {p.dtype for p in ours} == {torch.float32, torch.float64}
    sgd = torch.optim.SGD(ref, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, foreach=True)
    _run(sgd, ref, 4)
    _run(SparseSGDM(ours, None, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), ours, 4)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(ref, ours, strict=True))


def test_a_step_leaves_the_gradients_alone():
    params = _params()
    opt = SparseSGDM(params, None, lr=0.1, momentum=0.9, nesterov=True)
    for step in range(2):
        grads = _grads(step, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))


def _half_masks(params: list[torch.Tensor], seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(p.shape, generator=g) < 0.5 for p in params]


@pytest.mark.parametrize("nesterov", [False, True])
def test_frozen_entries_never_move_and_their_buffers_stay_zero(nesterov):
    params = _params()
    # Special values in the frozen weights themselves must survive untouched as well.
    with torch.no_grad():
        params[0][0, 0], params[0][0, 1] = -0.0, 0.0
    masks = _half_masks(params)
    masks[0][0, :2] = False
    before = [p.detach().clone() for p in params]
    opt = SparseSGDM(params, masks, lr=0.5, momentum=0.9, weight_decay=0.1, nesterov=nesterov)
    for step in range(50):
        for p, m, grad in zip(params, masks, _grads(step, params), strict=True):
            poisoned = grad.clone()
            frozen = (~m).nonzero()
            # inf, -inf and NaN in the gradients of frozen entries (where g*M would produce NaN).
            for j, value in enumerate([float("inf"), float("-inf"), float("nan")]):
                if j < len(frozen):
                    poisoned[tuple(frozen[j])] = value
            p.grad = poisoned
        opt.step()
    for p, b, m in zip(params, before, masks, strict=True):
        assert torch.equal(_bits(p)[~m], _bits(b)[~m])
        assert torch.isfinite(p).all()
        assert not torch.equal(p[m], b[m])  # the trainable ones did move
        buf = opt.state[p]["momentum_buffer"]
        assert torch.equal(_bits(buf)[~m], torch.zeros_like(_bits(buf)[~m]))  # exactly +0.0, not -0.0 or NaN


def test_where_avoids_the_pitfalls_of_multiplying_by_the_mask():
    grad = torch.tensor([float("inf"), -2.0, 3.0])
    mask = torch.tensor([False, False, True])
    # The pitfalls, shown on the bare tensors: inf*0 = NaN and -2*0 = -0.0.
    multiplied = grad * mask
    assert multiplied[0].isnan() and _bits(multiplied)[1] == _bits(torch.tensor(-0.0))
    # The optimizer: the frozen weights stay put and the buffer is +0.0 bit for bit.
    p = torch.nn.Parameter(torch.tensor([1.0, 0.0, 1.0]))
    opt = SparseSGDM([p], [mask], lr=0.1, momentum=0.9, maximize=True)
    p.grad = grad.clone()
    opt.step()
    assert torch.equal(_bits(p[:2]), _bits(torch.tensor([1.0, 0.0])))
    assert torch.equal(_bits(opt.state[p]["momentum_buffer"][:2]), _bits(torch.zeros(2)))
    assert p[2].item() == pytest.approx(1.0 + 0.1 * 3.0)


def test_entries_frozen_after_momentum_built_up_stop_at_once():
    """The second where(): a buffer filled while an entry was trainable must not move it once it is frozen."""
    params = _params()
    opt = SparseSGDM(params, None, lr=0.1, momentum=0.9, nesterov=True)
    _run(opt, params, 3)
    masks = _half_masks(params)
    for p, m in zip(params, masks, strict=True):
        opt.set_mask(p, m)
        assert bool((opt.state[p]["momentum_buffer"][~m] != 0).any())  # momentum is still there …
    before = [p.detach().clone() for p in params]
    _run(opt, params, 3, start=3)
    assert all(torch.equal(_bits(p)[~m], _bits(b)[~m]) for p, b, m in zip(params, before, masks, strict=True))
    opt.set_mask(params[0], None)  # … and dense again
    _run(opt, params, 1, start=6)
    assert bool((params[0] != before[0]).all())


def test_zeroing_grads_then_stock_sgd_with_weight_decay_moves_frozen_weights():
    ref, ours = _params(), _params()
    masks = _half_masks(ref)
    before = [p.detach().clone() for p in ref]
    sgd = torch.optim.SGD(ref, lr=0.1, momentum=0.9, weight_decay=0.05)
    sparse = SparseSGDM(ours, masks, lr=0.1, momentum=0.9, weight_decay=0.05)
    for step in range(5):
        for p, q, m, grad in zip(ref, ours, masks, _grads(step, ref), strict=True):
            p.grad = torch.where(m, grad, 0.0)  # the tempting shortcut: mask the gradient, then stock SGD
            q.grad = grad
        sgd.step()
        sparse.step()
    # The trap: λθ is added inside SGD, after the gradient was masked, so frozen weights decay anyway.
    assert all(not torch.equal(p[~m], b[~m]) for p, b, m in zip(ref, before, masks, strict=True))
    assert all(torch.equal(q[~m], b[~m]) for q, b, m in zip(ours, before, masks, strict=True))


def test_parameters_without_a_mask_are_dense_and_dict_masks_work_with_param_groups():
    params = _params()
    dense_ref = params[1].detach().clone()
    mask0 = torch.zeros_like(params[0], dtype=torch.bool)
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.0}]
    opt = SparseSGDM(groups, {params[0]: mask0}, lr=0.1)
    before0 = params[0].detach().clone()
    before2 = params[2].detach().clone()
    _run(opt, params, 1)
    assert torch.equal(params[0], before0)  # all frozen
    grad1 = _grads(0, params)[1]
    assert torch.equal(params[1], dense_ref.add(grad1, alpha=-0.1))  # dense, plain SGD step
    assert torch.equal(params[2], before2)  # its group has lr 0
    assert opt.mask_of(params[0]) is not None and opt.mask_of(params[1]) is None


def test_state_dict_round_trip_continues_identically():
    masks = _half_masks(_params())
    opts = dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    a = _params()
    straight = SparseSGDM(a, masks, **opts)
    _run(straight, a, 10)

    b = _params()
    first = SparseSGDM(b, masks, **opts)
    _run(first, b, 4)
    checkpoint = {"params": [p.detach().clone() for p in b], "opt": first.state_dict()}
    # Resume into fresh parameters and an optimizer built *without* masks: the checkpoint restores them.
    c = [torch.nn.Parameter(t) for t in checkpoint["params"]]
    resumed = SparseSGDM(c, None, **opts)
    resumed.load_state_dict(checkpoint["opt"])
    assert all(resumed.mask_of(p).dtype == torch.bool for p in c)
    assert all(torch.equal(resumed.mask_of(p), m) for p, m in zip(c, masks, strict=True))
    _run(resumed, c, 6, start=4)
    assert all(torch.equal(_bits(x), _bits(y)) for x, y in zip(a, c, strict=True))


def test_bad_masks_are_rejected():
    params = _params()
    with pytest.raises(TypeError):
        SparseSGDM(params, [torch.ones_like(p) for p in params], lr=0.1)  # float masks (e.g. TaLoS' 0.1/1.0)
    with pytest.raises(ValueError):
        SparseSGDM(params, [torch.ones(2, dtype=torch.bool), None, None], lr=0.1)
    with pytest.raises(ValueError):
        SparseSGDM(params, [None], lr=0.1)
    with pytest.raises(ValueError):
        SparseSGDM(params, {torch.nn.Parameter(torch.zeros(1)): torch.ones(1, dtype=torch.bool)}, lr=0.1)


def _spec_step(params, masks, buffers, lr, momentum, weight_decay, nesterov):
    """Spec §1 literally, tensor by tensor (what SparseSGDM computed before its foreach version)."""
    for i, (p, m) in enumerate(zip(params, masks, strict=True)):
        with torch.no_grad():
            g = p.grad.add(p, alpha=weight_decay) if weight_decay else p.grad
            g = torch.where(m, g, 0.0) if m is not None else g
            if buffers[i] is None:
                buffers[i] = g.clone()
            else:
                buffers[i].mul_(momentum).add_(g)
            g = g.add(buffers[i], alpha=momentum) if nesterov else buffers[i]
            g = torch.where(m, g, 0.0) if m is not None else g
            p.add_(g, alpha=-lr)


def _poisoned_grads(step, params, masks):
    """Random gradients with inf, -inf and NaN at frozen entries."""
    grads = _grads(step, params)
    for g, m in zip(grads, masks, strict=True):
        frozen = (~m).nonzero() if m is not None else []
        for j, value in enumerate([float("inf"), float("-inf"), float("nan")][: len(frozen)]):
            g[tuple(frozen[j])] = value
    return grads


@pytest.mark.parametrize("nesterov", [False, True])
def test_masks_changed_and_reloaded_follow_the_spec_bit_for_bit(nesterov):
    """Masks set after momentum built up, and a checkpoint whose buffers are non-zero at entries its masks freeze
    (the cases where step 4 matters), against the spec computed tensor by tensor."""
    opts = dict(lr=0.3, momentum=0.9, weight_decay=0.05, nesterov=nesterov)
    ref, ours = _params(), _params()
    buffers = [None] * len(ref)
    first, second = [None, *_half_masks(ref)[1:]], _half_masks(ref, seed=4)
    opt = SparseSGDM(ours, first, **opts)

    def steps(masks, start, count, opt):
        for step in range(start, start + count):
            for p, q, g in zip(ref, ours, _poisoned_grads(step, ref, masks), strict=True):
                p.grad, q.grad = g.clone(), g.clone()
            _spec_step(ref, masks, buffers, **opts)
            opt.step()
            assert all(torch.equal(_bits(p), _bits(q)) for p, q in zip(ref, ours, strict=True)), step

    steps(first, 0, 3, opt)
    for q, m in zip(ours, second, strict=True):
        opt.set_mask(q, m)
    steps(second, 3, 3, opt)
    # A checkpoint from a dense run with masks added: buffers non-zero where those masks freeze.
    dense = SparseSGDM(ours, None, **opts)
    for i, q in enumerate(ours):
        dense.state[q]["momentum_buffer"] = buffers[i].clone()
    saved = dense.state_dict()
    for i, m in enumerate(first):
        if m is not None:
            saved["state"][i]["mask"] = m
    resumed = SparseSGDM(ours, None, **opts)
    resumed.load_state_dict(saved)
    before = [q.detach().clone() for q in ours]
    steps(first, 6, 3, resumed)
    assert all(torch.equal(_bits(q)[~m], _bits(b)[~m]) for q, b, m in zip(ours[1:], before[1:], first[1:], strict=True))


def test_a_dense_step_is_a_few_foreach_calls_whatever_the_number_of_tensors():
    def ops(n: int, masked: bool) -> dict[str, int]:
        params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(n)]
        masks = [torch.rand(4, 3) < 0.5 for _ in params] if masked else None
        opt = SparseSGDM(params, masks, lr=0.1, momentum=0.9, weight_decay=0.01)
        for _ in range(2):  # the first step creates the buffers; count the second
            for p in params:
                p.grad = torch.randn(4, 3)
            counted = count_aten_ops(opt.step)
        return {k: v for k, v in counted.items() if not k.startswith("_record_function")}  # the profiler's hooks

    dense = ops(3, masked=False)
    assert dense == ops(40, masked=False)
    assert dense == {"_foreach_add": 1, "_foreach_mul_": 1, "_foreach_add_": 2}  # decay, momentum ×2, update
    # Masked: one where() per masked tensor (step 2) on top; step 4 is skipped while the buffers are clean.
    assert ops(40, masked=True) == {**dense, "where": 40, "zeros": 1}
