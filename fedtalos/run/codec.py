"""A run's state ↔ its checkpoint tensors, for both kinds of run and for whoever reads a checkpoint.

Tensors go into the checkpoint's safetensors file under one prefix per part: ``weights/<name>`` (the model),
``strategy/<name>`` (a federated server strategy's state), ``optimizer/<index>/<key>`` (a centralized optimizer's
per-parameter tensors; its other values travel in the JSON, see :func:`optimizer_meta`), ``mask/<name>`` (bool,
True = trainable) and ``rng/<device>`` (torch's RNG states). The JSON part names the weights' and the mask's keys
in their order (``weight_keys``, ``mask_keys``); the rest of it belongs to the state (``federation/state.py``,
``central/state.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedtalos.tracking.checkpoint import Checkpoint

WEIGHTS, STRATEGY, OPTIMIZER, MASK, RNG = "weights/", "strategy/", "optimizer/", "mask/", "rng/"
Tensors = dict[str, torch.Tensor]


def state_tensors(
    weights: Mapping[str, torch.Tensor],
    *,
    strategy: Mapping[str, torch.Tensor] | None = None,
    optimizer: Mapping[str, Any] | None = None,
    mask: Mapping[str, torch.Tensor] | None = None,
    rng: Mapping[str, torch.Tensor] | None = None,
) -> Tensors:
    """Every tensor of a state under its part's prefix; ``optimizer`` is an ``optimizer.state_dict()``."""
    out = {WEIGHTS + k: v for k, v in weights.items()}
    out.update({STRATEGY + k: v for k, v in (strategy or {}).items()})
    if optimizer is not None:
        for index, entry in optimizer["state"].items():
            out.update({f"{OPTIMIZER}{index}/{k}": v for k, v in entry.items() if isinstance(v, torch.Tensor)})
    if mask is not None:
        out.update({MASK + k: v for k, v in mask.items()})
    out.update({RNG + k: v for k, v in (rng or {}).items()})
    return out


def section(tensors: Mapping[str, torch.Tensor], prefix: str, keys: list[str] | None = None) -> Tensors:
    """The tensors under ``prefix``, the prefix dropped; in the order of ``keys`` when given (all must be there)."""
    found = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {k: found[k] for k in keys} if keys is not None else found


def checkpoint_weights(checkpoint: Checkpoint) -> Tensors:
    """The model weights a checkpoint holds, in the order they were saved."""
    return section(checkpoint.tensors, WEIGHTS, checkpoint.meta.get("weight_keys"))


def checkpoint_mask(checkpoint: Checkpoint) -> Tensors | None:
    """The mask a checkpoint holds (name → bool tensor), or None before a run has one.

    A federated checkpoint says so with ``has_mask`` (its ``mask_keys`` are then ``[]``), a centralized one with
    ``mask_keys = None``.
    """
    meta = checkpoint.meta
    has_mask = meta["has_mask"] if "has_mask" in meta else meta.get("mask_keys") is not None
    return section(checkpoint.tensors, MASK, meta["mask_keys"]) if has_mask else None


def optimizer_meta(optimizer: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON part of an ``optimizer.state_dict()``: its param groups and the per-parameter values that are not
    tensors (e.g. a step count); :func:`state_tensors` holds the tensors."""
    if optimizer is None:
        return None
    scalars = {
        str(index): {k: v for k, v in entry.items() if not isinstance(v, torch.Tensor)}
        for index, entry in optimizer["state"].items()
    }
    return {"param_groups": optimizer["param_groups"], "scalars": scalars}


def checkpoint_optimizer(checkpoint: Checkpoint, meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``optimizer.state_dict()`` that :func:`state_tensors` and :func:`optimizer_meta` (``meta``) saved."""
    if meta is None:
        return None
    state: dict[int, dict[str, Any]] = {}
    for key, value in section(checkpoint.tensors, OPTIMIZER).items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}
