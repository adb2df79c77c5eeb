"""Sums of squared per-sample gradients from one batched backward pass, layer by layer (BackPACK/Opacus style).

If the samples of a batch do not interact (true of a ViT in eval mode: LayerNorm normalizes each token,
attention mixes tokens of one sample only, dropout is off), then for s = Σ_i s_i the gradient of s with respect to
a layer's output, restricted to sample i, is ∂s_i/∂out_i. A layer's per-sample parameter gradient is then a small
function of its input and that output gradient, both for sample i only, e.g. for a Linear y = W x + b applied to
the tokens t of sample i:

    ∂s_i/∂W = Σ_t g_{i,t} x_{i,t}ᵀ,    ∂s_i/∂b = Σ_t g_{i,t}.

:class:`SquaredGradients` captures each supported module's input with a forward hook and its output gradient with
a tensor hook during the backward pass, forms the per-sample gradients of that module's scored parameters and at
once adds their squares, summed over the samples, to running sums: per-sample gradients of one layer at a time
exist, never of the whole model. The rules (per sample i; x = the module's input, g = its output gradient, both
flattened to (tokens, features)):

- ``nn.Linear`` (any leading dims, e.g. (B, T, in) tokens or (B, in)): dW_i = Σ_t g_{i,t} x_{i,t}ᵀ, db_i = Σ_t g_{i,t};
- ``nn.LayerNorm`` (also timm's LayerNorm and LayerNormFp32): dγ_i = Σ_t g_{i,t} ⊙ x̂_{i,t}, dβ_i = Σ_t g_{i,t}, with
  x̂ the normalized input recomputed from the captured one;
- ``nn.Conv2d`` with stride = kernel size, no padding, dilation 1 and one group (the ViT patch embedding): a Linear
  on the non-overlapping patches (unfolded by a reshape), so the Linear rule over patches;
- timm ``LayerScale`` (not in-place): dγ_i = Σ_t g_{i,t} ⊙ x_{i,t};
- the layer scales ``gamma_1`` / ``gamma_2`` of timm's ``EvaBlock`` (DINOv3), raw parameters in
  ``drop_path1(gamma_1 * attn(...))`` / ``drop_path2(gamma_2 * mlp(...))``: the same rule, with x = the output of
  ``attn`` / ``mlp`` and g = the output gradient of the drop path (the identity in eval mode);
- the raw parameters of a timm ``VisionTransformer`` or ``Eva`` (DINOv3: rotary embeddings, no ``pos_embed``):
  ``cls_token``, ``reg_token`` and ``pos_embed`` enter the token sequence in ``_pos_embed`` (concatenated, then
  added, or added, then concatenated with ``no_embed_class``), whose output goes through the module ``pos_drop``.
  So with g = the gradient of ``pos_drop``'s output (B, T, D):
  dpos_embed_i = g_i (or its patch tokens with ``no_embed_class``), dcls_i = g_{i,0}, dreg_i = g_{i,1:1+R}.

Σ_i dW_i² of a Linear (and of the patch embedding) is computed in one of two ways, whichever is cheaper:
few tokens (T ≤ :data:`PAIR_MAX_TOKENS`): Σ_i (Σ_t g_t x_tᵀ)² = Σ_i Σ_{t,t'} (g_t ⊙ g_t')(x_t ⊙ x_t')ᵀ, one matrix
product over the B·T(T+1)/2 token pairs (t ≤ t', off-diagonal pairs counted twice), with no (B, out, in) tensor
at all; otherwise per-sample products, squared and summed at once, in blocks of samples that stay in cache (one
sample at a time for the large layers of ViT-S).

What is not supported (see :func:`unsupported_parameters`) raises :class:`UnsupportedParameterError`:
parameters of other module types, parameters shared by several modules, a Linear inside ``nn.MultiheadAttention``
(it uses the weight without calling the module), timm ViTs with ``dynamic_img_size`` or (a VisionTransformer) without
a position embedding, an Eva with patch dropout, an EvaBlock whose drop path is neither the identity nor timm's
DropPath. Checked while running: each hooked module runs exactly once per forward pass, with the batch as the
first dimension of its input and output, and its input is not modified in place afterwards. What cannot be
checked: that the samples do not interact. A model that mixes samples (batch statistics, a module applied across
the batch dimension) would get wrong scores; use ``method="vmap"`` there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAIR_MAX_TOKENS = 4
"""Linear layers with at most this many tokens per sample use the token-pair product (see the module docstring);
on CPU it beats per-sample products for T <= 4 and loses from T = 5 on (ViT-S/16 layer shapes, 1 and 2 threads)."""

BLOCK_ELEMENTS = 1 << 17
"""Per-sample weight gradients formed at once, in entries (512 KiB of float32): about the size of an L2 cache."""

VIT_TOKEN_PARAMETERS = ("cls_token", "reg_token", "pos_embed")
EVA_GAMMAS = {"gamma_1": ("attn", "drop_path1"), "gamma_2": ("mlp", "drop_path2")}
"""EvaBlock's layer scale → (the branch whose output it scales, the drop path that output then goes through)."""


