"""The model: a supported timm ViT (:mod:`fedtalos.task.backbones`) with a 100-class head, its weights and its
parameter groups (devices and precision: :mod:`fedtalos.task.device`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from fedtalos.task.backbones import DEFAULT_BACKBONE, TINY_TEST_VIT, Backbone, get_backbone, image_size_problem
from fedtalos.task.batches import IMAGENET_MEAN, IMAGENET_STD

DINO_VIT_S16 = DEFAULT_BACKBONE
HEAD_PREFIX = "head."


class ModelError(RuntimeError):
    """The model cannot be built as configured."""


class WeightsError(ModelError):
    """Pretrained weights could not be obtained or do not fit the architecture."""


class UnsupportedArchitectureError(ModelError):
    """The architecture lacks something that training or model editing needs (e.g. a linear ``head``)."""


def build_model(
    name: str = DINO_VIT_S16,
    *,
    num_classes: int = 100,
    image_size: int = 224,
    pretrained: bool = True,
    weights_path: str | Path | None = None,
    depth: int | None = None,
    initialise: bool = True,
) -> nn.Module:
    """Build a ViT classifier.

    Args:
        name: a supported backbone (:data:`fedtalos.task.backbones.BACKBONES`), e.g. ``'vit_small_patch16_224.dino'``
            (DINO ViT-S/16, 21.7M backbone parameters), or ``'vit-tiny-test'`` (2 blocks, width 32, patch 8,
            random init: for tests and CPU benchmarks only).
        num_classes: size of the new linear head, initialised as timm initialises ViT heads: weights from a
            truncated normal with std 0.02, bias 0, drawn from torch's global RNG (``task.resources`` seeds it).
        image_size: input resolution in pixels, a multiple of the model's patch size; timm resamples pretrained
            absolute position embeddings to it (rotary ones are computed for it).
        pretrained: load the backbone weights (ignored for the tiny test model).
        weights_path: a local ``.safetensors`` / ``.pth`` file with the backbone; without it timm downloads the
            model's file from the Hugging Face hub.
        depth: build only this many transformer blocks (same block type; for tests). None = the model's own.
        initialise: False: with ``pretrained=False``, leave the weights uninitialised (``torch.empty``: built on
            the meta device, no random draws) for a caller that loads every weight next, as a client does. A model
            with buffers outside its state dict (computed, not loaded) is initialised anyway.

    Raises:
        ValueError: unknown name, or an image size that is not a multiple of the patch size.
        WeightsError: offline without a weights file, or a file that does not fit the architecture.
        UnsupportedArchitectureError: a model that training or editing cannot handle (:func:`check_architecture`).
    """
    import timm

    backbone = get_backbone(name)
    problem = image_size_problem(name, image_size)
    if problem:
        raise ValueError(f"image size {image_size}: {problem}")
    kwargs = dict(backbone.create_kwargs, num_classes=num_classes, img_size=image_size)
    if depth is not None:
        kwargs["depth"] = depth
    if name == TINY_TEST_VIT:
        create = functools.partial(
            timm.models.VisionTransformer,
            img_size=image_size,
            patch_size=backbone.patch_size,
            embed_dim=backbone.width,
            depth=depth or backbone.depth,
            num_heads=2,
            mlp_ratio=2.0,
            num_classes=num_classes,
        )
        model = create() if initialise else _uninitialised(create, vision_transformer=True)
    elif not pretrained:
        create = functools.partial(timm.create_model, name, pretrained=False, **kwargs)
        entrypoint = timm.models.model_entrypoint(backbone.name)
        vision_transformer = entrypoint.__module__ == timm.models.vision_transformer.__name__
        model = create() if initialise else _uninitialised(create, vision_transformer=vision_transformer)
    elif weights_path:
        check_weights_file(weights_path, name, depth=depth)
        overlay = {"file": str(Path(weights_path).expanduser())}
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except (RuntimeError, KeyError, ValueError) as e:
            raise WeightsError(f"could not load {backbone.label} weights from {weights_path}: {e}") from None
    else:
        model = _from_hub(backbone, kwargs)
    check_architecture(model)
    return model


def _uninitialised(create: Callable[..., nn.Module], vision_transformer: bool) -> nn.Module:
    """``create()``'s model with its tensors allocated on the CPU but not initialised (no random draws), unless it
    has buffers outside its state dict, which loading weights would not fill: then ``create()`` itself.
    ``vision_transformer``: it is timm's ``VisionTransformer``, which can also skip its init pass on the meta
    device (``weight_init='skip'``; tens of ms for ViT-S/16)."""
    with torch.device("meta"):
        model = create(weight_init="skip") if vision_transformer else create()
    loaded = set(model.state_dict())
    if any(name not in loaded for name, _ in model.named_buffers()):
        return create()
    return model.to_empty(device="cpu")


def _from_hub(backbone: Backbone, kwargs: dict) -> nn.Module:
    import timm

    from fedtalos.task.hub import cached_file, hub_unreachable

    hub_id = timm.models.get_pretrained_cfg(backbone.name).hf_hub_id or f"timm/{backbone.name}"
    unreachable = hub_unreachable()
    try:
        if unreachable is None:
            return timm.create_model(backbone.name, pretrained=True, **kwargs)
        cached = cached_file(hub_id)
        if cached is not None:  # downloaded before: load it without asking the hub
            overlay = {"file": cached}
            return timm.create_model(backbone.name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        reason = f"the hub cannot be reached: {unreachable}"
    except Exception as e:  # hub errors come in many types (OSError, HTTP errors, LocalEntryNotFoundError)
        reason = type(e).__name__
    dino = backbone.name == DINO_VIT_S16
    extra = " The original DINO checkpoint dino_deitsmall16_pretrain.pth works too." if dino else ""
    raise WeightsError(
        f"could not download the {backbone.label} weights from the Hugging Face hub ({hub_id}): {reason}.\n"
        f"Offline? Download https://huggingface.co/{hub_id}/resolve/main/model.safetensors on a "
        "machine with internet, copy it here and set weights-path=/abs/path/model.safetensors "
        f"(centralized: --weights-path).{extra}"
    )


def check_architecture(model: nn.Module) -> None:
    """Raise :class:`UnsupportedArchitectureError`, with the reason, unless ``model`` has what the app relies on.

    A linear classifier at ``head`` (step 0 fits or trains it alone; masks cover everything else, the backbone),
    ``forward_features`` / ``forward_head(..., pre_logits=True)`` (the ridge head's features), and no parameter
    shared between the head and the backbone (one could not be frozen without the other).
    """
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: the classifier `head` is a {type(head).__name__}, not an nn.Linear; the "
            "head step (ridge / probe) and the backbone masks need a linear head named `head`"
        )
    for method in ("forward_features", "forward_head"):
        if not callable(getattr(model, method, None)):
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} has no {method}(); the ridge head reads the backbone's features with it"
            )
    head_ids = {id(p) for p in head.parameters()}
    shared = [n for n, p in backbone_parameters(model) if id(p) in head_ids]
    if shared:
        raise UnsupportedArchitectureError(f"{type(model).__name__}: the head shares parameters with {shared[:3]}")


def input_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel, in [0, 1] units, that model ``name`` was pretrained with (timm's pretrained
    config, read without downloading anything); ImageNet's for the tiny test model."""
    import timm

    if get_backbone(name).name == TINY_TEST_VIT:
        return IMAGENET_MEAN, IMAGENET_STD
    cfg = timm.models.get_pretrained_cfg(name)
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def expected_backbone_shapes(name: str = DINO_VIT_S16, depth: int | None = None) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of model ``name``'s pretrained backbone at its own resolution (as in timm's hub file),
    built on the meta device (no memory). ``depth``: as in :func:`build_model`."""
    return dict(_backbone_shapes(name, depth))


@functools.cache
def _backbone_shapes(name: str, depth: int | None) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import timm

    kwargs = dict(get_backbone(name).create_kwargs)
    if depth is not None:
        kwargs["depth"] = depth
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_weights_file(path: str | Path, name: str = DINO_VIT_S16, depth: int | None = None) -> None:
    """Fail fast, without loading weights into a model, if ``path`` is missing or is not model ``name``'s backbone.

    Reads only tensor names and shapes (safetensors header, or a memory-mapped ``torch.load`` with
    ``weights_only=True``, which runs no code) and compares them with :func:`expected_backbone_shapes` (the
    position embedding may have another grid: timm resamples it).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        shapes = _read_shapes(path)
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"{path} is not a readable .safetensors or torch checkpoint: {e}") from None
    expected = expected_backbone_shapes(name, depth)
    shapes = {k: v for k, v in shapes.items() if not k.startswith(HEAD_PREFIX)}
    missing = sorted(set(expected) - set(shapes))
    wrong = sorted(k for k in set(expected) & set(shapes) if shapes[k] != expected[k] and k != "pos_embed")
    if missing or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})")
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} with other shapes (e.g. {k}: {shapes[k]} instead of {expected[k]})")
        label = get_backbone(name).label
        raise WeightsError(f"{path} does not hold {label} ({name}) weights: {'; '.join(details)}")


# ---------------------------------------------------------------------------------------------------------------
# Head / backbone.


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the classifier head's parameters (``head.weight``, ``head.bias``)."""
    return [n for n, _ in model.named_parameters() if n.startswith(HEAD_PREFIX)]


def backbone_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) for everything but the head: the parameters that model editing scores."""
    return ((n, p) for n, p in model.named_parameters() if not n.startswith(HEAD_PREFIX))


def trains(name: str, freeze: str) -> bool:
    """Whether parameter ``name`` trains when ``freeze`` is frozen: ``'none'`` (everything trains), ``'backbone'``
    (the head only) or ``'head'`` (all but the head)."""
    is_head = name.startswith(HEAD_PREFIX)
    return {"none": True, "backbone": is_head, "head": not is_head}[freeze]


def set_trainable(model: nn.Module, freeze: str) -> None:
    """``requires_grad`` of every parameter from :func:`trains`."""
    for n, p in model.named_parameters():
        p.requires_grad_(trains(n, freeze))
