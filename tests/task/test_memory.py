"""The GPU memory budget estimates (docs/gpus-and-scaling.md's table) and the Fisher chunk sized from free memory."""

from __future__ import annotations

import pytest
import torch

from fedtalos.config import RunConfig
from fedtalos.editing.fisher import DEFAULT_CHUNK_SIZES, fitting_chunk_size
from fedtalos.task.memory import GIB, actor_peak_bytes, fisher_bytes_per_sample, train_activation_bytes


def test_budget_at_224_px_and_its_scaling_with_the_image_size():
    config = RunConfig(mask_rule="least-sensitive", head="ridge")  # batch 32, 64 Fisher samples
    assert train_activation_bytes(config) == pytest.approx(1.4e9)
    assert fisher_bytes_per_sample(config) == pytest.approx(79e6)
    assert actor_peak_bytes(config) / GIB == pytest.approx(1 + 64 * 79e6 / GIB)  # calibration dominates
    assert actor_peak_bytes(RunConfig()) / GIB == pytest.approx(1 + 1.4e9 / GIB)  # dense FedAvg: training
    small = config.replace(image_size=112)  # 50 tokens instead of 197
    assert fisher_bytes_per_sample(small) == pytest.approx(79e6 * 50 / 197)
    assert train_activation_bytes(config.replace(precision="fp32")) == pytest.approx(2.8e9)


@pytest.mark.parametrize(("free_gib", "chunk"), [(40, None), (8, 64), (2, 16), (0.01, 1)])
def test_the_fisher_chunk_shrinks_to_powers_of_two_that_fit_the_free_memory(monkeypatch, free_gib, chunk):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GIB), 80 * GIB))
    per_sample = fisher_bytes_per_sample(RunConfig())
    assert fitting_chunk_size(torch.device("cuda"), per_sample) == chunk
    if chunk is not None:
        assert chunk * per_sample <= 0.8 * free_gib * GIB or chunk == 1
        assert chunk < DEFAULT_CHUNK_SIZES["hooks"]


def test_devices_that_report_no_free_memory_keep_the_default_chunk():
    assert fitting_chunk_size(torch.device("cpu"), 79e6) is None
    assert fitting_chunk_size(torch.device("mps"), 79e6) is None


def test_a_deterministic_run_sizes_the_chunk_from_the_total_memory(monkeypatch):
    per_sample = fisher_bytes_per_sample(RunConfig())
    for free in (1 * GIB, 6 * GIB):  # whatever else holds memory at the time
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (free, 16 * GIB))
        assert fitting_chunk_size(torch.device("cuda"), per_sample, stable=True) == 64  # 8 GiB / 79 MB → 108 → 64
