"""Model editing in pure PyTorch (no Flower): sparse SGD, Fisher sensitivity scores, masks, the ridge head.

Conventions: mask True = trainable; sparsity = the fraction of scored weights frozen. ``docs/editing.md`` describes
the algorithm these modules implement, its conventions, and the tests that show each of its guarantees.
"""

from fedtalos.editing.fisher import fisher_scores, per_sample_loop_scores
from fedtalos.editing.head import (
    RidgeStats,
    backbone_features,
    feature_statistics,
    fit_logit_scale,
    ridge_statistics,
    set_head,
    solve_ridge,
)
from fedtalos.editing.masks import (
    RULES,
    SENSITIVITY_RULES,
    calibrate_mask,
    calibration_step,
    floor_count,
    gather_trainable,
    keep_counts,
    keep_fraction,
    load_mask,
    magnitude_mask,
    mask_stats,
    pack_mask,
    random_mask,
    save_mask,
    scatter_trainable,
    unpack_mask,
    update_mask,
)
from fedtalos.editing.optim import SparseSGDM

__all__ = [
    "RULES",
    "SENSITIVITY_RULES",
    "RidgeStats",
    "SparseSGDM",
    "backbone_features",
    "calibrate_mask",
    "calibration_step",
    "feature_statistics",
    "fisher_scores",
    "fit_logit_scale",
    "floor_count",
    "gather_trainable",
    "keep_counts",
    "keep_fraction",
    "load_mask",
    "magnitude_mask",
    "mask_stats",
    "pack_mask",
    "per_sample_loop_scores",
    "random_mask",
    "ridge_statistics",
    "save_mask",
    "scatter_trainable",
    "set_head",
    "solve_ridge",
    "unpack_mask",
    "update_mask",
]
