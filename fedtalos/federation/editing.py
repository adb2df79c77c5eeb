"""Server side of federated model editing: the frozen head (step 0) and mask calibration rounds.

Head, ``ridge``: every client sends ΦᵀΦ, ΦᵀY and n for its shard's backbone features (``query.ridge``); the
server sums them, solves (ΦᵀΦ + λI)W = ΦᵀY — exactly the ridge solution on the union of the clients' data, and
no raw data leaves a client — and scales the head's outputs by a temperature fitted on the server's validation
split: least-squares outputs approximate one-hot targets, so they lie near [0, 1] and their softmax is nearly
uniform, which would make the fine-tuning loss flat and the Fisher labels (sampled from that softmax) random.
Head, ``probe``: FedAvg rounds that train the head alone. The head is frozen afterwards.

Calibration: rounds of ``query.fisher`` to a ``calibration-fraction`` of clients, each scoring with the current
mask soft-zeroed; the server sums the score sums (= the centralized score over the union of their samples) and
keeps the least (most) sensitive ⌊(1−s)^((r+1)/R')·N⌋ entries among the alive ones. The magnitude and random
rules need no clients and run in one step.
"""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from flwr.app import RecordDict

from fedtalos.editing.head import RidgeStats, backbone_features, fit_logit_scale, solve_ridge
from fedtalos.editing.masks import (
    keep_counts,
    keep_fraction,
    magnitude_mask,
    mask_stats,
    random_mask,
    save_mask,
    update_mask,
)
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.cohort import sample_cohort
from fedtalos.federation.mask_sync import pack
from fedtalos.task.model import HEAD_PREFIX
from fedtalos.tracking.checkpoint import atomic_write_bytes

if TYPE_CHECKING:
    from fedtalos.federation.server import FederatedServer

SENSITIVITY_RULES = ("least-sensitive", "most-sensitive")


