"""Weights through one staging buffer: the model ends bit for bit as load_state_dict leaves it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedtalos.task.staging import WeightStaging


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 2), nn.Flatten(), nn.LazyLinear(5), nn.BatchNorm1d(5))
    model(torch.zeros(2, 3, 4, 4))  # materialize; BatchNorm's num_batches_tracked is int64 (a second dtype)
    return model.to(memory_format=torch.channels_last)  # a non-contiguous conv weight, as with channels-last=true


def test_staged_load_and_read_equal_the_plain_path():
    source = {
        k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v + 3
        for k, v in _model().state_dict().items()
    }
    plain, staged = _model(), _model()
    plain.load_state_dict(source)
    stager = WeightStaging(staged=True)
    for _ in range(2):  # the second round reuses the buffers
        stager.load(staged, source)
    for k, v in plain.state_dict().items():
        assert torch.equal(staged.state_dict()[k], v) and staged.state_dict()[k].dtype == v.dtype, k
    read = stager.read(dict(staged.named_parameters()))
    assert list(read) == [n for n, _ in staged.named_parameters()]
    assert all(torch.equal(read[n], p) for n, p in staged.named_parameters())


def test_a_wrong_state_dict_is_refused_as_load_state_dict_does():
    source = _model().state_dict()
    source.pop("2.bias")
    with pytest.raises(RuntimeError, match="Missing key"):
        WeightStaging(staged=True).load(_model(), source)


def test_the_cpu_path_uses_no_buffers():
    stager, model = WeightStaging(), _model()
    stager.load(model, _model().state_dict())
    read = stager.read(dict(model.named_parameters()))
    assert not stager._host and not stager._device  # nothing staged on the CPU
    assert all(read[n].data_ptr() == p.data_ptr() for n, p in model.named_parameters())


def test_weights_in_one_slot_go_in_one_copy_and_a_second_client_of_the_payload_copies_them_on_the_device(tmp_path):
    from fedtalos.federation.shared_memory import Slot
    from fedtalos.task import staging as staging_module

    first = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in _model().state_dict().items()}
    second = {k: v + 1 for k, v in first.items()}
    slot = Slot(tmp_path / "weights.slot", create=True)
    slot.write(first, sequence=1)
    views, _ = slot.read(1)
    assert staging_module._host_region(views) is not None, "the slot's tensors lie in one region"
    assert staging_module._host_region(first) is None, "separate tensors do not"
    stager, plain = WeightStaging(staged=True), _model()
    plain.load_state_dict(first)
    model = _model()
    stager.load(model, views, key=("weights.slot", 1))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.state_dict().items())
    slot.write(second, sequence=2)  # the slot now holds the next payload: a reload of payload 1 must not read it
    again = _model()
    stager.load(again, views, key=("weights.slot", 1))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in plain.state_dict().items())
    stager.load(again, slot.read(2)[0], key=("weights.slot", 2))
    plain.load_state_dict(second)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_a_module_with_load_hooks_is_loaded_by_load_state_dict():
    seen = []
    for staged in (False, True):
        model = _model()
        model[2].register_load_state_dict_pre_hook(lambda *args, staged=staged: seen.append(staged))
        WeightStaging(staged=staged).load(model, _model().state_dict())
    assert seen == [False, True]
    plain = _model()
    WeightStaging().load(plain, {k: v + 1 for k, v in _model().state_dict().items()})
    assert torch.equal(plain[0].weight, _model()[0].weight + 1), "the hook-free model copied tensor by tensor"
