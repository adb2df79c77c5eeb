"""SparseSGDM: SGD with momentum that only ever moves the entries a fixed boolean mask marks trainable.

Spec §1. Per parameter θ with gradient g and mask M (True = trainable):

1. ``g ← -g`` if maximize; ``g ← g + λθ`` if λ ≠ 0;
2. ``g ← where(M, g, 0)`` — frozen entries feed exactly 0 into the momentum buffer;
3. ``b ← g`` on the first step, else ``b ← μb + (1 − τ)g``; ``g ← g + μb`` (nesterov) or ``g ← b``;
4. ``g ← where(M, g, 0)`` again — guards against inf/NaN and against a mask that changed after a buffer existed;
5. ``θ ← θ − γg``.

``torch.where`` rather than ``g * M``: ``inf * 0`` is NaN and ``-x * 0`` is ``-0.0``, so a multiplied mask can
poison a frozen weight or flip the sign bit of its buffer. Steps 1, 3 and 5 are the foreach calls of
``torch.optim.SGD(foreach=True)``, which compute per element what its single-tensor path computes, so with an
all-True mask (or none) the trajectory is bit-identical to SGD's either way. Only the masking is per tensor, for
masked parameters alone: a dense step is SGD's handful of foreach calls, whatever the number of tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

MaskSpec = Sequence[Tensor | None] | Mapping[Tensor, Tensor | None] | None


class SparseSGDM(torch.optim.Optimizer):
    """SGD (with momentum, dampening, nesterov, weight decay, maximize) restricted to masked entries.

    Args:
        params: parameters or param-group dicts, as for ``torch.optim.SGD``.
        masks: ``None`` (dense everywhere); a list aligned with the parameters (group by group, in order) holding
            a bool tensor of the parameter's shape or ``None`` (dense); or a dict ``{parameter: bool tensor}``
            (parameters not in it are dense). True = trainable. Masks are copied to the parameter's device and
            kept in the optimizer state under ``"mask"``, so ``state_dict()`` / ``load_state_dict()`` carry them:
            after loading, the checkpoint's masks are authoritative (a parameter without one becomes dense).
        lr: learning rate γ (> 0).
        momentum: μ; dampening: τ; weight_decay: λ (L2, added to the gradient before masking, so frozen entries
            do not decay); nesterov, maximize: as in ``torch.optim.SGD``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        masks: MaskSpec = None,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if momentum < 0.0:
            raise ValueError(f"invalid momentum {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)
        all_params = [p for group in self.param_groups for p in group["params"]]
        if masks is None:
            pairs: list[tuple[Tensor, Tensor | None]] = [(p, None) for p in all_params]
        elif isinstance(masks, Mapping):
            known = {id(p) for p in all_params}
            if any(id(p) not in known for p in masks):
                raise ValueError("masks holds a tensor that is not one of the optimizer's parameters")
            by_id = {id(p): m for p, m in masks.items()}
            pairs = [(p, by_id.get(id(p))) for p in all_params]
        else:
            masks = list(masks)
            if len(masks) != len(all_params):
                raise ValueError(f"{len(masks)} masks for {len(all_params)} parameters")
            pairs = list(zip(all_params, masks, strict=True))
        for p, m in pairs:
            if m is not None:
                self.state[p]["mask"] = _checked_mask(p, m)
        # Masked parameters whose momentum buffer may hold something other than +0.0 at a frozen entry (see step 4).
        self._dirty_buffers: set[Tensor] = set()

    def mask_of(self, param: Tensor) -> Tensor | None:
        """The bool mask of ``param`` (True = trainable), or None if it is updated densely."""
        return self.state[param].get("mask") if param in self.state else None

    def set_mask(self, param: Tensor, mask: Tensor | None) -> None:
        """Replace ``param``'s mask (None = dense). Its momentum buffer is kept: entries frozen now stop moving at
        once (the mask is applied again after momentum), and their buffer only decays (μb + 0)."""
        if mask is None:
            self.state[param].pop("mask", None)
        else:
            self.state[param]["mask"] = _checked_mask(param, mask)
        self._note_buffer(param)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore state, masks included (the base class casts every state tensor to the parameter's float dtype)."""
        super().load_state_dict(state_dict)
        self._dirty_buffers = set()
        for param, state in self.state.items():
            if "mask" in state:
                state["mask"] = state["mask"].to(torch.bool)
            self._note_buffer(param)

    def _note_buffer(self, param: Tensor) -> None:
        """Record whether ``param``'s buffer is +0.0 at every frozen entry (one device sync; not done per step)."""
        state = self.state[param]
        mask, buf = state.get("mask"), state.get("momentum_buffer")
        frozen = None if mask is None or buf is None else torch.where(mask, 0.0, buf)
        if frozen is not None and bool(((frozen != 0) | frozen.signbit()).any()):  # NaN != 0 too
            self._dirty_buffers.add(param)
        else:
            self._dirty_buffers.discard(param)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("SparseSGDM does not support sparse gradients")
            # foreach ops take one device and dtype per call, as torch.optim.SGD groups them.
            by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for p in params:
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            for same_kind in by_kind.values():
                self._update(same_kind, group)
        return loss

    def _update(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """Steps 1-5 for ``params`` (one device and dtype), with ``torch.optim.SGD``'s foreach calls.

        Every ``_foreach_*`` call computes per element what the single-tensor op computes, so the values are those
        of the spec's per-tensor steps. Only the masking is per tensor (there is no foreach ``where``), and only for
        masked parameters: dense FedAvg runs the foreach calls of ``torch.optim.SGD(foreach=True)`` and nothing else.
        """
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        masks = [self.state[p].get("mask") for p in params]
        grads = [p.grad for p in params]
        if group["maximize"]:
            grads = list(torch._foreach_neg(grads))
        if group["weight_decay"] != 0:
            grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
        # One 0-dim zero on the device for all masked tensors: a Python 0.0 costs a scalar_tensor op per where().
        zero = (
            torch.zeros((), dtype=params[0].dtype, device=params[0].device)
            if any(m is not None for m in masks)
            else None
        )
        grads = [g if m is None else torch.where(m, g, zero) for g, m in zip(grads, masks, strict=True)]
        if momentum != 0:
            states = [self.state[p] for p in params]
            existing = [(s["momentum_buffer"], g) for s, g in zip(states, grads, strict=True) if "momentum_buffer" in s]
            if existing:
                bufs, their_grads = map(list, zip(*existing, strict=True))
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, their_grads, alpha=1 - dampening)
            for s, g in zip(states, grads, strict=True):
                if "momentum_buffer" not in s:
                    s["momentum_buffer"] = g.detach().clone()  # b ← g on the first step
            bufs = [s["momentum_buffer"] for s in states]
            # Out of place: `grads` may be the caller's p.grad (no maximize, no weight decay, no mask).
            grads = list(torch._foreach_add(grads, bufs, alpha=momentum)) if group["nesterov"] else bufs
            # Step 4, only where it can change a value: a frozen entry whose gradient went through step 2 and whose
            # buffer is +0.0 stays +0.0 through step 3, and where() would return that same +0.0. So only a buffer
            # that was there before its mask (set_mask, load_state_dict) can hold anything else there.
            grads = [
                torch.where(m, g, zero) if m is not None and p in self._dirty_buffers else g
                for p, g, m in zip(params, grads, masks, strict=True)
            ]
        # Frozen entries add -γ·(+0.0) = -0.0, which leaves every float (±0, NaN included) bit-identical.
        torch._foreach_add_(params, grads, alpha=-lr)


def _checked_mask(param: Tensor, mask: Tensor) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"masks must be bool tensors (True = trainable), got {getattr(mask, 'dtype', type(mask))}")
    if mask.shape != param.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} for a parameter of shape {tuple(param.shape)}")
    return mask.detach().to(param.device).clone()
