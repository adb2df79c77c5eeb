"""``fedtalos run``'s local preflight: on the CPU, nothing kept, the device only resolved."""

from __future__ import annotations

import pytest
import tomli_w
import torch

from fedtalos.cli import run as run_command
from fedtalos.task import resources
from tests.support.tiny import offline_tiny


def test_preflight_builds_the_model_on_the_cpu_and_keeps_nothing(fake_cifar_root, tmp_path, monkeypatch):
    """On a CUDA machine the preflight used to build the model on cuda:0 and keep it cached for the whole run."""
    built = []
    real = resources.resolve_device

    def recording(name):
        built.append(str(real(name)))
        return real(name) if built[-1] == "cpu" else torch.device("meta")  # a model on "cuda" would fail here

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve_device('auto') → cuda
    monkeypatch.setattr(resources, "resolve_device", recording)
    resources.get_resources.cache_clear()
    toml = tmp_path / "overrides.toml"
    values = offline_tiny(fake_cifar_root, tmp_path / "runs", {"device": "auto", "seed": 92})
    toml.write_bytes(tomli_w.dumps(values).encode())
    assert run_command.main([".", "--run-config", str(toml), "--check"]) == 0
    assert built == ["cpu"]
    assert resources.get_resources.cache_info().currsize == 0


def test_preflight_refuses_cuda_n(fake_cifar_root, tmp_path, capsys: pytest.CaptureFixture):
    toml = tmp_path / "overrides.toml"
    toml.write_bytes(tomli_w.dumps(offline_tiny(fake_cifar_root, tmp_path / "runs", {"device": "cuda:1"})).encode())
    assert run_command.main([".", "--run-config", str(toml), "--check"]) == 2
    assert "in Flower's simulation every client actor sees only the GPU" in capsys.readouterr().err
