"""GPU memory budget of one process: estimates per image size, the default GPU share of a client actor.

Estimates read off DINO ViT-S/16's shapes, not measurements: ≈ 1.4 GB for a training step of 32 images at 224 px
in bf16, ≈ 79 MB per sample for the Fisher hooks in fp32, both scaling with the tokens, (S/16)² + 1 at S px; plus
the CUDA context, weights, gradients, momentum and the CIFAR arrays. ``bench/gpu.sh`` measures the real peaks.
"""

from __future__ import annotations

import math

import torch

from fedtalos.config import RunConfig

GIB = 2**30
TOKENS_224 = 197
TRAIN_BYTES_PER_SAMPLE_224 = 1.4e9 / 32  # bf16 autocast; fp32 roughly doubles it
FISHER_BYTES_PER_SAMPLE_224 = 79e6  # fp32 per-sample hooks
FIXED_BYTES = 1.0 * GIB  # CUDA context (~0.5 GB), weights + gradients + momentum (~0.26 GB), CIFAR arrays (~0.2 GB)
SERVER_BYTES = 2.0 * GIB  # the ServerApp in simulation: its own context, model and validation/test evaluation
HOOKS_DEFAULT_CHUNK = 128  # editing.fisher.DEFAULT_CHUNK_SIZES["hooks"] (task/ does not import editing/)
TINY_SCALE = 0.02  # vit-tiny-test (width 32, depth 2) against ViT-S/16 (width 384, depth 12): far below 1 %


def _tokens(image_size: int, patch: int = 16) -> int:
    return (image_size // patch) ** 2 + 1


def _model_scale(config: RunConfig) -> float:
    return TINY_SCALE if config.model == "vit-tiny-test" else 1.0


def train_activation_bytes(config: RunConfig) -> float:
    """Estimated activation memory (bytes) of one training step of ``batch-size`` images at ``image-size``."""
    factor = 2.0 if config.precision == "fp32" else 1.0
    per_sample = TRAIN_BYTES_PER_SAMPLE_224 * _tokens(config.image_size) / TOKENS_224
    return factor * config.batch_size * per_sample * _model_scale(config)


def fisher_bytes_per_sample(config: RunConfig) -> float:
    """Estimated memory (bytes) per sample of a Fisher-scoring chunk (per-sample hooks, fp32) at ``image-size``."""
    return FISHER_BYTES_PER_SAMPLE_224 * _tokens(config.image_size) / TOKENS_224 * _model_scale(config)


def actor_peak_bytes(config: RunConfig) -> float:
    """Estimated peak GPU memory (bytes) of one client actor: fixed costs + the larger of a training step and,
    for editing runs, a Fisher chunk (``min(fisher-samples, 128)`` samples)."""
    fisher = fisher_bytes_per_sample(config) * min(config.fisher_samples, HOOKS_DEFAULT_CHUNK) if config.editing else 0
    return FIXED_BYTES + max(train_activation_bytes(config), fisher)


def gpu_fraction(total_bytes: int, config: RunConfig) -> float:
    """``client-resources-num-gpus`` for a card of ``total_bytes``: 1/n for the n actors whose estimated peaks
    (:func:`actor_peak_bytes`) fit beside the ServerApp; at least one actor (1.0) on a small card, at most 16."""
    actors = math.floor((total_bytes - SERVER_BYTES) / actor_peak_bytes(config))
    actors = min(16, max(1, actors))
    return math.floor(100 / actors) / 100  # two decimals, rounded down: n actors always fit


def model_bytes(config: RunConfig, num_classes: int = 100) -> int:
    """Bytes of the model's weights (fp32), counted on the meta device: nothing is allocated or loaded."""
    from fedtalos.task.model import build_model

    with torch.device("meta"):
        model = build_model(config.model, num_classes=num_classes, image_size=config.image_size, pretrained=False)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def shared_memory_bytes(config: RunConfig) -> int:
    """Bytes the shared-memory transport holds at once: the round's global weights and one upload per client of
    the largest cohort (training or calibration), each at most the model's size."""
    cohort = max(config.cohort_size, config.calibration_cohort_size if config.editing else 0)
    return (cohort + 1) * model_bytes(config)
