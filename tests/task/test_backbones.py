"""Every supported backbone, built with random weights at a small size (nothing is downloaded): forward shapes, a
train step, normalisation, position embeddings, weights files of the wrong architecture, the config checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fedtalos.config import ConfigError, RunConfig
from fedtalos.task.backbones import BACKBONES, TINY_TEST_VIT, get_backbone
from fedtalos.task.batches import ImageTransform
from fedtalos.task.model import (
    UnsupportedArchitectureError,
    WeightsError,
    backbone_parameters,
    build_model,
    check_architecture,
    check_weights_file,
    expected_backbone_shapes,
    head_parameter_names,
    input_normalisation,
)
from fedtalos.task.resources import get_resources
from tests.support.tiny import offline_tiny

PRETRAINED = [n for n in BACKBONES if n != TINY_TEST_VIT]
DEPTH = 2  # blocks: the block type is the model's own, the depth is cut so that ViT-B builds fast on 2 cores


def small_size(name: str) -> int:
    """Two patches a side: 28 px for patch 14, 32 px for patch 16."""
    return 2 * get_backbone(name).patch_size


def test_the_issue_list_is_supported():
    assert PRETRAINED == [
        "vit_small_patch16_224.dino",
        "vit_base_patch16_224.dino",
        "vit_small_patch14_dinov2.lvd142m",
        "vit_small_patch16_dinov3.lvd1689m",
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
        "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        "vit_large_patch14_dinov2.lvd142m",
    ]


def test_timm_serves_every_backbone_pretrained_and_its_sizes_are_the_models():
    """The names are timm 1.0.31's pretrained tags; width, depth and patch size (what the config checks and the
    memory estimates read) are the model's own tensor shapes (built on the meta device: no weights)."""
    import timm

    served = set(timm.list_pretrained())
    for name in PRETRAINED:
        assert name in served, name
        backbone, shapes = get_backbone(name), expected_backbone_shapes(name)
        blocks = {key.split(".")[1] for key in shapes if key.startswith("blocks.")}
        assert (shapes["cls_token"][-1], len(blocks)) == (backbone.width, backbone.depth), name
        assert shapes["patch_embed.proj.weight"][-2:] == (backbone.patch_size,) * 2, name
    tiny = build_model(TINY_TEST_VIT, image_size=16)
    assert (get_backbone(TINY_TEST_VIT).width, get_backbone(TINY_TEST_VIT).depth) == (tiny.embed_dim, 2)


# Tokens per image at 2×2 patches (prefix tokens: cls, and DINOv3's 4 registers) and the width.
TOKENS_AND_WIDTH = {
    "vit_small_patch16_224.dino": (1 + 4, 384),
    "vit_base_patch16_224.dino": (1 + 4, 768),
    "vit_small_patch14_dinov2.lvd142m": (1 + 4, 384),
    "vit_small_patch16_dinov3.lvd1689m": (1 + 4 + 4, 384),
    "vit_small_patch16_224.augreg_in21k_ft_in1k": (1 + 4, 384),
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k": (1 + 4, 192),
    "vit_large_patch14_dinov2.lvd142m": (1 + 4, 1024),
}
AUGREG_S16 = "vit_small_patch16_224.augreg_in21k_ft_in1k"


