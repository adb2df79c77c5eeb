"""The launcher's federation config: client resources filled key by key, the GPU share from the card's memory,
and the devices a simulation cannot serve; ``fedtalos run``'s preflight stays off the GPU;
the final status read from `flwr ls --format json`, also when that JSON comes coloured (as under a Jupyter kernel:
the Colab notebook's sweep saw a completed run as 'unknown')."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest
import torch

from fedtalos.config import RunConfig
from fedtalos.launch import flwr_run as launcher
from fedtalos.launch.flwr_run import default_federation_config, simulation_problems

GIB = 2**30


@pytest.fixture
def cuda_machine(monkeypatch):
    """A machine with one CUDA card of ``memory`` bytes (set the attribute; default 24 GiB)."""
    card = SimpleNamespace(total_memory=24 * GIB, name="fake card")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=0: card)
    return card


def settings(federation_config: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in federation_config.split())


def test_overriding_one_client_resource_keeps_the_other_default(cuda_machine):
    config = RunConfig.from_mapping({"num-clients": 8})
    only_cpus = settings(default_federation_config(config, "client-resources-num-cpus=2"))
    assert only_cpus["client-resources-num-cpus"] == "2"
    assert float(only_cpus["client-resources-num-gpus"]) > 0  # Ray would hide the GPU from every actor at 0
    only_gpus = settings(default_federation_config(config, "client-resources-num-gpus=0.5"))
    assert (only_gpus["client-resources-num-gpus"], only_gpus["client-resources-num-cpus"]) == ("0.5", "1")


def test_no_gpu_share_without_cuda_or_for_cpu_runs(cuda_machine, monkeypatch):
    assert "client-resources-num-gpus" not in settings(default_federation_config(RunConfig(device="cpu")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert settings(default_federation_config(RunConfig())) == {
        "num-supernodes": "100",
        "client-resources-num-cpus": "1",
    }


@pytest.mark.parametrize(("memory_gib", "share"), [(8, 1.0), (16, 0.5), (24, 0.33), (80, 0.07)])
def test_the_default_gpu_share_follows_the_cards_memory(cuda_machine, memory_gib, share):
    """ViT-S/16 at 224 px calibrating 64 samples: ≈ 6 GiB per actor (task/memory.py) beside a 2 GiB ServerApp."""
    cuda_machine.total_memory = memory_gib * GIB
    config = RunConfig(mask_rule="least-sensitive", head="ridge")
    assert float(settings(default_federation_config(config))["client-resources-num-gpus"]) == share


def test_cuda_n_is_refused_in_simulation_with_the_reason():
    assert simulation_problems(RunConfig(device="cuda")) == []
    assert simulation_problems(RunConfig(device="cuda:0")) == []
    (problem,) = simulation_problems(RunConfig(device="cuda:1"))
    assert "cuda:1" in problem and "as cuda:0" in problem and "use device = 'cuda'" in problem


def test_run_status_reads_coloured_json(monkeypatch: pytest.MonkeyPatch):
    record = {"success": True, "runs": [{"run-id": 7, "status": "finished:completed", "status-details": ""}]}
    plain = json.dumps(record, indent=2)
    coloured = plain.replace('"status"', '\x1b[1;34m"status"\x1b[0m').replace("{", "\x1b[1m{\x1b[0m")
    seen = {}

    def fake_run(command, env, **kwargs):
        seen["env"] = env
        return subprocess.CompletedProcess(command, 0, stdout=coloured, stderr="")

    monkeypatch.setattr(launcher.subprocess, "run", fake_run)
    assert launcher.run_status("7", {"FLWR_HOME": "/x"}) == ("finished:completed", "")
    assert seen["env"]["NO_COLOR"] == "1" and seen["env"]["FLWR_HOME"] == "/x"
