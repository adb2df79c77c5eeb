"""The model: a supported timm ViT (:mod:`fedtalos.task.backbones`) with a 100-class head, devices and precision."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
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
        model = timm.models.VisionTransformer(
            img_size=image_size,
            patch_size=backbone.patch_size,
            embed_dim=32,
            depth=depth or 2,
            num_heads=2,
            mlp_ratio=2.0,
            num_classes=num_classes,
        )
    elif not pretrained:
        model = timm.create_model(name, pretrained=False, **kwargs)
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


def _from_hub(backbone: Backbone, kwargs: dict) -> nn.Module:
    import timm

    hub_id = timm.models.get_pretrained_cfg(backbone.name).hf_hub_id or f"timm/{backbone.name}"
    try:
        return timm.create_model(backbone.name, pretrained=True, **kwargs)
    except Exception as e:  # hub errors come in many types (OSError, HTTP errors, LocalEntryNotFoundError)
        extra = (
            " The original DINO checkpoint dino_deitsmall16_pretrain.pth works too."
            if backbone.name == DINO_VIT_S16
            else ""
        )
        raise WeightsError(
            f"could not download the {backbone.label} weights from the Hugging Face hub "
            f"({hub_id}): {type(e).__name__}.\n"
            f"Offline? Download https://huggingface.co/{hub_id}/resolve/main/model.safetensors on a "
            "machine with internet, copy it here and set weights-path=/abs/path/model.safetensors "
            f"(centralized: --weights-path).{extra}"
        ) from None


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


def set_trainable(model: nn.Module, freeze: str) -> None:
    """``'none'``: train everything; ``'backbone'``: train the head only; ``'head'``: all but the head."""
    for n, p in model.named_parameters():
        is_head = n.startswith(HEAD_PREFIX)
        p.requires_grad_({"none": True, "backbone": is_head, "head": not is_head}[freeze])


# ---------------------------------------------------------------------------------------------------------------
# Device and precision.


RESOURCE_ERROR = "resource error:"  # leads the message of every ResourceError (the server looks for it)


class ResourceError(RuntimeError):
    """This process lacks a resource the run needs (memory, a device): fatal for the run, never a dropout.

    The message starts with :data:`RESOURCE_ERROR`, so that it survives Flower's error replies (which carry only
    ``str(exception)``) and the server can stop the whole run with it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"{RESOURCE_ERROR} {message}")


class DeviceUnavailable(ResourceError):
    """The device the run asked for is not usable in this process."""


# What to lower when a query runs out of memory, by Flower message type.
MEMORY_ADVICE = {
    "train": "batch-size",
    "evaluate": "eval-batch-size",
    "query.ridge": "eval-batch-size",
    "query.fisher": "fisher-samples (its chunks already shrink to the free memory) or eval-batch-size",
}


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA's ``torch.OutOfMemoryError`` and MPS's "MPS backend out of memory" RuntimeError."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error)
    )


