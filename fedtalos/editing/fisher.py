"""Sensitivity scores: the diagonal of the empirical-label-free Fisher, from per-sample gradients.

See docs/editing.md, "The sensitivity score".

For every calibration input x (its label, if given, is ignored) and each of ``repeats`` draws:

- y ~ Categorical(softmax(f(x))), the label sampled from the model's own prediction;
- s = f_y(x), the raw logit of that class (``target="logit"``, what the TaLoS code does), or
  s = log softmax(f(x))_y (``target="log-prob"``, the textbook Fisher);
- score(θ) += (∂s/∂θ)², the square of the *per-sample* gradient, summed over samples.

Scores are float32 sums (not means), so client sums add up to the score of the union of their samples.

Scored parameters: by default every backbone parameter, i.e. every named parameter not starting with
``head.`` (attention and MLP weights and biases, LayerNorms, the patch embedding, the cls token and the position
embedding), as the spec says. The head is excluded: it is fitted in step 0 and frozen, so spending trainable
entries on it would be wasted. (The TaLoS code scores only the parameters of its masked Linear, Conv2d,
MultiheadAttention and LayerNorm modules; cls token and position embedding are scored here too.)

Methods (``method=``), equal up to float rounding and drawing the same labels from the same generator:

- ``"hooks"`` (:mod:`fedtalos.editing.persample`): one batched forward + backward pass of Σ_i s_i per chunk; hooks
  capture each layer's input and output gradient, form that layer's per-sample parameter gradients (the samples of
  an eval-mode ViT do not interact, so the output gradient of sample i is ∂s_i/∂out_i) and square and sum them at
  once. Supports Linear, LayerNorm, the patch-embedding Conv2d, timm LayerScale and the ViT's cls/register tokens
  and position embedding; the fastest on CPU (bench/fisher_scoring.py).
- ``"vmap"``: ``torch.func.vmap(grad(...))`` over the samples of a chunk: any model and parameter, but per-sample
  gradients of all scored parameters at once (memory chunk × scored entries).
- ``"auto"`` (default): hooks when every scored parameter is supported, else vmap.
- :func:`per_sample_loop_scores`: one backward pass per sample, the reference for tests and benchmarks.

Soft zeroing: with a ``soft_mask`` (True = trainable) the forward pass uses the effective weights
θ_eff = θ · c with c = 1 where trainable and c = ``soft_value`` where frozen, and the gradient is taken with respect
to the *original* θ, so a frozen entry's gradient is soft_value · ∂s/∂θ_eff. This is what the TaLoS code does: its
masked layers compute ``weight * weight_mask`` (mask 0.1 for frozen entries, a buffer without gradient) and it
squares ``p.grad`` of the original parameter. (The hooks method gets gradients with respect to θ_eff from its
layers and multiplies their squares by c².) Trainable entries get the same gradient either way; only the scores of
frozen entries differ, and those are never compared against again (``masks.update_mask`` looks at alive entries
only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from fedtalos.editing._common import eval_mode
from fedtalos.editing.persample import SquaredGradients, unsupported_parameters
from fedtalos.task.model import HEAD_PREFIX

Target = Literal["logit", "log-prob"]
Method = Literal["auto", "vmap", "hooks"]
DEFAULT_CHUNK_SIZES: dict[str, int] = {"vmap": 32, "hooks": 128}
"""Samples per vectorized step. Measured peak memory of ViT-S/16 at 224 px (CPU): vmap ≈ 290 MB per sample of a
chunk (≈ 9 GB at 32), hooks ≈ 70 MB (≈ 9 GB at 128); at 32 px both are far smaller. On CPU at 32 px, hooks run at
the same speed for chunks of 16 to 128 on ViT-S and faster with fewer, larger chunks on the tiny ViT (fixed costs
per pass). vmap (now the fallback) stays at 32: 64 is faster on the tiny ViT but doubles its memory at 224 px.
See bench/fisher_scoring.py."""
Batch = Tensor | tuple[Tensor, ...] | list[Tensor]
MEMORY_HEADROOM = 0.8  # the share of the free device memory a chunk may fill (the allocator fragments)
STABLE_SHARE = 0.5  # with deterministic = true: the share of the card's total memory (the same at every resume)


def fitting_chunk_size(
    device: torch.device, bytes_per_sample: float, method: str = "hooks", *, stable: bool = False
) -> int | None:
    """The chunk size for ``device``'s memory: None (the method's default) when the default fits, else the
    largest power of two of samples of ``bytes_per_sample`` that fits in the budget (at least 1).

    Budget: 80 % of the free memory, or with ``stable`` (``deterministic = true``) half the card's total memory,
    which does not change between a run and its resume: the chunk groups the float sums of the scores. Only CUDA
    reports its memory; other devices keep the default. Powers of two: the chunk changes only in coarse steps.
    """
    if device.type != "cuda" or bytes_per_sample <= 0:
        return None
    free, total = torch.cuda.mem_get_info(device)
    budget = STABLE_SHARE * total if stable else MEMORY_HEADROOM * free
    fit = int(budget // bytes_per_sample)
    if fit >= DEFAULT_CHUNK_SIZES[method]:
        return None
    return 1 << max(0, fit.bit_length() - 1) if fit >= 1 else 1


def fisher_scores(
    model: nn.Module,
    batches: Iterable[Batch],
    params: Iterable[str] | None = None,
    target: Target = "logit",
    repeats: int = 1,
    soft_mask: Mapping[str, Tensor] | None = None,
    soft_value: float = 0.1,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    method: Method = "auto",
) -> dict[str, Tensor]:
    """Sum over samples of squared per-sample gradients ∂s/∂θ (see the module docstring).

    Args:
        model: a classifier returning logits (B, C); run in eval mode, its modes are restored afterwards. Its
            parameters are not modified and get no ``.grad``.
        batches: yields inputs (B, ...) or (inputs, labels) pairs; labels are ignored. Moved to the model's device.
        params: names of the parameters to score; None = every parameter not starting with ``head.``.
        target: ``"logit"`` (raw logit of the sampled class) or ``"log-prob"`` (its log-softmax).
        repeats: label draws per input (R in the spec); each adds its own squared gradients.
        soft_mask: name → bool tensor of the parameter's shape (True = trainable); frozen entries are scaled by
            ``soft_value`` in the forward pass. Names may include unscored parameters (then scaled constants).
        soft_value: the scale of frozen entries (0.1 in TaLoS; 1.0 = no soft zeroing).
        generator: draws the labels (``torch.multinomial``), on the model's device; None = the global RNG.
            Draw order: batch by batch, for each batch ``repeats`` draws of one label per sample.
        chunk_size: samples per vectorized step; None = the method's default (:data:`DEFAULT_CHUNK_SIZES`).
            ``vmap``: memory grows as chunk_size × the number of scored entries; ``hooks``: as chunk_size × the
            activations of one sample (one forward + backward pass per chunk; chunks may span batches).
        method: ``"vmap"``: ``torch.func`` per-sample gradients of all scored parameters at once; ``"hooks"``:
            per-layer per-sample gradients from one batched backward pass (:mod:`fedtalos.editing.persample`),
            which needs every scored parameter to be supported (else
            :class:`~fedtalos.editing.persample.UnsupportedParameterError`) and a model that does not mix samples;
            ``"auto"``: hooks if every scored parameter is supported, else vmap. Same scores up to float rounding.

    Returns:
        name → float32 tensor of the parameter's shape on the parameter's device.
    """
    if method not in ("auto", "vmap", "hooks"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'hooks', got {method!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with eval_mode(model):
        scorer = _Scorer(model, params, target, soft_mask, soft_value)
        if method == "auto":
            method = scoring_method(model, list(scorer.scored))[0]
        chunk_size = chunk_size or DEFAULT_CHUNK_SIZES[method]
        if method == "hooks":
            return _hooks_scores(scorer, batches, repeats, generator, chunk_size)
        per_sample_grads = vmap(grad(scorer.sample_score), in_dims=(None, 0, 0))
        scores = scorer.zeros()
        for x, labels in scorer.labelled_inputs(batches, repeats, generator):
            for xc, yc in zip(x.split(chunk_size), labels.split(chunk_size), strict=True):
                # MATH attention: it is built from ops vmap can batch; fused CPU/GPU kernels fall back to a loop.
                with sdpa_kernel(SDPBackend.MATH):
                    grads = per_sample_grads(scorer.scored, xc, yc)
                for name, g in grads.items():
                    # Not square_(): gradients can share storage (cls_token's is a view into pos_embed's).
                    scores[name] += g.float().square().sum(0)
    return scores


def scoring_method(
    model: nn.Module, params: Iterable[str] | None = None
) -> tuple[Literal["hooks", "vmap"], dict[str, str]]:
    """The method that ``method="auto"`` uses for ``params`` of ``model`` (None = every parameter not starting with
    ``head.``), and, when it is vmap, why not hooks: name → reason for each parameter hooks cannot score."""
    named = [n for n, _ in model.named_parameters()]
    names = [n for n in named if not n.startswith(HEAD_PREFIX)] if params is None else list(params)
    unsupported = unsupported_parameters(model, names)
    return ("vmap" if unsupported else "hooks"), unsupported


def per_sample_loop_scores(
    model: nn.Module,
    batches: Iterable[Batch],
    params: Iterable[str] | None = None,
    target: Target = "logit",
    repeats: int = 1,
    soft_mask: Mapping[str, Tensor] | None = None,
    soft_value: float = 0.1,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The same scores as :func:`fisher_scores`, one ``torch.autograd.grad`` call per sample.

    The reference for tests and the benchmark (slow: one backward pass per sample), not for production. Labels
    are drawn exactly as in :func:`fisher_scores`, so equal generators give equal labels.
    """
    with eval_mode(model):
        scorer = _Scorer(model, params, target, soft_mask, soft_value)
        leaves = {n: t.clone().requires_grad_(True) for n, t in scorer.scored.items()}
        scores = scorer.zeros()
        for x, labels in scorer.labelled_inputs(batches, repeats, generator):
            for xi, yi in zip(x, labels, strict=True):
                grads = torch.autograd.grad(scorer.sample_score(leaves, xi, yi), list(leaves.values()))
                for name, g in zip(leaves, grads, strict=True):
                    scores[name] += g.float().square()
    return scores


