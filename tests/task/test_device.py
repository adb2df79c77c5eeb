"""Devices and precision: device resolution, autocast dtype, TF32, determinism, the environment record."""

from __future__ import annotations

import pytest
import torch

from fedtalos.task.device import autocast_dtype, precision_choice, resolve_device, set_matmul_precision


def test_devices_and_precision():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in {"cpu", "mps"}
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    assert autocast_dtype(torch.device("mps"), "auto") is None


@pytest.mark.parametrize(
    "capability, dtype",
    [((7, 5), None), ((7, 0), None), ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16), ((9, 0), torch.bfloat16)],
    ids=["turing-t4", "volta-v100", "ampere-a100", "ada-l4", "hopper-h100"],
)
def test_auto_precision_on_cuda_is_bf16_from_compute_capability_8(monkeypatch, capability, dtype):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    cuda = torch.device("cuda")
    chosen, reason = precision_choice(cuda, "auto")
    assert chosen is dtype and autocast_dtype(cuda, "auto") is dtype and asked == [cuda, cuda]
    assert reason.startswith("bf16 autocast" if dtype else "fp32") and f"{capability[0]}.{capability[1]}" in reason
    # Explicit choices are taken as given, whatever the card.
    assert precision_choice(cuda, "bf16")[0] is torch.bfloat16 and precision_choice(cuda, "fp32")[0] is None
    assert len(asked) == 2


@pytest.fixture
def matmul_precision():
    saved = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize(
    "device, deterministic, expected",
    [("cuda", False, "high"), ("cuda", True, "highest"), ("cpu", False, "highest"), ("mps", False, "highest")],
)
def test_tf32_matmuls_on_cuda_unless_deterministic(matmul_precision, device, deterministic, expected):
    torch.set_float32_matmul_precision("medium")  # whatever an earlier run in this process left
    set_matmul_precision(torch.device(device), deterministic)
    assert torch.get_float32_matmul_precision() == expected


# ---------------------------------------------------------------------------------------------------------------
# Device policy on GPU machines, forced on the CPU.


@pytest.fixture
def machine_with_hidden_gpus(tmp_path, monkeypatch):
    """A machine with two NVIDIA cards (their device nodes) that CUDA hides (Ray's CUDA_VISIBLE_DEVICES="")."""
    from fedtalos.task import device

    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl"):
        (dev / name).touch()
    monkeypatch.setattr(device, "NVIDIA_DEVICE_NODES", (dev, "nvidia[0-9]*"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_auto_never_falls_back_to_the_cpu_when_the_gpus_are_hidden(machine_with_hidden_gpus):
    from fedtalos.task.device import DeviceUnavailable, ResourceError

    with pytest.raises(DeviceUnavailable, match="client-resources-num-gpus") as error:
        resolve_device("auto")
    assert isinstance(error.value, ResourceError)  # fatal for a federated run, not a client dropout
    with pytest.raises(DeviceUnavailable, match="hidden from this process"):
        resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")  # the way to train on the CPU on purpose


def test_auto_picks_the_cpu_where_no_gpu_can_be_opened(machine_with_hidden_gpus, tmp_path, monkeypatch):
    from fedtalos.task import device

    monkeypatch.setattr(device, "NVIDIA_DEVICE_NODES", (tmp_path / "dev", "nvidia[0-9]"))
    (tmp_path / "dev" / "nvidia0").unlink()
    (tmp_path / "dev" / "nvidia1").unlink()
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")  # a CPU-only container on a GPU host


def test_cuda_index_beyond_the_visible_gpus_is_refused_with_the_reason(monkeypatch):
    from fedtalos.task.device import DeviceUnavailable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # what every simulation actor sees
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceUnavailable, match=r"sees 1 GPU.*use device = 'cuda'"):
        resolve_device("cuda:1")


def test_deterministic_sets_every_switch(monkeypatch):
    from fedtalos.task.device import set_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    backends = torch.backends
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        backends.cudnn.deterministic,
        backends.cudnn.benchmark,
        backends.cuda.flash_sdp_enabled(),
        backends.cuda.mem_efficient_sdp_enabled(),
        backends.cuda.cudnn_sdp_enabled(),
        backends.cuda.math_sdp_enabled(),
    )
    try:
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled() or saved[0]  # off changes nothing
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert backends.cudnn.deterministic and not backends.cudnn.benchmark
        assert not backends.cuda.flash_sdp_enabled() and not backends.cuda.mem_efficient_sdp_enabled()
        assert not backends.cuda.cudnn_sdp_enabled() and backends.cuda.math_sdp_enabled()
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(saved[0])
        backends.cudnn.deterministic, backends.cudnn.benchmark = saved[1], saved[2]
        backends.cuda.enable_flash_sdp(saved[3])
        backends.cuda.enable_mem_efficient_sdp(saved[4])
        backends.cuda.enable_cudnn_sdp(saved[5])
        backends.cuda.enable_math_sdp(saved[6])


def test_deterministic_is_a_run_config_key_applied_when_resources_are_built(fake_cifar_root, monkeypatch):
    from fedtalos.config import RunConfig
    from fedtalos.task import resources
    from tests.support.tiny import offline_tiny

    calls = []
    monkeypatch.setattr(resources, "set_deterministic", calls.append)
    config = RunConfig.from_mapping(offline_tiny(fake_cifar_root, values={"deterministic": True, "seed": 91}))
    assert config.result_hash() == config.replace(deterministic=False).result_hash()  # CPU numbers are the same
    resources.get_resources(config)
    assert calls == [True]


def test_environment_records_device_dtype_and_gpu_name(monkeypatch):
    from fedtalos.task.device import environment

    assert environment(torch.device("cpu"), None) == {"device": "cpu", "dtype": "float32", "gpu": ""}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A10G")
    assert environment(torch.device("cuda"), torch.bfloat16) == {
        "device": "cuda",
        "dtype": "bfloat16",
        "gpu": "NVIDIA A10G",
    }
