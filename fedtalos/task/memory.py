"""GPU memory budget of one process: estimates per image size, the default GPU share of a client actor.

Estimates read off DINO ViT-S/16's shapes, not measurements: ≈ 1.4 GB for a training step of 32 images at 224 px
in bf16, ≈ 79 MB per sample for the Fisher hooks in fp32, both scaling with the tokens, (S/p)² + 1 at S px and patch
p, and with width × depth (the activations every linear layer keeps per token); plus the CUDA context, the CIFAR
arrays and the weights, gradients and momentum (12 bytes per parameter). ``bench/gpu.sh`` measures the real peaks.
``python -m fedtalos.task.memory`` prints the table of every backbone (docs/memory.md).
"""

from __future__ import annotations

import math

import torch

from fedtalos.config import RunConfig
from fedtalos.task.backbones import BACKBONES, DEFAULT_BACKBONE, TINY_TEST_VIT, Backbone, get_backbone

GIB = 2**30
TRAIN_BYTES_PER_SAMPLE_224 = 1.4e9 / 32  # bf16 autocast; fp32 roughly doubles it
FISHER_BYTES_PER_SAMPLE_224 = 79e6  # fp32 per-sample hooks
FIXED_BYTES = 1.0 * GIB  # ViT-S/16: CUDA context (~0.5 GB), weights + gradients + momentum (~0.26 GB), CIFAR (~0.2 GB)
SERVER_BYTES = 2.0 * GIB  # the ServerApp in simulation: its own context, model and validation/test evaluation
HOOKS_DEFAULT_CHUNK = 128  # editing.fisher.DEFAULT_CHUNK_SIZES["hooks"] (task/ does not import editing/)
STATE_BYTES_PER_PARAMETER = 12  # fp32 weights, gradients and SGD momentum
REFERENCE = get_backbone(DEFAULT_BACKBONE)  # the model the constants above were read off


def _tokens(image_size: int, patch: int) -> int:
    return (image_size // patch) ** 2 + 1


def _parameters(backbone: Backbone) -> int:
    # a ViT block holds 4 w² attention and 8 w² MLP weights (MLP ratio 4); embeddings and norms are small beside
    return 12 * backbone.width**2 * backbone.depth


def _activation_scale(config: RunConfig) -> float:
    """Per-sample activations of ``config``'s model at its image size, relative to ViT-S/16 at 224 px."""
    backbone = get_backbone(config.model)
    tokens = _tokens(config.image_size, backbone.patch_size) / _tokens(224, REFERENCE.patch_size)
    return tokens * backbone.width * backbone.depth / (REFERENCE.width * REFERENCE.depth)


def fixed_bytes(config: RunConfig) -> float:
    """Estimated memory (bytes) that does not depend on the batch: :data:`FIXED_BYTES` with the model's own
    weights, gradients and momentum in place of ViT-S/16's."""
    extra = _parameters(get_backbone(config.model)) - _parameters(REFERENCE)
    return FIXED_BYTES + STATE_BYTES_PER_PARAMETER * extra


def train_activation_bytes(config: RunConfig) -> float:
    """Estimated activation memory (bytes) of one training step of ``batch-size`` images at ``image-size``."""
    factor = 2.0 if config.precision == "fp32" else 1.0
    return factor * config.batch_size * TRAIN_BYTES_PER_SAMPLE_224 * _activation_scale(config)


def fisher_bytes_per_sample(config: RunConfig) -> float:
    """Estimated memory (bytes) per sample of a Fisher-scoring chunk (per-sample hooks, fp32) at ``image-size``."""
    return FISHER_BYTES_PER_SAMPLE_224 * _activation_scale(config)


def actor_peak_bytes(config: RunConfig) -> float:
    """Estimated peak GPU memory (bytes) of one client actor: fixed costs + the larger of a training step and,
    for editing runs, a Fisher chunk (``min(fisher-samples, 128)`` samples)."""
    fisher = fisher_bytes_per_sample(config) * min(config.fisher_samples, HOOKS_DEFAULT_CHUNK) if config.editing else 0
    return fixed_bytes(config) + max(train_activation_bytes(config), fisher)


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


def memory_table(image_sizes: tuple[int, ...] = (224,), models: tuple[str, ...] | None = None) -> str:
    """A markdown table of the estimates per backbone and image size (at the run config's defaults otherwise:
    batch 32 in bf16, 64 Fisher samples in fp32)."""
    models = models or tuple(m for m in BACKBONES if m != TINY_TEST_VIT)
    lines = [
        "| model | image size | training step | Fisher, 64 samples | actor peak, FedAvg | actor peak, TaLoS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model in models:
        patch = get_backbone(model).patch_size
        for size in image_sizes:
            size = max(patch, size // patch * patch)  # the nearest size the patch allows
            dense = RunConfig(model=model, image_size=size)
            edited = dense.replace(mask_rule="least-sensitive", head="ridge")
            lines.append(
                f"| {model} | {size} px | {train_activation_bytes(dense) / 1e9:.2f} GB "
                f"| {fisher_bytes_per_sample(edited) * edited.fisher_samples / 1e9:.2f} GB "
                f"| {actor_peak_bytes(dense) / GIB:.1f} GiB | {actor_peak_bytes(edited) / GIB:.1f} GiB |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(memory_table((32, 224)))
