"""Model: shapes, local weights, wrong files, offline errors, parameter groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedtalos.task.model import (
    DINO_VIT_S16,
    TINY_TEST_VIT,
    WeightsError,
    backbone_parameters,
    build_model,
    check_weights_file,
    head_parameter_names,
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


def test_the_new_head_is_initialised_as_timm_does_not_zero(dino_weights_file):
    # build_model's docstring: truncated normal with std 0.02, bias 0, from torch's global RNG (the DINO file has
    # no head, so the loaded model keeps the fresh head)
    path, _ = dino_weights_file
    heads = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        heads.append(build_model(DINO_VIT_S16, image_size=32, weights_path=path).head)
    weight = heads[0].weight.detach()
    assert torch.count_nonzero(heads[0].bias) == 0
    assert 0.019 < float(weight.std()) < 0.021 and float(weight.mean().abs()) < 1e-3  # 38,400 draws
    assert torch.equal(weight, heads[1].weight) and not torch.equal(weight, heads[2].weight)
    torch.manual_seed(0)
    assert 0.019 < float(build_model(TINY_TEST_VIT, image_size=16).head.weight.std()) < 0.021  # 3,200 draws


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


def test_an_uninitialised_model_draws_nothing_and_computes_bit_identically_once_loaded():
    torch.manual_seed(3)
    reference = build_model(TINY_TEST_VIT, image_size=16)
    rng = torch.get_rng_state()
    empty = build_model(TINY_TEST_VIT, image_size=16, initialise=False)
    assert torch.equal(torch.get_rng_state(), rng), "no random initialisation"
    empty.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(empty(x), reference(x))


def test_a_model_with_computed_buffers_is_initialised_anyway():
    from fedtalos.task.model import _uninitialised

    class Computed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.register_buffer("grid", torch.arange(4.0), persistent=False)  # loading weights would not fill it

    assert torch.equal(_uninitialised(Computed, vision_transformer=False).grid, torch.arange(4.0))
