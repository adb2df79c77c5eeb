"""The per-layer (hooks) Fisher scorer: equal to the per-sample loop on ViT variants, its rules, and its limits."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from fedtalos.editing import persample
from fedtalos.editing.calibration import calibrate_mask
from fedtalos.editing.fisher import fisher_scores, per_sample_loop_scores, scoring_method
from fedtalos.editing.masks import floor_count
from fedtalos.editing.persample import UnsupportedParameterError, sum_sq_outer, unsupported_parameters
from fedtalos.task.backbones import BACKBONES, get_backbone
from fedtalos.task.model import DINO_VIT_S16, backbone_parameters, build_model


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-4) -> None:
    """Per tensor, relative to its largest score; tensors whose scores are zero in exact arithmetic (e.g. a key
    bias: it shifts all of a query's attention logits alike) hold rounding noise, compared to 1e-6 of the largest."""
    assert a.keys() == b.keys()
    floor = 1e-6 * max(float(t.abs().max()) for t in b.values())
    for name in a:
        scale = b[name].abs().max().clamp_min(floor)
        assert (a[name] - b[name]).abs().max() <= rtol * scale, name


def _with_head(model: nn.Module) -> nn.Module:
    with torch.no_grad():  # timm zero-inits new heads, which would give all-zero backbone gradients
        model.head.weight.normal_(0, 0.1)
    return model.eval()


def _soft_mask(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    g = _gen(7)
    return {n: torch.rand(model.get_parameter(n).shape, generator=g) < 0.5 for n in names}


@pytest.mark.parametrize("t", [1, 2, 4, 5, 17])
@pytest.mark.parametrize("block", [persample.BLOCK_ELEMENTS, 1, 200])
@pytest.mark.parametrize("shape", [(5, 7), (7, 5)])
def test_sum_of_squared_outer_products(t, block, shape, monkeypatch):
    """All ways (token pairs; per-sample products one by one or in blocks, either orientation) give Σ_i (Σ_t g x)²."""
    monkeypatch.setattr(persample, "BLOCK_ELEMENTS", block)
    g = torch.randn(9, t, shape[0], generator=_gen(1), dtype=torch.float64)
    x = torch.randn(9, t, shape[1], generator=_gen(2), dtype=torch.float64)
    expected = torch.einsum("bto,bti->boi", g, x).square().sum(0)
    torch.testing.assert_close(sum_sq_outer(g, x), expected)


def test_vit_s16_architecture_at_32_px():
    """DINO ViT-S/16 (random init, 2×2 patches + cls): hooks == loop, with a soft mask and a chunk boundary."""
    torch.manual_seed(0)
    model = _with_head(build_model(DINO_VIT_S16, num_classes=10, image_size=32, pretrained=False))
    x = torch.randn(3, 3, 32, 32, generator=_gen(2))
    soft = _soft_mask(model, ["blocks.3.mlp.fc1.weight", "pos_embed", "patch_embed.proj.weight", "norm.bias"])
    kwargs = dict(soft_mask=soft, soft_value=0.1, target="log-prob")
    hooks = fisher_scores(model, [x[:2], x[2:]], generator=_gen(), chunk_size=2, method="hooks", **kwargs)
    loop = per_sample_loop_scores(model, [x[:2], x[2:]], generator=_gen(), **kwargs)
    assert len(hooks) == 150  # every backbone parameter
    _assert_close(hooks, loop)


VARIANTS = {
    # register tokens, position embedding without the prefix tokens, LayerScale, q/k LayerNorms over head_dim,
    # a pre-norm, and 36 px with patch 8 (the patch embedding drops a 4 px border).
    "reg-layerscale-qknorm": dict(
        img_size=36, reg_tokens=2, no_embed_class=True, init_values=0.1, qk_norm=True, pre_norm=True
    ),
    # no class token, average pooling with fc_norm, one register token.
    "no-cls-avgpool": dict(class_token=False, global_pool="avg", reg_tokens=1, fc_norm=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_timm_vit_variants(variant):
    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5)
    model = _with_head(timm.models.VisionTransformer(**{**kwargs, **VARIANTS[variant]}))
    size = VARIANTS[variant].get("img_size", 32)
    batches = [torch.randn(n, 3, size, size, generator=_gen(n)) for n in (3, 2)]
    names = [n for n, _ in model.named_parameters() if not n.startswith("head.")]
    assert not unsupported_parameters(model, names)
    soft = _soft_mask(model, [n for n in names if "blocks.1" in n or "token" in n])
    hooks = fisher_scores(model, batches, generator=_gen(), chunk_size=4, soft_mask=soft, method="hooks")
    loop = per_sample_loop_scores(model, batches, generator=_gen(), soft_mask=soft)
    _assert_close(hooks, loop)
    assert all(bool((t > 0).any()) for t in hooks.values()), variant


def test_a_selection_of_late_parameters_starts_the_graph_in_the_middle():
    """Only block 1 and the final norm scored: the backward pass starts at their modules' outputs."""
    torch.manual_seed(0)
    model = _with_head(build_model("vit-tiny-test", num_classes=5, image_size=32))
    x = torch.randn(4, 3, 32, 32, generator=_gen(3))
    names = ["blocks.1.mlp.fc2.bias", "blocks.1.norm1.weight", "norm.weight", "blocks.1.attn.proj.weight"]
    hooks = fisher_scores(model, [x], params=names, generator=_gen(), method="hooks")
    _assert_close(hooks, per_sample_loop_scores(model, [x], params=names, generator=_gen()))


def test_auto_picks_hooks_when_everything_is_supported_and_vmap_otherwise():
    torch.manual_seed(0)
    vit = _with_head(build_model("vit-tiny-test", num_classes=5, image_size=32))
    x = torch.randn(3, 3, 32, 32, generator=_gen(4))
    auto = fisher_scores(vit, [x], generator=_gen())
    assert all(torch.equal(auto[n], t) for n, t in fisher_scores(vit, [x], generator=_gen(), method="hooks").items())
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    cnn.eval()
    images = torch.randn(3, 3, 4, 4, generator=_gen(5))
    assert set(unsupported_parameters(cnn, ["0.weight", "1.weight", "4.weight"])) == {"0.weight", "1.weight"}
    with pytest.raises(UnsupportedParameterError, match=r"0\.weight"):
        fisher_scores(cnn, [images], method="hooks")
    auto = fisher_scores(cnn, [images], generator=_gen())
    vmap = fisher_scores(cnn, [images], generator=_gen(), method="vmap")
    assert all(torch.equal(auto[n], t) for n, t in vmap.items())
    _assert_close(auto, per_sample_loop_scores(cnn, [images], generator=_gen()))


def test_an_in_place_activation_after_a_linear_is_fine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 4))
    x = torch.randn(7, 6, generator=_gen(6))
    hooks = fisher_scores(model, [x], method="hooks", generator=_gen())
    _assert_close(hooks, per_sample_loop_scores(model, [x], generator=_gen()))


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.fc(x)))