@pytest.mark.parametrize("name", PRETRAINED)
def test_forward_shapes_and_a_train_step(name: str):
    torch.manual_seed(0)
    size = small_size(name)
    model = build_model(name, image_size=size, pretrained=False, depth=DEPTH)
    assert len(model.blocks) == DEPTH
    x = torch.randn(3, 3, size, size)
    tokens, width = TOKENS_AND_WIDTH[name]
    features = model.forward_features(x)
    assert features.shape == (3, tokens, width)
    assert model.forward_head(features, pre_logits=True).shape == (3, width)  # what the ridge head reads
    assert model(x).shape == (3, 100)
    assert head_parameter_names(model) == ["head.weight", "head.bias"]
    # One SGD step on the whole model: every backbone tensor gets a gradient and moves.
    with torch.no_grad():
        model.head.weight.normal_(0, 0.1)  # timm zero-inits new heads, which would give no backbone gradient
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model.train()(x), torch.tensor([0, 1, 2]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    unmoved = [n for n, p in backbone_parameters(model) if torch.equal(p, before[n])]
    assert unmoved == []


def test_dinov3_has_rotary_embeddings_and_register_tokens_at_the_configured_size():
    model = build_model("vit_small_patch16_dinov3.lvd1689m", image_size=48, pretrained=False, depth=1)
    assert model.pos_embed is None and model.rope is not None  # no absolute position embedding
    assert model.reg_token.shape == (1, 4, 384) and model.num_prefix_tokens == 5
    assert not model.dynamic_img_size and model.global_pool == "token"  # fixed 3×3 grid, CLS-token features
    assert model.rope.get_embed().shape[0] == 9


def test_normalisation_follows_the_model(fake_cifar_root: Path):
    assert input_normalisation("vit_small_patch16_224.dino") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert input_normalisation("vit_small_patch16_224.augreg_in21k_ft_in1k") == ((0.5,) * 3, (0.5,) * 3)
    assert input_normalisation("vit_tiny_patch16_224.augreg_in21k_ft_in1k") == ((0.5,) * 3, (0.5,) * 3)
    assert input_normalisation("vit_large_patch14_dinov2.lvd142m") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    config = RunConfig.from_mapping(offline_tiny(fake_cifar_root, values={"model": AUGREG_S16}))
    resources = get_resources.__wrapped__(config)  # uncached: a model other than the tiny one
    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    assert resources.eval_transform.mean == (0.5,) * 3
    torch.testing.assert_close(resources.eval_transform(images), torch.ones(1, 3, 32, 32))  # (1 - 0.5) / 0.5
    imagenet = ImageTransform(32, train=False)(images)  # the default: ImageNet's statistics
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(imagenet[0, :, 0, 0], expected)


@pytest.fixture(scope="module")
def meta_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name → a .pth with the full-size backbone's tensor names and shapes (meta tensors: no data to write)."""
    folder = tmp_path_factory.mktemp("meta-weights")
    files = {}
    for name in PRETRAINED:
        shapes = expected_backbone_shapes(name)
        files[name] = folder / f"{name}.pth"
        torch.save({k: torch.empty(s, device="meta") for k, s in shapes.items()}, files[name])
    return files


@pytest.mark.parametrize("name", PRETRAINED)
def test_weights_of_another_architecture_are_refused(name: str, meta_files: dict[str, Path]):
    check_weights_file(meta_files[name], name)  # its own architecture: no error
    for other, path in meta_files.items():
        same_shapes = expected_backbone_shapes(other) == expected_backbone_shapes(name)
        if other == name or same_shapes:
            continue
        with pytest.raises(WeightsError, match=f"does not hold {get_backbone(name).label}"):
            build_model(name, image_size=small_size(name), weights_path=path)


def test_the_two_vit_s16_files_share_one_architecture():
    """DINO and AugReg ViT-S/16 differ in weights and normalisation only: a file check cannot tell them apart."""
    assert expected_backbone_shapes(PRETRAINED[0]) == expected_backbone_shapes(AUGREG_S16)


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2.lvd142m", "vit_small_patch16_dinov3.lvd1689m"])
def test_local_weights_load_and_position_embeddings_follow_the_image_size(name: str, tmp_path: Path):
    import timm

    kwargs = get_backbone(name).create_kwargs
    source = timm.create_model(name, pretrained=False, num_classes=0, depth=DEPTH, **kwargs)  # its own resolution
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    size = small_size(name)
    model = build_model(name, image_size=size, weights_path=path, depth=DEPTH)
    loaded, saved = model.state_dict(), source.state_dict()
    assert torch.equal(loaded["blocks.1.mlp.fc1.weight"], saved["blocks.1.mlp.fc1.weight"])
    assert torch.equal(loaded["cls_token"], saved["cls_token"])
    width = get_backbone(name).width
    if source.pos_embed is not None:  # DINOv2: 37×37 at 518 px, resampled to 2×2 (+ cls)
        assert saved["pos_embed"].shape == (1, 1 + 37 * 37, width)
        assert loaded["pos_embed"].shape == (1, 1 + 2 * 2, width)
    else:  # DINOv3: rotary, computed for the grid
        assert model.rope.get_embed().shape[0] == 2 * 2
    assert model(torch.zeros(1, 3, size, size)).shape == (1, 100)


def test_an_architecture_without_a_linear_head_is_refused():
    import timm

    model = timm.models.VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0)
    with pytest.raises(UnsupportedArchitectureError, match=r"`head` is a Identity, not an nn\.Linear"):
        check_architecture(model)


def test_config_checks_the_model_and_the_image_size_against_its_patch():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_mapping({"model": "vit_large_patch16_224.dino"})
    assert all(name in str(e.value) for name in BACKBONES), "the supported list is named"
    with pytest.raises(ConfigError, match=r"image-size = 32 with model = 'vit_small_patch14_dinov2.lvd142m'.*14"):
        RunConfig.from_mapping({"model": "vit_small_patch14_dinov2.lvd142m", "image-size": 32})
    with pytest.raises(ConfigError, match=r"patch size 16 \(e\.g\. 16 or 32\)"):
        RunConfig.from_mapping({"image-size": 28})
    assert RunConfig.from_mapping({"model": "vit_small_patch14_dinov2.lvd142m", "image-size": 28}).image_size == 28
    assert RunConfig.from_mapping({"model": TINY_TEST_VIT, "image-size": 24}).image_size == 24  # patch 8
    with pytest.raises(ValueError, match="patch size 14"):
        build_model("vit_small_patch14_dinov2.lvd142m", image_size=32, pretrained=False)
