"""A client's calibration scores: which of its samples it scores in a round, with which labels, and the scores.

One function for the ClientApp's ``query.fisher`` and for the mask-agreement analysis, which re-runs single
clients' calibrations: both must score exactly the same samples with exactly the same label draws.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedtalos.config import RunConfig
from fedtalos.editing.fisher import fisher_scores, fitting_chunk_size
from fedtalos.seeds import calibration_sample_generator, client_label_seed
from fedtalos.task.memory import fisher_bytes_per_sample
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
