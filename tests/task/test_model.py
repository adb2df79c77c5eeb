"""Model: shapes, local weights, wrong files, offline errors, devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedtalos.task.model import (
    DINO_VIT_S16,
    TINY_TEST_VIT,
    WeightsError,
    autocast_dtype,
    backbone_parameters,
    build_model,
    check_weights_file,
    head_parameter_names,
    precision_choice,
    resolve_device,
    set_matmul_precision,
    set_trainable,
)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_tiny_model_shapes(size: int):
    model = build_model(TINY_TEST_VIT, image_size=size)
    assert model(torch.zeros(3, 3, size, size)).shape == (3, 100)


@pytest.mark.parametrize("size", [32, 64])
def test_dino_architecture_shapes(size: int):
    model = build_model(DINO_VIT_S16, image_size=size, pretrained=False)
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 100)
    tokens = 1 + (size // 16) ** 2  # cls + patches; 197 at 224 px, where the backbone has 21,665,664 weights
    assert sum(p.numel() for _, p in backbone_parameters(model)) == 21_665_664 - (197 - tokens) * 384
    assert head_parameter_names(model) == ["head.weight", "head.bias"]


@pytest.fixture(scope="module")
def dino_weights_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    import timm

    backbone = timm.create_model(DINO_VIT_S16, pretrained=False, num_classes=0)  # the hub file has no head
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file(state, str(path))
    return path, state


def test_local_weights_are_loaded_and_position_embeddings_resampled(dino_weights_file):
    path, state = dino_weights_file
    model = build_model(DINO_VIT_S16, image_size=32, weights_path=path)
    loaded = model.state_dict()
    assert torch.equal(loaded["blocks.3.mlp.fc1.weight"], state["blocks.3.mlp.fc1.weight"])
    assert torch.equal(loaded["cls_token"], state["cls_token"])
    assert loaded["pos_embed"].shape == (1, 1 + 2 * 2, 384)  # 32 px / 16 = 2×2 patches + cls
    assert loaded["head.weight"].shape == (100, 384)


def test_torch_checkpoint_is_accepted(dino_weights_file, tmp_path: Path):
    _, state = dino_weights_file
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(state, path)
    check_weights_file(path)  # no error


def test_wrong_architecture_is_refused(tmp_path: Path):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(TINY_TEST_VIT).state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="does not hold DINO ViT-S/16"):
        build_model(DINO_VIT_S16, image_size=32, weights_path=path)


def test_missing_or_garbage_weights_file(tmp_path: Path):
    with pytest.raises(WeightsError, match="does not exist"):
        check_weights_file(tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="not a readable"):
        check_weights_file(garbage)


def test_offline_without_weights_says_how_to_get_them():
    with pytest.raises(WeightsError) as e:
        build_model(DINO_VIT_S16, image_size=32)  # HF_HUB_OFFLINE=1 in conftest
    assert "weights-path" in str(e.value) and "huggingface.co/timm/vit_small_patch16_224.dino" in str(e.value)


def test_set_trainable_freezes_the_right_parts():
    model = build_model(TINY_TEST_VIT, image_size=32)
    set_trainable(model, "backbone")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    set_trainable(model, "head")
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("head."))
    assert all(p.requires_grad for _, p in backbone_parameters(model))


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
