"""SparseSGDM: bitwise parity with SGD, frozen entries that never move, the masking pitfalls, checkpoints."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedtalos.editing.optim import SparseSGDM


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
            p.grad = grad
        opt.step()


GRID = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 0.05], [False, True])
    if not (n and (m == 0 or d != 0))  # nesterov needs momentum and no dampening (as in torch.optim.SGD)
]


@pytest.mark.parametrize("opts", GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_all_true_masks_are_bit_identical_to_sgd(opts):
    ref, ours = _params(), _params()
    sgd = torch.optim.SGD(ref, lr=0.1, foreach=False, **opts)
    sparse = SparseSGDM(ours, [torch.ones_like(p, dtype=torch.bool) for p in ours], lr=0.1, **opts)
    _run(sgd, ref, 6)
    _run(sparse, ours, 6)
    for a, b in zip(ref, ours, strict=True):
        assert torch.equal(_bits(a), _bits(b))
        if opts["momentum"]:
            assert torch.equal(_bits(sgd.state[a]["momentum_buffer"]), _bits(sparse.state[b]["momentum_buffer"]))


def test_masks_none_is_dense_sgd():
    ref, ours = _params(), _params()
    sgd = torch.optim.SGD(ref, lr=0.05, momentum=0.9, weight_decay=0.01, foreach=False)
    _run(sgd, ref, 4)
    _run(SparseSGDM(ours, None, lr=0.05, momentum=0.9, weight_decay=0.01), ours, 4)
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(ref, ours, strict=True))


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
