"""What a run records about its backbone: normalisation, patch size, and the per-sample gradient method with why."""

from __future__ import annotations

import pytest

from fedtalos.config import RunConfig
from fedtalos.editing.scoring import describe_model, model_record
from fedtalos.task.model import backbone_parameters, build_model


@pytest.mark.parametrize(
    ("name", "method", "reason"),
    [
        ("vit_small_patch16_224.augreg_in21k_ft_in1k", "hooks", "every backbone tensor is supported"),
        ("vit_small_patch16_dinov3.lvd1689m", "hooks", "every backbone tensor is supported"),
        ("vit_small_patch16_dinov3.lvd1689m", "vmap", "dynamic_img_size=True"),
    ],
)
def test_the_record_names_the_method_and_why(name: str, method: str, reason: str):
    config = RunConfig.from_mapping({"model": name, "image-size": 32})
    model = build_model(name, image_size=32, pretrained=False, depth=1)
    if method == "vmap":  # timm's own setting for DINOv3: the rotary embedding is recomputed per input
        model.dynamic_img_size = True
    record = model_record(config, model)
    assert record["fisher_method"] == method and reason in record["fisher_method_reason"]
    assert record["patch_size"] == 16 and record["image_size"] == 32
    assert record["backbone_tensors"] == len(list(backbone_parameters(model)))
    line = describe_model(record)
    assert f"Fisher scores per sample by {method}" in line and name in line
    if name.startswith("vit_small_patch16_224.augreg"):
        assert record["mean"] == record["std"] == [0.5, 0.5, 0.5]