def _hooks_scores(
    scorer: _Scorer,
    batches: Iterable[Batch],
    repeats: int,
    generator: torch.Generator | None,
    chunk_size: int,
) -> dict[str, Tensor]:
    """:func:`fisher_scores` with ``method="hooks"``: per chunk one forward pass and, per repeat, one backward
    pass of Σ_i s_i. Labels are drawn batch by batch as in the other methods; chunks may span batches."""
    with SquaredGradients(scorer.model, list(scorer.scored)) as squares:
        for xc, yc in _rechunk(scorer.label_draws(batches, repeats, generator), chunk_size):
            with squares.capture(len(xc)):
                logits = scorer.fixed_logits(xc)
                squares.check_forward()
                for r, labels in enumerate(yc):  # one forward pass, a backward pass per repeat
                    squares.backward(scorer.sample_scores(logits, labels).sum(), retain_graph=r < len(yc) - 1)
    # Squares of gradients with respect to θ_eff = θ·c; with respect to θ each gradient has the factor c.
    for name, scale in scorer.scales.items():
        if name in squares.sums:
            squares.sums[name] *= scale.float().square()
    return squares.sums


def _rechunk(draws: Iterable[tuple[Tensor, Tensor]], size: int) -> Iterable[tuple[Tensor, Tensor]]:
    """(inputs (B, ...), labels (R, B)) regrouped into chunks of ``size`` samples (the last one smaller)."""
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    pending = 0
    for x, y in draws:
        if xs and x.shape[1:] != xs[0].shape[1:]:  # inputs of another shape: no chunk mixes shapes
            if pending:
                yield torch.cat(xs), torch.cat(ys, dim=1)
            xs, ys, pending = [], [], 0
        xs.append(x)
        ys.append(y)
        pending += len(x)
        if pending >= size:
            x_all, y_all = torch.cat(xs), torch.cat(ys, dim=1)
            full = pending - pending % size
            yield from zip(x_all[:full].split(size), y_all[:, :full].split(size, dim=1), strict=True)
            xs, ys, pending = [x_all[full:]], [y_all[:, full:]], pending - full
    if pending:
        yield torch.cat(xs), torch.cat(ys, dim=1)