class _InPlaceInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x)
        y = self.fc(h)
        h.mul_(2)  # changes fc's input after fc ran
        return self.out(y + h)


def test_what_the_hooks_method_refuses():
    x = torch.randn(3, 4, generator=_gen(8))
    with pytest.raises(UnsupportedParameterError, match="ran 2 times"):
        fisher_scores(_Twice(), [x], method="hooks")
    with pytest.raises(UnsupportedParameterError, match="modified in place"):
        fisher_scores(_InPlaceInput(), [x], method="hooks")
    tied = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    tied[2].weight = tied[0].weight
    assert unsupported_parameters(tied, ["0.weight", "0.bias"]) == {"0.weight": "a parameter shared by several modules"}
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    assert set(unsupported_parameters(mha, [n for n, _ in mha.named_parameters()])) == {
        "in_proj_weight",
        "in_proj_bias",
        "out_proj.weight",
        "out_proj.bias",
    }
    dynamic = timm.models.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, dynamic_img_size=True
    )
    assert set(unsupported_parameters(dynamic, ["pos_embed", "cls_token", "blocks.0.mlp.fc1.weight"])) == {
        "pos_embed",
        "cls_token",
    }


# The per-sample gradient method of each supported backbone (fisher_scores' "auto"): hooks where every backbone
# tensor has a per-layer rule, else the vmap fallback. All of them have the rules: DINOv2 through LayerScale, DINOv3
# (timm's Eva) through its own _pos_embed (cls + 4 register tokens, rotary embeddings) and EvaBlock's gamma_1/2.
BACKBONE_METHODS = dict.fromkeys(BACKBONES, "hooks")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_scores_as_the_loop_and_gets_a_mask_of_its_shapes(name):
    """Each supported backbone (random init, one block of its own type, 2×2 patches): the automatic method's scores
    equal the per-sample loop's on 3 samples, and a least-sensitive mask covers exactly its backbone tensors."""
    torch.manual_seed(0)
    size = 2 * get_backbone(name).patch_size
    model = _with_head(build_model(name, num_classes=10, image_size=size, pretrained=False, depth=1))
    method, unsupported = scoring_method(model)
    assert method == BACKBONE_METHODS[name], unsupported
    assert (method == "hooks") == (unsupported == {})
    x = torch.randn(3, 3, size, size, generator=_gen(2))
    kwargs = dict(soft_mask=_soft_mask(model, list(dict(backbone_parameters(model)))), target="log-prob")
    auto = fisher_scores(model, [x[:2], x[2:]], generator=_gen(), chunk_size=2, **kwargs)
    loop = per_sample_loop_scores(model, [x[:2], x[2:]], generator=_gen(), **kwargs)
    _assert_close(auto, loop)
    mask = calibrate_mask(model, [x], sparsity=0.9, rounds=1, rule="least-sensitive")
    backbone = dict(backbone_parameters(model))
    assert {n: m.shape for n, m in mask.items()} == {n: p.shape for n, p in backbone.items()}
    assert all(m.dtype == torch.bool for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    assert kept == floor_count(0.1, sum(p.numel() for p in backbone.values()))


def test_eva_outside_the_per_layer_rules_falls_back_to_vmap():
    """timm's own DINOv3 settings (dynamic_img_size=True: the rotary embedding follows each input) and an EvaBlock
    whose drop path is not the identity are refused by the hooks method with the reason; auto then uses vmap."""
    kwargs = dict(pretrained=False, num_classes=10, img_size=32, depth=1)
    dynamic = _with_head(timm.create_model("vit_small_patch16_dinov3.lvd1689m", **kwargs))
    method, unsupported = scoring_method(dynamic)
    assert method == "vmap" and unsupported["cls_token"].startswith("dynamic_img_size=True")
    fixed = build_model("vit_small_patch16_dinov3.lvd1689m", num_classes=10, image_size=32, pretrained=False, depth=1)
    fixed.blocks[0].drop_path2 = nn.Dropout(0.0)
    assert "followed by a Dropout" in unsupported_parameters(fixed, ["blocks.0.gamma_2"])["blocks.0.gamma_2"]
    with pytest.raises(UnsupportedParameterError, match="gamma_2"):
        fisher_scores(fixed, [torch.zeros(1, 3, 32, 32)], method="hooks")
