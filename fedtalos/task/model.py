"""The model: timm's DINO ViT-S/16 with a 100-class head, a tiny test ViT, devices and precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

DINO_VIT_S16 = "vit_small_patch16_224.dino"
TINY_TEST_VIT = "vit-tiny-test"
HF_HUB_ID = "timm/vit_small_patch16_224.dino"
HEAD_PREFIX = "head."


class WeightsError(RuntimeError):
    """Pretrained weights could not be obtained or do not fit the architecture."""


def build_model(
    name: str = DINO_VIT_S16,
    *,
    num_classes: int = 100,
    image_size: int = 224,
    pretrained: bool = True,
    weights_path: str | Path | None = None,
) -> nn.Module:
    """Build a ViT classifier.

    Args:
        name: ``'vit_small_patch16_224.dino'`` (DINO ViT-S/16 from timm, 21.7M backbone parameters) or
            ``'vit-tiny-test'`` (2 blocks, width 32, patch 8, random init: for tests and CPU benchmarks only).
        num_classes: size of the new linear head, initialised as timm initialises ViT heads: weights from a
            truncated normal with std 0.02, bias 0, drawn from torch's global RNG (``task.resources`` seeds it).
        image_size: input resolution in pixels; the pretrained 14×14 position embeddings are resampled when
            it is not 224.
        pretrained: load the DINO backbone weights (ignored for the tiny test model).
        weights_path: a local ``.safetensors`` / ``.pth`` file with the DINO backbone; without it timm
            downloads ``timm/vit_small_patch16_224.dino`` from the Hugging Face hub.

    Raises:
        WeightsError: offline without a weights file, or a file that does not fit the architecture.
    """
    import timm

    if name == TINY_TEST_VIT:
        return timm.models.VisionTransformer(
            img_size=image_size,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            num_classes=num_classes,
        )
    if name != DINO_VIT_S16:
        raise ValueError(f"unknown model {name!r}; use {DINO_VIT_S16!r} or {TINY_TEST_VIT!r}")
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size)
    if weights_path:
        check_weights_file(weights_path)
        overlay = {"file": str(Path(weights_path).expanduser())}
        try:
            return timm.create_model(
                name, pretrained=True, num_classes=num_classes, img_size=image_size, pretrained_cfg_overlay=overlay
            )
        except (RuntimeError, KeyError, ValueError) as e:
            raise WeightsError(f"could not load DINO ViT-S/16 weights from {weights_path}: {e}") from None
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, img_size=image_size)
    except Exception as e:  # hub errors come in many types (OSError, HTTP errors, LocalEntryNotFoundError)
        raise WeightsError(
            "could not download the DINO ViT-S/16 weights from the Hugging Face hub "
            f"({HF_HUB_ID}): {type(e).__name__}.\n"
            f"Offline? Download https://huggingface.co/{HF_HUB_ID}/resolve/main/model.safetensors on a "
            "machine with internet, copy it here and set weights-path=/abs/path/model.safetensors "
            "(centralized: --weights-path). The original DINO checkpoint "
            "dino_deitsmall16_pretrain.pth works too."
        ) from None


def expected_backbone_shapes(name: str = DINO_VIT_S16) -> dict[str, tuple[int, ...]]:
    """Parameter name → shape of the pretrained backbone at 224 px, built on the meta device (no memory)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


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


def check_weights_file(path: str | Path, name: str = DINO_VIT_S16) -> None:
    """Fail fast, without loading weights into a model, if ``path`` is missing or is not a ViT-S/16 backbone.

    Reads only tensor names and shapes (safetensors header, or a memory-mapped ``torch.load`` with
    ``weights_only=True``, which runs no code).
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
    expected = expected_backbone_shapes(name)
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
        raise WeightsError(f"{path} does not hold DINO ViT-S/16 ({name}) weights: {'; '.join(details)}")


# ---------------------------------------------------------------------------------------------------------------
# Head / backbone.


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the classifier head's parameters (``head.weight``, ``head.bias``)."""
    return [n for n, _ in model.named_parameters() if n.startswith(HEAD_PREFIX)]


def backbone_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) for everything but the head: the parameters that model editing scores."""
    return ((n, p) for n, p in model.named_parameters() if not n.startswith(HEAD_PREFIX))


def set_trainable(model: nn.Module, freeze: str) -> None:
    """``'none'``: train everything; ``'backbone'``: train the head only; ``'head'``: all but the head."""
    for n, p in model.named_parameters():
        is_head = n.startswith(HEAD_PREFIX)
        p.requires_grad_({"none": True, "backbone": is_head, "head": not is_head}[freeze])


# ---------------------------------------------------------------------------------------------------------------
# Device and precision.


def resolve_device(name: str = "auto") -> torch.device:
    """``'auto'`` → cuda if available, else mps, else cpu; anything else is checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device = {name!r} but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device = {name!r} but MPS is not available on this machine")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: bf16 for 'bf16' (and 'auto' on CUDA), else None."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None (full fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