class UnsupportedParameterError(ValueError):
    """A scored parameter that the per-layer method cannot handle (use ``method="vmap"``)."""


@cache
def _layer_norm_types() -> tuple[type, ...]:
    types: list[type] = [nn.LayerNorm]
    try:
        from timm.layers import LayerNorm, LayerNormFp32

        types += [LayerNorm, LayerNormFp32]
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return tuple(types)


_TIMM_CLASSES = {
    "VisionTransformer": "timm.models.vision_transformer",
    "Eva": "timm.models.eva",
    "EvaBlock": "timm.models.eva",
    "LayerScale": "timm.layers",
    "DropPath": "timm.layers",
}


@cache
def _timm_class(name: str) -> type | None:
    import importlib

    try:
        return getattr(importlib.import_module(_TIMM_CLASSES[name]), name)
    except (ImportError, AttributeError):  # pragma: no cover - timm is a dependency; an older one may lack Eva
        return None


def _is_patchify_conv(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and tuple(m.stride) == tuple(m.kernel_size)
        and m.padding in ((0, 0), "valid")
        and tuple(m.dilation) == (1, 1)
        and m.groups == 1
    )


def _vit_reason(m: nn.Module, attr: str) -> str | None:
    classes = [_timm_class("VisionTransformer"), _timm_class("Eva")]
    owner = next(
        (c for c in classes if c is not None and isinstance(m, c) and type(m)._pos_embed is c._pos_embed), None
    )
    if owner is None:
        return f"{type(m).__name__}.{attr} (only the own _pos_embed of timm's VisionTransformer and Eva is supported)"
    if m.dynamic_img_size:
        return "dynamic_img_size=True (the position embedding is resampled per input)"
    is_eva = owner is classes[1]
    if m.pos_embed is None and not is_eva:
        return "a ViT without a position embedding (its tokens bypass pos_drop)"
    if is_eva and m.patch_drop is not None:
        return "an Eva with patch dropout (it drops tokens after pos_drop)"
    if not isinstance(m.pos_drop, nn.Dropout):
        return f"pos_drop is a {type(m.pos_drop).__name__}, not nn.Dropout"
    return None


def _eva_gamma_reason(m: nn.Module, attr: str) -> str | None:
    block, drop_path = _timm_class("EvaBlock"), _timm_class("DropPath")
    if block is None or type(m) is not block:
        return f"parameter {attr!r} of a {type(m).__name__}"
    drop = getattr(m, EVA_GAMMAS[attr][1])
    if type(drop) is not nn.Identity and (drop_path is None or type(drop) is not drop_path):
        return f"EvaBlock.{attr} followed by a {type(drop).__name__}, not the identity or timm's DropPath"
    return None


def _kind(modules: dict[str, nn.Module], module_name: str, attr: str) -> tuple[str | None, str]:
    """(kind, reason): the rule for parameter ``attr`` of the module ``module_name``, or None and why not."""
    m = modules[module_name]
    if module_name and isinstance(modules[module_name.rpartition(".")[0]], nn.MultiheadAttention):
        return None, "a module inside nn.MultiheadAttention (its weights are used without calling the module)"
    if type(m) is nn.Linear and attr in ("weight", "bias"):
        return "linear", ""
    if type(m) in _layer_norm_types() and attr in ("weight", "bias"):
        return "layer_norm", ""
    if _is_patchify_conv(m) and attr in ("weight", "bias"):
        return "patchify_conv", ""
    layer_scale = _timm_class("LayerScale")
    if layer_scale is not None and type(m) is layer_scale and attr == "gamma":
        return ("layer_scale", "") if not m.inplace else (None, "an in-place LayerScale")
    if attr in VIT_TOKEN_PARAMETERS:
        reason = _vit_reason(m, attr)
        return ("vit_tokens", "") if reason is None else (None, reason)
    if attr in EVA_GAMMAS:
        reason = _eva_gamma_reason(m, attr)
        return ("eva_gamma", "") if reason is None else (None, reason)
    if isinstance(m, nn.Conv2d):
        return None, "a Conv2d other than a patchify one (stride = kernel, no padding, dilation 1, groups 1)"
    return None, f"parameter {attr!r} of a {type(m).__name__}"