class _Scorer:
    """The model as a pure function of its scored parameters, with soft zeroing and label sampling."""

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[str] | None,
        target: Target,
        soft_mask: Mapping[str, Tensor] | None,
        soft_value: float,
    ) -> None:
        if target not in ("logit", "log-prob"):
            raise ValueError(f"target must be 'logit' or 'log-prob', got {target!r}")
        named = dict(model.named_parameters())
        names = [n for n in named if not n.startswith(HEAD_PREFIX)] if params is None else list(params)
        unknown = sorted(set(names) - set(named))
        if unknown:
            raise KeyError(f"not parameters of the model: {unknown[:5]}")
        if not names:
            raise ValueError("no parameters to score")
        self.model = model
        self.target = target
        self.device = named[names[0]].device
        self.scales = _soft_scales(named, soft_mask or {}, soft_value)
        self.scored = {n: named[n].detach() for n in names}
        # Everything the forward needs that is not differentiated: unscored parameters (soft-scaled) and buffers.
        self.constants = {n: t.detach() for n, t in model.named_buffers()}
        self.constants.update({n: self.effective(n, p.detach()) for n, p in named.items() if n not in self.scored})
        self._fixed: dict[str, Tensor] | None = None

    def effective(self, name: str, value: Tensor) -> Tensor:
        scale = self.scales.get(name)
        return value if scale is None else value * scale

    def zeros(self) -> dict[str, Tensor]:
        return {n: torch.zeros_like(t, dtype=torch.float32) for n, t in self.scored.items()}

    def logits(self, scored: Mapping[str, Tensor], x: Tensor) -> Tensor:
        tensors = dict(self.constants)
        tensors.update({n: self.effective(n, t) for n, t in scored.items()})
        return functional_call(self.model, tensors, (x,))

    def fixed_logits(self, x: Tensor) -> Tensor:
        """:meth:`logits` at the scored parameters' own values, the effective weights computed once per scorer."""
        if self._fixed is None:
            self._fixed = {**self.constants, **{n: self.effective(n, t) for n, t in self.scored.items()}}
        return functional_call(self.model, self._fixed, (x,))

    def sample_score(self, scored: Mapping[str, Tensor], x: Tensor, label: Tensor) -> Tensor:
        """s for one sample: x (C, H, W) without batch dimension, label a 0-d int64 tensor."""
        logits = self.logits(scored, x.unsqueeze(0))[0]
        if self.target == "log-prob":
            logits = torch.log_softmax(logits, dim=-1)
        # gather, not logits[label]: indexing with a tensor value is data-dependent control flow under vmap.
        return logits.gather(0, label.reshape(1))[0]

    def sample_scores(self, logits: Tensor, labels: Tensor) -> Tensor:
        """s_i for a batch: logits (B, C), labels (B,) → (B,)."""
        if self.target == "log-prob":
            logits = torch.log_softmax(logits, dim=-1)
        return logits.gather(1, labels[:, None])[:, 0]

    @torch.no_grad()
    def labelled_inputs(
        self, batches: Iterable[Batch], repeats: int, generator: torch.Generator | None
    ) -> Iterable[tuple[Tensor, Tensor]]:
        """(inputs (B, ...), sampled labels (B,)) per batch and repeat, labels drawn from the model's softmax."""
        for x, draws in self.label_draws(batches, repeats, generator):
            for labels in draws:
                yield x, labels

    @torch.no_grad()
    def label_draws(
        self, batches: Iterable[Batch], repeats: int, generator: torch.Generator | None
    ) -> Iterable[tuple[Tensor, Tensor]]:
        """(inputs (B, ...), labels (repeats, B)) per batch: one softmax forward, then ``repeats`` draws of (B,)."""
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        for batch in batches:
            x = (batch if isinstance(batch, Tensor) else batch[0]).to(self.device)
            if len(x) == 0:
                continue
            probs = torch.softmax(self.fixed_logits(x).float(), dim=-1)
            yield x, torch.stack([torch.multinomial(probs, 1, generator=generator).squeeze(1) for _ in range(repeats)])


def _soft_scales(named: Mapping[str, Tensor], soft_mask: Mapping[str, Tensor], soft_value: float) -> dict[str, Tensor]:
    scales = {}
    for name, mask in soft_mask.items():
        if name not in named:
            raise KeyError(f"soft_mask names {name!r}, which is not a parameter of the model")
        p = named[name]
        if mask.dtype != torch.bool or mask.shape != p.shape:
            raise ValueError(f"soft_mask[{name!r}] must be a bool tensor of shape {tuple(p.shape)}")
        mask = mask.to(p.device)
        if not bool(mask.all()):  # all-trainable tensors need no scaling at all
            scales[name] = torch.where(mask, 1.0, soft_value).to(p.dtype)
    return scales
