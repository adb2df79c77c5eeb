"""Mask calibration, federated: rounds of ``query.fisher`` whose score sums the server adds up.

Configure (sensitivity rules): a ``calibration-fraction`` cohort (by default the same clients in every round, and
each re-scores the same samples; ``calibration-redraw`` draws both afresh per round), sent the global weights and
the current mask, which each client applies as soft zeroing while it scores its samples. Aggregate: the score sums
of the replies, added in partition-id order — the centralized score over the union of their samples — then the alive
entries with the least (most) sensitive ⌊(1−s)^(r/R')·N⌋ scores are kept (round r of R', 1-based). The magnitude and
random rules need no clients: one round that only computes the mask. After the last round the mask and its report
(``mask.npz``, ``mask_density.csv``, ``plots/mask_density.png``) go into the run directory.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from flwr.app import RecordDict

from fedtalos.config import RunConfig
from fedtalos.editing.masks import SENSITIVITY_RULES, calibration_step, magnitude_mask, mask_stats, random_mask
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.cohort import calibration_cohort
from fedtalos.federation.mask_sync import pack
from fedtalos.federation.messenger import Messenger, Request
from fedtalos.federation.state import ServerState
from fedtalos.phases import Row, Unit
from fedtalos.seeds import federated_random_mask_seed
from fedtalos.task.model import HEAD_PREFIX
from fedtalos.tracking.mask_report import mask_title, write_mask_report


def calibration_rounds(config: RunConfig) -> int:
    """R' for the sensitivity rules; 1 for the magnitude and random rules (their keys ignore the mask)."""
    return config.calibration_rounds if config.mask_rule in SENSITIVITY_RULES else 1


class Calibration:
    """The ``calibration`` phase: the mask (1 = trainable) of the scored backbone tensors."""

    name = "calibration"
    evaluates = False

    def __init__(self, config: RunConfig, messenger: Messenger, run_dir: Path) -> None:
        self.config = config
        self.messenger = messenger
        self.run_dir = run_dir
        self.rounds = calibration_rounds(config)

    @staticmethod
    def _shapes(state: ServerState) -> dict[str, tuple[int, ...]]:
        """The scored tensors (all but the head), in model order."""
        return {k: tuple(v.shape) for k, v in state.weights.items() if not k.startswith(HEAD_PREFIX)}

    def configure(self, unit: Unit, state: ServerState) -> Request | None:
        c = self.config
        if c.mask_rule not in SENSITIVITY_RULES:
            return None
        shapes = self._shapes(state)
        payload = f"calibration-{unit.step}"
        entries, delivery = self.messenger.transport.outbound(state.weights, payload)
        parts = {**entries, P.CONFIG: P.config_record({"round": unit.index, **delivery})}
        if state.mask is not None:
            bits, _ = pack(state.mask, list(shapes))
            parts[P.MASK] = P.encode_mask_bits(bits)
        content = RecordDict(parts)

        def accept(pid: int, reply: RecordDict) -> ClientUpdate:
            registered = self.messenger.expected_examples(pid)
            want = min(c.fisher_samples, registered) if registered else None
            n = P.check_num_examples(reply.metric_records.get(P.METRICS, {}), want, "the node was asked to score")
            uploaded, upload_bytes = self.messenger.transport.inbound(reply, payload, pid)
            tensors = P.check_tensors(uploaded, shapes, None)
            for key, t in tensors.items():
                if not math.isfinite(float(t.sum())):
                    raise P.ReplyRejected(f"{key}: scores contain NaN or Inf")
                if bool((t < 0).any()):
                    raise P.ReplyRejected(f"{key}: negative scores (sums of squares cannot be negative)")
            return ClientUpdate(pid, n, tensors, upload_bytes=upload_bytes)

        cohort = calibration_cohort(c, unit.index)
        return Request(cohort, P.FISHER, lambda pid, force: content, accept, payload)

    def aggregate(self, unit: Unit, state: ServerState, updates: list[ClientUpdate]) -> Row:
        c = self.config
        backbone = {k: v for k, v in state.weights.items() if not k.startswith(HEAD_PREFIX)}
        row: Row = {}
        if c.mask_rule in ("lowest-magnitude", "highest-magnitude"):
            highest = c.mask_rule == "highest-magnitude"
            mask = magnitude_mask(backbone, c.sparsity, highest=highest, scope=c.mask_scope)
        elif c.mask_rule == "random":
            shapes = {k: v.shape for k, v in backbone.items()}
            mask = random_mask(shapes, c.sparsity, seed=federated_random_mask_seed(c.seed), scope=c.mask_scope)
        else:
            shapes = self._shapes(state)
            scores = sum_scores(updates, shapes)
            mask = calibration_step(
                scores,
                state.mask,
                shapes,
                rule=c.mask_rule,  # type: ignore[arg-type]
                sparsity=c.sparsity,
                round_index=unit.index,
                rounds=self.rounds,
                scope=c.mask_scope,  # type: ignore[arg-type]
            )
            row["fisher_samples"] = sum(u.num_examples for u in updates)
        state.mask = {k: m.cpu() for k, m in mask.items()}
        if unit.index == self.rounds:
            write_mask_report(self.run_dir, state.mask, mask_title(c))
        return {"mask_density": mask_stats(state.mask)["density"], **row}


def sum_scores(updates: list[ClientUpdate], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The clients' score sums added up, float32, in the order of ``updates`` (partition ids: deterministic)."""
    scores = {k: torch.zeros(s, dtype=torch.float32) for k, s in shapes.items()}
    for update in updates:
        for k in scores:
            scores[k] += update.tensors[k]
    return scores