def _plan(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[str, str, str | None, str]]:
    """name → (module name, attribute, kind or None, why not)."""
    modules = dict(model.named_modules())
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    params = dict(model.named_parameters())
    plan = {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        if owners[id(params[name])] > 1:
            plan[name] = (module_name, attr, None, "a parameter shared by several modules")
        else:
            plan[name] = (module_name, attr, *_kind(modules, module_name, attr))
    return plan


def unsupported_parameters(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """name → why the per-layer method cannot score it, for each of ``names`` it cannot (empty: all supported)."""
    return {name: reason for name, (_, _, kind, reason) in _plan(model, names).items() if kind is None}


# ---------------------------------------------------------------------------------------------------------------
# Σ_i (per-sample gradient)², one rule per module kind. x: the module input, g: its output gradient, float32.


def sum_sq_outer(g: Tensor, x: Tensor) -> Tensor:
    """Σ_i (Σ_t g[i, t] x[i, t]ᵀ)² for g (B, T, out), x (B, T, in): (out, in)."""
    b, t, n_out = g.shape
    n_in = x.shape[2]
    if t <= PAIR_MAX_TOKENS:
        # Pairs (t, t + d) by offset d; the d > 0 pairs stand for (t + d, t) too, hence the factor 2.
        gg = torch.cat([g * g] + [2 * g[:, : t - d] * g[:, d:] for d in range(1, t)], dim=1).reshape(-1, n_out)
        xx = torch.cat([x[:, : t - d] * x[:, d:] for d in range(t)], dim=1).reshape(-1, n_in)
        # Cross-pair terms can be negative; rounding must not make a sum of squares negative.
        return (gg.T @ xx).clamp_min_(0)
    if n_out < n_in:  # per-sample products with few rows and long ones run slower (measured on CPU): transpose
        return sum_sq_outer(x, g).T
    total = g.new_zeros(n_out, n_in)
    gt = g.transpose(1, 2)
    step = BLOCK_ELEMENTS // (n_out * n_in)
    if step <= 1:
        per_sample = torch.empty_like(total)
        for i in range(b):
            torch.mm(gt[i], x[i], out=per_sample)
            total.addcmul_(per_sample, per_sample)
        return total
    for start in range(0, b, step):
        total += torch.bmm(gt[start : start + step], x[start : start + step]).square_().sum(0)
    return total


def _tokens(t: Tensor, features: int) -> Tensor:
    return t.reshape(t.shape[0], -1, features)


def _linear(m: nn.Linear, attrs: set[str], x: Tensor, g: Tensor) -> dict[str, Tensor]:
    x, g = _tokens(x, m.in_features), _tokens(g, m.out_features)
    out = {}
    if "weight" in attrs:
        out["weight"] = sum_sq_outer(g, x)
    if "bias" in attrs:
        out["bias"] = g.sum(1).square().sum(0)
    return out


def _patchify_conv(m: nn.Conv2d, attrs: set[str], x: Tensor, g: Tensor) -> dict[str, Tensor]:
    if x.dim() != 4:
        raise UnsupportedParameterError(f"patch embedding Conv2d needs a (B, C, H, W) input, got {tuple(x.shape)}")
    b, c, h, w = x.shape
    kh, kw = m.kernel_size
    gh, gw = h // kh, w // kw  # conv with stride = kernel drops a remainder
    patches = x[:, :, : gh * kh, : gw * kw].reshape(b, c, gh, kh, gw, kw)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * kh * kw)  # the order of weight.flatten(1)
    g = g.flatten(2).transpose(1, 2)  # (B, patches, out)
    out = {}
    if "weight" in attrs:
        out["weight"] = sum_sq_outer(g, patches).reshape(m.weight.shape)
    if "bias" in attrs:
        out["bias"] = g.sum(1).square().sum(0)
    return out


def _layer_norm(m: nn.LayerNorm, attrs: set[str], x: Tensor, g: Tensor) -> dict[str, Tensor]:
    shape = tuple(m.normalized_shape)
    b = x.shape[0]
    out = {}
    if "weight" in attrs:
        x_hat = F.layer_norm(x, shape, None, None, m.eps)
        out["weight"] = (g * x_hat).reshape(b, -1, *shape).sum(1).square().sum(0)
    if "bias" in attrs:
        out["bias"] = g.reshape(b, -1, *shape).sum(1).square().sum(0)
    return out


def _layer_scale(m: nn.Module, attrs: set[str], x: Tensor, g: Tensor) -> dict[str, Tensor]:
    d = m.gamma.shape[-1]
    return {"gamma": _tokens(g * x, d).sum(1).square().sum(0).reshape(m.gamma.shape)}


def _eva_gamma(m: nn.Module, attrs: set[str], x: Tensor, g: Tensor) -> dict[str, Tensor]:
    """x: the output of the block's attn / mlp; g: the gradient of gamma ⊙ x (the drop path's output)."""
    (attr,) = attrs  # one site per layer scale
    gamma = getattr(m, attr)
    return {attr: _tokens(g * x, gamma.shape[-1]).sum(1).square().sum(0).reshape(gamma.shape)}


def _vit_tokens(m: nn.Module, attrs: set[str], x: Tensor, g: Tensor) -> dict[str, Tensor]:
    """g: the gradient of the token sequence (B, T, D) after ``_pos_embed`` (pos_drop's output)."""
    out = {}
    n_cls = 1 if m.cls_token is not None else 0
    if "cls_token" in attrs:
        out["cls_token"] = g[:, :1].square().sum(0).reshape(m.cls_token.shape)
    if "reg_token" in attrs:
        out["reg_token"] = g[:, n_cls : n_cls + m.reg_token.shape[1]].square().sum(0).reshape(m.reg_token.shape)
    if "pos_embed" in attrs:
        pos = g[:, m.num_prefix_tokens :] if m.no_embed_class else g
        if pos.shape[1:] != m.pos_embed.shape[1:]:
            raise UnsupportedParameterError(f"pos_embed {tuple(m.pos_embed.shape)} vs tokens {tuple(pos.shape)}")
        out["pos_embed"] = pos.square().sum(0).reshape(m.pos_embed.shape)
    return out


Rule = Callable[[nn.Module, set[str], Tensor, Tensor], dict[str, Tensor]]
RULES: dict[str, Rule] = {
    "linear": _linear,
    "layer_norm": _layer_norm,
    "patchify_conv": _patchify_conv,
    "layer_scale": _layer_scale,
    "eva_gamma": _eva_gamma,
    "vit_tokens": _vit_tokens,
}


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Site:
    """One hooked module: its scored parameters (attribute → full name) and the state of the current forward."""

    name: str
    module: nn.Module  # the module whose rule runs
    hooked: nn.Module  # the module whose forward is hooked (pos_drop for the ViT token parameters)
    kind: str
    params: dict[str, str]
    calls: int = 0
    captured: list[tuple[Tensor, int]] = field(default_factory=list)  # the input and its version
    # eva_gamma: the branch (attn / mlp) whose output is the rule's x, captured by its own forward hook
    source: nn.Module | None = None
    source_output: Tensor | None = None


class SquaredGradients:
    """Hooks that add Σ_i (∂s_i/∂θ)² over the samples of each :meth:`capture`d forward and backward pass.

    Run the forward pass with constant tensors only (nothing requiring gradients: the scored parameters are not
    differentiated, their modules' output gradients are). A hooked module whose input does not require gradients
    (the patch embedding, or the first scored module of a partial selection) has its output replaced by a fresh
    leaf, a *root*: the graph starts at the roots, and :meth:`backward` differentiates with respect to them, so the
    backward pass computes exactly the output gradients that are needed, no parameter gradients and no gradient of
    the input image.

    The sums are of gradients with respect to the tensors the modules run with (the effective weights, if the
    caller scales them); the caller applies any chain-rule factor. Use as a context manager (registers and
    removes the hooks); hooks do nothing outside :meth:`capture`.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        plan = _plan(model, names)
        unsupported = {name: reason for name, (_, _, kind, reason) in plan.items() if kind is None}
        if unsupported:
            listed = "; ".join(f"{n}: {why}" for n, why in list(unsupported.items())[:5])
            raise UnsupportedParameterError(
                f"method='hooks' cannot score {len(unsupported)} parameter(s) ({listed}); use method='vmap'"
            )
        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        self.sums = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
        sites: dict[str, _Site] = {}
        for name, (module_name, attr, kind, _) in plan.items():
            module = modules[module_name]
            key, hooked, source = module_name, module, None
            if kind == "vit_tokens":
                hooked = module.pos_drop
            elif kind == "eva_gamma":  # one site per layer scale: each has its own branch and drop path
                branch, drop = EVA_GAMMAS[attr]
                key, hooked, source = name, getattr(module, drop), getattr(module, branch)
            site = sites.setdefault(key, _Site(key, module, hooked, kind, {}, source=source))  # type: ignore[arg-type]
            site.params[attr] = name
        self.sites = list(sites.values())
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._batch_size: int | None = None
        self._roots: list[Tensor] = []

    def __enter__(self) -> SquaredGradients:
        for site in self.sites:
            hook = self._forward_hook(site)
            self._handles.append(site.hooked.register_forward_hook(hook, with_kwargs=True))
            if site.source is not None:
                self._handles.append(site.source.register_forward_hook(self._source_hook(site)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextmanager
    def capture(self, batch_size: int) -> Iterator[None]:
        """Hooks active for one forward pass (batch first in every hooked input) and its backward passes."""
        self._batch_size = batch_size
        for site in self.sites:
            site.calls = 0
            site.captured.clear()
            site.source_output = None
        self._roots.clear()
        try:
            yield
        finally:
            self._batch_size = None
            self._roots.clear()
            for site in self.sites:
                site.captured.clear()
                site.source_output = None

    def check_forward(self) -> None:
        """Call between the forward and the backward pass: every hooked module ran once, its input is unchanged.

        (An output modified in place afterwards is fine: a tensor hook gets the gradient of the value it was
        registered on.)
        """
        for site in self.sites:
            if site.calls != 1:
                raise UnsupportedParameterError(
                    f"module {site.name or '(root)'} ran {site.calls} times in one forward pass; method='hooks' "
                    "needs each module with scored parameters to run exactly once (use method='vmap')"
                )
            for inp, version in site.captured:
                if inp._version != version:
                    raise UnsupportedParameterError(
                        f"the input of {site.name or '(root)'} was modified in place after the module ran; "
                        "use method='vmap'"
                    )

    def backward(self, total: Tensor, retain_graph: bool = False) -> None:
        """Backward pass of ``total`` (Σ_i s_i over the captured batch) to the roots; the hooks add the squares."""
        if total.requires_grad:  # else no scored module influences the score: its gradients are all zero
            torch.autograd.grad(total, self._roots, retain_graph=retain_graph, allow_unused=True)

    def _forward_hook(self, site: _Site) -> Callable[..., Tensor | None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> Tensor | None:
            if self._batch_size is None:
                return None
            site.calls += 1
            inp = args[0] if args else next(iter(kwargs.values()), None)
            if not isinstance(inp, Tensor) or not isinstance(output, Tensor):
                raise UnsupportedParameterError(f"{site.name}: expected a tensor input and output")
            if inp.dim() < 1 or inp.shape[0] != self._batch_size or output.shape[0] != self._batch_size:
                raise UnsupportedParameterError(
                    f"{site.name}: the batch ({self._batch_size}) must be the first dimension of the module's input "
                    f"and output, got {tuple(inp.shape)} -> {tuple(output.shape)}"
                )
            replaced = None
            if not output.requires_grad:
                if inp.requires_grad:
                    raise UnsupportedParameterError(f"{site.name}: its output does not depend on its input")
                root = output.detach().requires_grad_(True)
                self._roots.append(root)
                output = replaced = root.clone()  # not the leaf itself, which later in-place ops could not change
            if site.source is not None:  # eva_gamma: x is the branch's output, not the drop path's input
                inp, site.source_output = site.source_output, None
                if inp is None:
                    raise UnsupportedParameterError(f"{site.name}: its branch did not run before its drop path")
            x = inp.detach()
            site.captured.append((inp, inp._version))
            output.register_hook(lambda g: self._accumulate(site, x, g))
            return replaced

        return hook

    def _source_hook(self, site: _Site) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if self._batch_size is not None and isinstance(output, Tensor):
                site.source_output = output

        return hook

    @torch.no_grad()
    def _accumulate(self, site: _Site, x: Tensor, g: Tensor) -> None:
        squares = RULES[site.kind](site.module, set(site.params), x.float(), g.float())
        for attr, value in squares.items():
            self.sums[site.params[attr]] += value
