"""Devices, precision, determinism and out-of-memory errors: what a process resolves ``device`` and
``precision`` to, and the fatal :class:`ResourceError` (with its :data:`RESOURCE_ERROR` marker) that stops a run."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

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
        "or run fewer clients per GPU (a larger client-resources-num-gpus in the federation config); see "
        "docs/gpus-and-scaling.md for the memory each needs"
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
