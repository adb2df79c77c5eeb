"""Offline, a model's download fails at once with the offline advice, or loads the cached file without the hub."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import timm

from fedtalos.task import hub, model
from fedtalos.task.backbones import get_backbone
from fedtalos.task.model import DINO_VIT_S16, WeightsError


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """A machine without a name server: every connection fails at once; the calls are recorded."""
    calls: list[tuple] = []

    def refuse(address, *args, **kwargs):
        calls.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    from huggingface_hub import constants

    for variable in hub._PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)  # the test session sets HF_HUB_OFFLINE
    monkeypatch.setattr(socket, "create_connection", refuse)
    hub.hub_unreachable.cache_clear()
    yield calls
    hub.hub_unreachable.cache_clear()


def test_offline_without_a_cached_file_fails_at_once_and_asks_once(no_network, monkeypatch: pytest.MonkeyPatch):
    def download(*args, **kwargs):
        raise AssertionError("the hub was asked (a minute of retries offline)")

    monkeypatch.setattr(timm, "create_model", download)
    monkeypatch.setattr(hub, "cached_file", lambda repo_id, filename="model.safetensors": None)
    for _ in range(2):
        with pytest.raises(WeightsError) as e:
            model._from_hub(get_backbone(DINO_VIT_S16), {})
        assert "the hub cannot be reached: huggingface.co:443 does not answer" in str(e.value)
        assert "set weights-path=/abs/path/model.safetensors" in str(e.value)
    assert len(no_network) == 1, "asked once per process"


def test_offline_a_cached_download_is_loaded_without_the_hub(no_network, monkeypatch: pytest.MonkeyPatch):
    created = []
    monkeypatch.setattr(timm, "create_model", lambda name, **kwargs: created.append((name, kwargs)) or "model")
    monkeypatch.setattr(hub, "cached_file", lambda repo_id, filename="model.safetensors": f"/cache/{repo_id}")
    assert model._from_hub(get_backbone(DINO_VIT_S16), {"num_classes": 100}) == "model"
    ((name, kwargs),) = created
    assert name == DINO_VIT_S16 and kwargs["pretrained_cfg_overlay"] == {"file": f"/cache/timm/{DINO_VIT_S16}"}


def test_behind_a_proxy_the_hub_is_not_second_guessed(no_network, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert hub.hub_unreachable() is None and no_network == []


def test_hf_hub_offline_counts_as_unreachable_without_asking(no_network, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "is_offline_mode", lambda: True)
    assert hub.hub_unreachable() == "HF_HUB_OFFLINE is set" and no_network == []


def test_the_cache_lookup_reads_the_huggingface_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: str(tmp_path / repo_id / filename)
    )
    assert hub.cached_file("timm/x") == str(tmp_path / "timm/x/model.safetensors")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    assert hub.cached_file("timm/x") is None
