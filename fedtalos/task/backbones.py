"""The supported backbones: the timm ViTs a run's ``model`` key may name, with what the app needs to know about
each before building it (patch size, extra ``timm.create_model`` arguments). Plain data, no torch: the run config
checks ``model`` and ``image-size`` against it; the rest is read from the model when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TINY_TEST_VIT = "vit-tiny-test"


@dataclass(frozen=True)
class Backbone:
    """One supported model. ``name`` is the run-config value: a timm model name with its pretrained tag."""

    name: str
    label: str  # for messages: 'DINO ViT-S/16'
    patch_size: int  # pixels; image-size must be a multiple of it
    width: int  # embedding dimension; with depth, what the memory estimates (task/memory.py) scale by
    depth: int  # transformer blocks
    # Extra keyword arguments of timm.create_model; they never change the weight names or shapes.
    create_kwargs: dict[str, Any] = field(default_factory=dict)


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("vit_small_patch16_224.dino", "DINO ViT-S/16", 16, 384, 12),
        Backbone("vit_base_patch16_224.dino", "DINO ViT-B/16", 16, 768, 12),
        Backbone("vit_small_patch14_dinov2.lvd142m", "DINOv2 ViT-S/14", 14, 384, 12),
        # timm builds it with dynamic_img_size=True and average pooling; here the rotary embedding is computed for
        # the one configured resolution (what the per-layer Fisher scorer and a fixed-size run need) and the head
        # reads the CLS token, as upstream DINOv3 and the other backbones do.
        Backbone(
            "vit_small_patch16_dinov3.lvd1689m",
            "DINOv3 ViT-S/16",
            16,
            384,
            12,
            {"dynamic_img_size": False, "global_pool": "token"},
        ),
        Backbone("vit_small_patch16_224.augreg_in21k_ft_in1k", "supervised AugReg ViT-S/16", 16, 384, 12),
        # the seeds' tiny and large sizes, from what timm 1.0.31 serves pretrained
        Backbone("vit_tiny_patch16_224.augreg_in21k_ft_in1k", "supervised AugReg ViT-Ti/16", 16, 192, 12),
        Backbone("vit_large_patch14_dinov2.lvd142m", "DINOv2 ViT-L/14", 14, 1024, 24),
        Backbone(TINY_TEST_VIT, "tiny test ViT", 8, 32, 2),
    )
}
"""name → backbone, the default first."""

DEFAULT_BACKBONE = "vit_small_patch16_224.dino"


def get_backbone(name: str) -> Backbone:
    """The supported backbone ``name``; any other name raises ValueError listing the supported ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; supported: {', '.join(BACKBONES)}") from None


def image_size_problem(name: str, image_size: int) -> str | None:
    """Why ``image_size`` (pixels) does not fit model ``name``'s patch size, or None if it does."""
    patch = get_backbone(name).patch_size
    if image_size >= patch and image_size % patch == 0:
        return None
    below = max(patch, image_size // patch * patch)
    return f"must be a positive multiple of {name}'s patch size {patch} (e.g. {below} or {below + patch})"