def out_of_memory(what: str, error: BaseException) -> ResourceError:
    """The fatal :class:`ResourceError` for an out-of-memory ``error`` in ``what`` (a Flower message type)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ResourceError(
        f"out of memory in {what} ({first[:300]}). Lower {MEMORY_ADVICE.get(what, 'batch-size')} or image-size, "
        "or run fewer clients per GPU (a larger client-resources-num-gpus in the federation config); see the "
        "README's GPU section for the memory each needs"
    )


# One device node per NVIDIA card this process may open (Linux; a container started without GPUs has none).
NVIDIA_DEVICE_NODES = (Path("/dev"), "nvidia[0-9]*")


def gpus_hidden() -> bool:
    """True when this process could open NVIDIA GPUs but CUDA shows it none (CUDA_VISIBLE_DEVICES empty or wrong).

    Ray gives an actor without ``num_gpus`` an empty ``CUDA_VISIBLE_DEVICES``: the cards are there, CUDA is not.
    """
    directory, pattern = NVIDIA_DEVICE_NODES
    return not torch.cuda.is_available() and any(directory.glob(pattern))


def resolve_device(name: str = "auto") -> torch.device:
    """``'auto'`` → cuda if available, else mps, else cpu; anything else is checked to exist.

    Never falls back silently: ``'auto'`` on a machine whose GPUs this process cannot see (a Flower client
    actor that Ray gave no GPU) raises instead of training on the CPU, and ``'cuda:N'`` needs N GPUs visible.

    Raises:
        DeviceUnavailable: the device is missing, hidden from this process, or ``cuda:N`` beyond the visible GPUs.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if gpus_hidden():
            raise DeviceUnavailable(
                "device = 'auto': this machine has NVIDIA GPUs but this process sees none "
                f"(CUDA_VISIBLE_DEVICES = {os.environ.get('CUDA_VISIBLE_DEVICES')!r}); a Flower client needs "
                "client-resources-num-gpus > 0 in the federation config (fedtalos run sets it), or set "
                "device = 'cpu' to train on the CPU on purpose"
            )
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        hidden = " (the machine has GPUs, hidden from this process: client-resources-num-gpus = 0?)"
        raise DeviceUnavailable(
            f"device = {name!r} but CUDA is not available in this process{hidden if gpus_hidden() else ''}"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"device = {name!r} but this process sees {torch.cuda.device_count()} GPU(s), cuda:0 and up. In "
            "Flower's simulation every client actor sees only the GPU Ray assigned to it, as cuda:0: use "
            "device = 'cuda' (choose the cards with CUDA_VISIBLE_DEVICES)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"device = {name!r} but MPS is not available on this machine")
    return device


BF16_MIN_CAPABILITY = (8, 0)  # Ampere and later have bf16 tensor cores; Volta and Turing (T4) emulate bf16


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = full fp32); see :func:`precision_choice`."""
    return precision_choice(device, precision)[0]


def precision_choice(device: torch.device, precision: str = "auto") -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, the reason in words, for the log).

    'bf16' and 'fp32' are taken as given. 'auto': bf16 autocast on CUDA cards of compute capability 8.0 or more,
    fp32 everywhere else, older CUDA cards included. Not fp16 there: it needs a loss scaler whose scale is state,
    and a federated client starts a fresh one every round, whose first steps overflow and are skipped, so clients
    would run fewer than their J local steps, silently and unevenly (carrying the scale would put it into the
    messages and checkpoints); bf16 would run, emulated, slower than fp32.
    """
    if precision in ("bf16", "fp32"):
        return (torch.bfloat16 if precision == "bf16" else None), f"{precision} (precision = {precision!r})"
    if device.type != "cuda":
        return None, f"fp32: precision = 'auto' on {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) >= BF16_MIN_CAPABILITY:
        return torch.bfloat16, f"bf16 autocast: precision = 'auto' on a CUDA card of compute capability {major}.{minor}"
    return None, (
        f"fp32: precision = 'auto' on a CUDA card of compute capability {major}.{minor} < 8.0, which has no "
        "bf16 tensor cores (and fp16 would need loss scaling); precision = 'bf16' forces emulated bf16"
    )


def set_matmul_precision(device: torch.device, deterministic: bool) -> None:
    """TF32 tensor cores for the fp32 matrix products on CUDA (Fisher scores, ridge features, precision = 'fp32'):
    ``torch.set_float32_matmul_precision('high')``, unless ``deterministic`` asks for results that do not depend
    on the card. Everywhere else PyTorch's default, 'highest' (so CPU results never change)."""
    torch.set_float32_matmul_precision("high" if device.type == "cuda" and not deterministic else "highest")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None (full fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def empty_cache(device: torch.device) -> None:
    """Hand the caching allocator's free blocks back to the driver (after a query's large, one-off tensors)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def environment(device: torch.device, dtype: torch.dtype | None) -> dict[str, str]:
    """What a run resolved ``device`` / ``precision`` to here: device, autocast dtype and GPU name (config.json)."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return {"device": device.type, "dtype": str(dtype or torch.float32).removeprefix("torch."), "gpu": gpu}


def set_deterministic(on: bool) -> None:
    """With ``on``: deterministic kernels everywhere (``deterministic = true``), at a speed cost on GPUs.

    ``torch.use_deterministic_algorithms`` (ops without a deterministic kernel raise), cuBLAS's fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG``, read when cuBLAS starts: call this before any CUDA work), cuDNN without
    benchmarking, and the math attention kernel (the fused flash / memory-efficient backwards use atomics).
    Off: nothing is changed (PyTorch's defaults).
    """
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.enable_math_sdp(True)