class EditingRounds:
    """The head and calibration rounds of a :class:`FederatedServer`."""

    def __init__(self, server: FederatedServer) -> None:
        self.server = server
        self.config = server.config

    @property
    def backbone(self) -> dict[str, torch.Tensor]:
        """The scored tensors of the global model (all but the head), in model order."""
        return {k: v for k, v in self.server.state.weights.items() if not k.startswith(HEAD_PREFIX)}

    # ------------------------------------------------------------------------------------------------ head
    def probe_round(self, index: int) -> dict[str, Any]:
        """Linear probing: a FedAvg round on the head alone, at the configured (constant) learning rate."""
        return self.server.train_round("probe", index, "head", self.config.lr)

    def ridge_round(self, index: int) -> dict[str, Any]:
        """Every client's ridge statistics, summed; the solved head, temperature-scaled on validation data."""
        server, weights = self.server, self.server.state.weights
        dim, classes = weights["head.weight"].shape[1] + 1, weights["head.weight"].shape[0]
        name = f"head-{server.state.step + 1}"
        entries, delivery = server.transport.outbound(weights, name)
        content = RecordDict({**entries, P.CONFIG: P.config_record({"round": index, **delivery})})

        def accept(pid: int, reply: RecordDict) -> ClientUpdate:
            n = P.check_num_examples(reply.metric_records.get(P.METRICS, {}), server.expected_examples(pid))
            arrays = reply.array_records.get(P.ARRAYS)
            if arrays is None or set(arrays) != {"gram", "cross"}:
                raise P.ReplyRejected("expected arrays 'gram' and 'cross'")
            tensors = {k: P.decode_array(k, arrays[k]) for k in ("gram", "cross")}
            for key, shape in (("gram", (dim, dim)), ("cross", (dim, classes))):
                t = tensors[key]
                if tuple(t.shape) != shape or t.dtype != torch.float64 or not bool(torch.isfinite(t).all()):
                    raise P.ReplyRejected(f"{key}: expected finite float64 {shape}, got {t.dtype} {tuple(t.shape)}")
            if abs(float(tensors["gram"][-1, -1]) - n) > 1e-6:  # the bias column's Σ1·1 is the sample count
                raise P.ReplyRejected(f"gram[-1,-1] = {float(tensors['gram'][-1, -1])} does not match n = {n}")
            return ClientUpdate(pid, n, tensors)

        everyone = list(range(self.config.num_clients))
        updates, stats = server.collect("head", index, everyone, lambda pid, force: content, P.RIDGE, accept)
        server.transport.done(name)
        total = RidgeStats.sum(RidgeStats(u.tensors["gram"], u.tensors["cross"], u.num_examples) for u in updates)
        weight, bias = solve_ridge(total, self.config.ridge_lambda)
        scale = self._validation_scale(weight, bias)
        weights["head.weight"].copy_((scale * weight).to(weights["head.weight"].dtype))
        weights["head.bias"].copy_((scale * bias).to(weights["head.bias"].dtype))
        server.state.extras["ridge_scale"] = scale
        return {"ridge_scale": scale, "ridge_examples": total.count, **stats}

    @torch.no_grad()
    def _validation_scale(self, weight: torch.Tensor, bias: torch.Tensor) -> float:
        resources = self.server.resources
        resources.load_weights(self.server.state.weights)
        images, labels = resources.split("val")
        logits = []
        for x, _ in resources.eval_batches(images, labels):
            features = backbone_features(resources.model.eval(), x).double().cpu()
            logits.append(features @ weight.T + bias)
        return fit_logit_scale(torch.cat(logits).float(), labels.cpu())

    # ------------------------------------------------------------------------------------------------ mask
    def calibration_rounds(self) -> int:
        """R' for the sensitivity rules; 1 for the magnitude and random rules (their keys ignore the mask)."""
        return self.config.calibration_rounds if self.config.mask_rule in SENSITIVITY_RULES else 1

    def calibration_round(self, index: int) -> dict[str, Any]:
        """One calibration round: update the mask (1 = trainable) of the scored backbone tensors."""
        c, state = self.config, self.server.state
        backbone = self.backbone
        shapes = {k: v.shape for k, v in backbone.items()}
        if c.mask_rule in ("lowest-magnitude", "highest-magnitude"):
            state.mask = magnitude_mask(
                backbone, c.sparsity, highest=c.mask_rule == "highest-magnitude", scope=c.mask_scope
            )
            stats: dict[str, Any] = {}
        elif c.mask_rule == "random":
            state.mask = random_mask(shapes, c.sparsity, seed=c.seed, scope=c.mask_scope)
            stats = {}
        else:
            scores, stats = self._federated_scores(index, shapes)
            alive = state.mask
            counts = keep_counts(shapes, keep_fraction(c.sparsity, index - 1, self.calibration_rounds()), c.mask_scope)
            keep = "lowest" if c.mask_rule == "least-sensitive" else "highest"
            state.mask = update_mask(scores, alive, counts, keep=keep, scope=c.mask_scope)
        state.mask = {k: m.cpu() for k, m in state.mask.items()}
        density = mask_stats(state.mask)["density"]
        if index == self.calibration_rounds():
            self.write_mask_outputs()
        return {"mask_density": density, **stats}

    def _federated_scores(self, index: int, shapes: dict[str, torch.Size]) -> tuple[dict[str, torch.Tensor], dict]:
        server, state, c = self.server, self.server.state, self.config
        name = f"calibration-{state.step + 1}"
        entries, delivery = server.transport.outbound(state.weights, name)
        parts = {**entries, P.CONFIG: P.config_record({"round": index, **delivery})}
        if state.mask is not None:
            bits, _ = pack(state.mask, list(shapes))
            parts[P.MASK] = P.encode_mask_bits(bits)
        content = RecordDict(parts)
        expected = {k: tuple(s) for k, s in shapes.items()}

        def accept(pid: int, reply: RecordDict) -> ClientUpdate:
            registered = server.expected_examples(pid)
            want = min(c.fisher_samples, registered) if registered else None
            n = P.check_num_examples(reply.metric_records.get(P.METRICS, {}), want, "the node was asked to score")
            uploaded, upload_bytes = server.transport.inbound(reply, name, pid)
            tensors = P.check_tensors(uploaded, expected, None)
            for key, t in tensors.items():
                if not math.isfinite(float(t.sum())):
                    raise P.ReplyRejected(f"{key}: scores contain NaN or Inf")
                if bool((t < 0).any()):
                    raise P.ReplyRejected(f"{key}: negative scores (sums of squares cannot be negative)")
            return ClientUpdate(pid, n, tensors, upload_bytes=upload_bytes)

        size = max(1, round(c.calibration_fraction * c.num_clients))
        cohort = sample_cohort(c.seed, "calibration", index, c.num_clients, size)
        updates, stats = server.collect("calibration", index, cohort, lambda pid, force: content, P.FISHER, accept)
        server.transport.done(name)
        scores = {k: torch.zeros(s, dtype=torch.float32) for k, s in shapes.items()}
        for update in updates:  # sorted by partition id: a deterministic sum
            for k in scores:
                scores[k] += update.tensors[k]
        return scores, {**stats, "fisher_samples": sum(u.num_examples for u in updates)}

    # ------------------------------------------------------------------------------------------------ outputs
    def write_mask_outputs(self) -> dict[str, Any]:
        """``mask.npz``, ``mask_density.csv`` (per tensor) and ``plots/mask_density.png``; returns the totals."""
        mask = self.server.state.mask
        run_dir = self.server.run_dir.path
        save_mask(run_dir / "mask.npz", mask)
        stats = mask_stats(mask)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["tensor", "entries", "trainable", "density"])
        for name, m in mask.items():
            writer.writerow([name, m.numel(), int(m.sum()), f"{float(m.float().mean()):.6f}"])
        atomic_write_bytes(run_dir / "mask_density.csv", buffer.getvalue().encode())
        plot_mask_density(
            mask,
            run_dir / "plots" / "mask_density.png",
            f"{self.config.mask_rule}, sparsity {self.config.sparsity:g} (fraction frozen)",
        )
        return {k: stats[k] for k in ("density", "sparsity", "trainable", "total")}


def plot_mask_density(mask: dict[str, torch.Tensor], out, title: str) -> None:
    """A bar per transformer block (and the embeddings), trainable fraction of each kind of weight."""
    groups: dict[str, dict[str, list[int]]] = {}
    for name, m in mask.items():
        parts = name.split(".")
        if parts[0] == "blocks":
            block = f"block {parts[1]}"
        else:
            block = "embed" if "embed" in name or "token" in name else "norm"
        kind = next((k for k in ("qkv", "proj", "fc1", "fc2", "norm") if k in name), "other")
        entry = groups.setdefault(block, {}).setdefault(kind, [0, 0])
        entry[0] += int(m.sum())
        entry[1] += m.numel()
    blocks = list(groups)
    kinds = sorted({k for g in groups.values() for k in g})
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(blocks) + 2), 4), constrained_layout=True)
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        values = [100 * groups[b][kind][0] / groups[b][kind][1] if kind in groups[b] else math.nan for b in blocks]
        ax.bar(np.arange(len(blocks)) + i * width, values, width, label=kind)
    ax.set_xticks(np.arange(len(blocks)) + 0.4 - width / 2, blocks, rotation=45, ha="right")
    ax.set_ylabel("trainable entries (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False, ncol=min(5, len(kinds)))
    ax.grid(True, axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
