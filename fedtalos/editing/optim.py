"""SparseSGDM: SGD with momentum that only ever moves the entries a fixed boolean mask marks trainable.

Spec §1. Per parameter θ with gradient g and mask M (True = trainable):

1. ``g ← -g`` if maximize; ``g ← g + λθ`` if λ ≠ 0;
2. ``g ← where(M, g, 0)`` — frozen entries feed exactly 0 into the momentum buffer;
3. ``b ← g`` on the first step, else ``b ← μb + (1 − τ)g``; ``g ← g + μb`` (nesterov) or ``g ← b``;
4. ``g ← where(M, g, 0)`` again — guards against inf/NaN and against a mask that changed after a buffer existed;
5. ``θ ← θ − γg``.

``torch.where`` rather than ``g * M``: ``inf * 0`` is NaN and ``-x * 0`` is ``-0.0``, so a multiplied mask can
poison a frozen weight or flip the sign bit of its buffer. Steps 1, 3 and 5 are the exact tensor operations of
``torch.optim.SGD`` (its single-tensor path), so with an all-True mask the trajectory is bit-identical to it.
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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore state, masks included (the base class casts every state tensor to the parameter's float dtype)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "mask" in state:
                state["mask"] = state["mask"].to(torch.bool)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov, maximize = group["weight_decay"], group["nesterov"], group["maximize"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SparseSGDM does not support sparse gradients")
                state = self.state[p]
                mask = state.get("mask")
                grad = p.grad if not maximize else -p.grad
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                if mask is not None:
                    grad = torch.where(mask, grad, 0.0)
                if momentum != 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = grad.detach().clone()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                    grad = grad.add(buf, alpha=momentum) if nesterov else buf
                if mask is not None:
                    # A new tensor: `grad` may alias the momentum buffer, which must keep its own values.
                    grad = torch.where(mask, grad, 0.0)
                # Frozen entries add -γ·(+0.0) = -0.0, which leaves every float (±0, NaN included) bit-identical.
                p.add_(grad, alpha=-lr)
        return loss


def _checked_mask(param: Tensor, mask: Tensor) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"masks must be bool tensors (True = trainable), got {getattr(mask, 'dtype', type(mask))}")
    if mask.shape != param.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} for a parameter of shape {tuple(param.shape)}")
    return mask.detach().to(param.device).clone()
