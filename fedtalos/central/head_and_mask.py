"""The model-editing steps of a centralized run: the step-0 ridge head and the mask calibration (docs/editing.md).

Both only read the data: the ridge statistics use the un-augmented train split (features of the frozen
backbone), the temperature is fitted on the validation split, and the calibration scores ``fisher-samples`` ×
the calibration cohort size un-augmented train images from a seeded generator (the same ones every round unless
``calibration-redraw``). The linear-probe head is a training phase and runs
in :mod:`fedtalos.central.trainer`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedtalos.config import RunConfig
from fedtalos.editing.calibration import calibrate_mask
from fedtalos.editing.fisher import fitting_chunk_size
from fedtalos.editing.head import fit_head, ridge_statistics, set_head, validation_features
from fedtalos.editing.masks import Mask
from fedtalos.seeds import central_calibration_generator, central_calibration_seed
from fedtalos.task.device import empty_cache
from fedtalos.task.memory import fisher_bytes_per_sample
from fedtalos.task.resources import Batch, Resources


def fit_ridge_head(resources: Resources, config: RunConfig) -> float:
    """Set the model's head to the ridge solution on the train split, scaled by the temperature fitted on the
    validation split; returns that scale α (logits = α·(Wφ + b))."""
    model = resources.model
    images, labels = resources.split("train")
    num_classes = model.head.out_features
    stats = ridge_statistics(model, resources.eval_batches(images, labels), num_classes)
    val_images, val_labels = resources.split("val")
    features = validation_features(model, (x for x, _ in resources.eval_batches(val_images, val_labels)))
    head = fit_head(stats, config.ridge_lambda, features, val_labels)
    set_head(model, head.weight, head.bias, head.scale)
    empty_cache(resources.device)
    return head.scale


def calibration_sample_count(config: RunConfig, train_size: int) -> int:
    """Train images a centralized calibration scores: ``fisher-samples`` × the calibration cohort size (the total a
    federated run of the same config scores when every client holds that many), at most the train split."""
    return min(config.fisher_samples * config.calibration_cohort_size, train_size)


def calibration_batches(resources: Resources, config: RunConfig) -> Callable[[int], list[Batch]]:
    """Round r (0-based) → :func:`calibration_sample_count` un-augmented train images (labels are not used), seeded:
    the same images in every round, or a fresh draw per round with ``calibration-redraw``."""
    images, labels = resources.split("train")
    count = calibration_sample_count(config, len(labels))

    def draw(round_index: int | None) -> list[Batch]:
        generator = central_calibration_generator(config.seed, round_index)
        idx = torch.randperm(len(labels), generator=generator)[:count].to(images.device)
        return list(resources.eval_batches(images[idx], labels[idx]))

    if config.calibration_redraw:
        return draw
    fixed = draw(None)
    return lambda round_index: fixed


def calibrate(resources: Resources, config: RunConfig) -> Mask:
    """The mask of ``config.mask-rule`` for the current model (head fitted), as CPU bool tensors (True = trainable).

    Scored parameters: the whole backbone (everything but ``head.*``); the sensitivity rules run
    ``calibration-rounds`` rounds with soft zeroing, the magnitude and random rules run once.
    """
    mask = calibrate_mask(
        resources.model,
        calibration_batches(resources, config),
        sparsity=config.sparsity,
        rounds=config.calibration_rounds,
        rule=config.mask_rule,  # type: ignore[arg-type]
        seed=central_calibration_seed(config.seed),
        scope=config.mask_scope,  # type: ignore[arg-type]
        target=config.fisher_target,  # type: ignore[arg-type]
        chunk_size=fitting_chunk_size(resources.device, fisher_bytes_per_sample(config), stable=config.deterministic),
    )
    empty_cache(resources.device)  # the per-sample hooks' blocks: fine-tuning needs them back
    return {n: m.to("cpu") for n, m in mask.items()}
