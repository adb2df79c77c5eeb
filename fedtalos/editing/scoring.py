"""A client's calibration scores: which of its samples it scores in a round, with which labels, and the scores.

One function for the ClientApp's ``query.fisher`` and for the mask-agreement analysis, which re-runs single
clients' calibrations: both must score exactly the same samples with exactly the same label draws.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fedtalos.config import RunConfig
from fedtalos.editing.fisher import fisher_scores, fitting_chunk_size, scoring_method
from fedtalos.seeds import calibration_sample_generator, client_label_seed
from fedtalos.task.backbones import get_backbone
from fedtalos.task.memory import fisher_bytes_per_sample
from fedtalos.task.model import backbone_parameters, input_normalisation
from fedtalos.task.resources import Resources


def calibration_samples(config: RunConfig, shard_size: int, round_index: int, pid: int) -> Tensor:
    """Indices into client ``pid``'s shard of the min(``fisher-samples``, shard size) samples it scores in
    calibration round ``round_index`` (1-based); int64, CPU. The same indices in every round unless
    ``calibration-redraw`` (then a fresh draw per round)."""
    draw = round_index if config.calibration_redraw else None
    generator = calibration_sample_generator(config.seed, draw, pid)
    return torch.randperm(shard_size, generator=generator)[: config.fisher_samples]


def client_scores(
    config: RunConfig,
    resources: Resources,
    pid: int,
    round_index: int,
    soft_mask: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], int]:
    """Client ``pid``'s Fisher score sums in calibration round ``round_index`` with the current mask soft-zeroed.

    The model in ``resources`` must hold the global weights. Returns (name → score sums of the scored backbone
    tensors, float32 on the model's device; the number of samples scored).
    """
    images, labels = resources.client_data(pid)
    take = calibration_samples(config, len(labels), round_index, pid).to(images.device)
    label_seed = client_label_seed(config.seed, round_index, pid)
    return sample_scores(config, resources, images[take], label_seed, soft_mask), len(take)


def sample_scores(
    config: RunConfig,
    resources: Resources,
    images: Tensor,
    label_seed: int,
    soft_mask: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Fisher score sums over ``images`` (N, 3, H, W, un-augmented) with labels drawn from a generator on the
    model's device seeded with ``label_seed``, the mask soft-zeroed: name → float32 sums on the model's device."""
    generator = torch.Generator(device=resources.device).manual_seed(label_seed)
    mask = {k: m.to(resources.device) for k, m in soft_mask.items()} if soft_mask is not None else None
    dummy = torch.zeros(len(images), dtype=torch.long, device=images.device)
    batches = [x for x, _ in resources.eval_batches(images, dummy)]
    chunk = fitting_chunk_size(resources.device, fisher_bytes_per_sample(config), stable=config.deterministic)
    return fisher_scores(
        resources.model, batches, target=config.fisher_target, soft_mask=mask, generator=generator, chunk_size=chunk
    )


def model_record(config: RunConfig, model: nn.Module) -> dict[str, Any]:
    """What a run directory's ``config.json`` records about the backbone (key ``model``): its name and label, patch
    size (px), input normalisation (mean/std per RGB channel in [0, 1] units), the number of backbone (= scored)
    tensors and entries, and the per-sample gradient method Fisher scoring uses on it (``hooks``, or the ``vmap``
    fallback with the reasons hooks cannot score some tensors)."""
    backbone = get_backbone(config.model)
    mean, std = input_normalisation(config.model)
    params = list(backbone_parameters(model))
    method, unsupported = scoring_method(model, [n for n, _ in params])
    reasons = sorted(set(unsupported.values()))
    return {
        "name": backbone.name,
        "label": backbone.label,
        "architecture": type(model).__name__,
        "patch_size": backbone.patch_size,
        "image_size": config.image_size,
        "mean": list(mean),
        "std": list(std),
        "backbone_tensors": len(params),
        "backbone_entries": sum(p.numel() for _, p in params),
        "fisher_method": method,
        "fisher_method_reason": "every backbone tensor is supported by the per-layer rules"
        if method == "hooks"
        else f"{len(unsupported)} tensors unsupported by the per-layer rules: " + "; ".join(reasons[:3]),
    }


def describe_model(record: Mapping[str, Any]) -> str:
    """One log line from :func:`model_record`."""
    return (
        f"model {record['name']} ({record['label']}, {record['architecture']}): patch {record['patch_size']} px at "
        f"{record['image_size']} px, mean {tuple(record['mean'])}, std {tuple(record['std'])}; "
        f"{record['backbone_tensors']} backbone tensors ({record['backbone_entries']:,} entries), Fisher scores per "
        f"sample by {record['fisher_method']} ({record['fisher_method_reason']})"
    )
