"""Mask calibration, federated: rounds of ``query.fisher`` whose score sums the server adds up.

Sensitivity rules: a ``calibration-fraction`` cohort (the same clients and samples every round unless
``calibration-redraw``) scores its samples under the current mask; the sums, added in partition-id order, are the
score over the union of their samples, and round r of R' keeps the least (most) sensitive ⌊(1−s)^(r/R')·N⌋ alive
entries. The magnitude and random rules need no clients: one round that only computes the mask. The last round
writes the mask and its report into the run directory. A sensitivity round's row names the classes its samples
hold (``calibration_classes``, ``calibration_class_ids``) and how many the calibration has seen so far
(``calibration_classes_seen``): at Nc = 1 a fixed 10-client cohort sees 10 of the 100 classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from fedtalos.config import RunConfig
from fedtalos.editing.calibration import next_mask, sum_scores
from fedtalos.editing.masks import mask_stats
from fedtalos.editing.scoring import calibration_samples
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.cohort import calibration_cohort
from fedtalos.federation.mask_sync import pack
from fedtalos.federation.state import ServerState
from fedtalos.federation.timing import Stopwatch
from fedtalos.federation.wire import Outgoing, Reply, Wire
from fedtalos.run.phases import SENSITIVITY_RULES, PhaseSpec, Row
from fedtalos.seeds import federated_random_mask_seed
from fedtalos.task.model import HEAD_PREFIX
from fedtalos.task.resources import get_resources
from fedtalos.tracking.hooks import Hooks
from fedtalos.tracking.mask_report import mask_title, write_mask_report

Shapes = dict[str, tuple[int, ...]]


class Calibration:
    """The ``calibration`` phase: the mask (1 = trainable) of the scored backbone tensors."""

    def __init__(self, spec: PhaseSpec, config: RunConfig, hooks: Hooks, run_dir: Path) -> None:
        self.config = config
        self.hooks = hooks
        self.run_dir = run_dir
        self.rounds = spec.units

    def run_round(self, state: ServerState, index: int, wire: Wire) -> Row:
        c, step = self.config, state.step + 1
        clock = Stopwatch()
        updates: list[ClientUpdate] = []
        if c.mask_rule in SENSITIVITY_RULES:
            shapes = _shapes(state)
            outgoing = Outgoing(P.FISHER, step, calibration_cohort(c, index), state.weights, {"round": index})
            if state.mask is not None:  # every message carries it: clients zero the pruned entries while scoring
                outgoing.mask_bits, _ = pack(state.mask, list(shapes))

            check = partial(check_scores, shapes=shapes, fisher_samples=c.fisher_samples)
            needed = min(c.min_train_clients, len(outgoing.cohort))
            where = f"round calibration/{index}"
            replies = wire.exchange(outgoing, check, where=where, needed=needed, clock=clock)
            self.hooks("after-replies", step)
            row: Row = replies.stats
            updates = list(replies.accepted.values())
        else:  # the magnitude and random rules ask no clients
            row = {"configure_s": clock.lap()}

        state.mask = {k: m.cpu() for k, m in self._next_mask(state, index, updates).items()}
        row["mask_density"] = mask_stats(state.mask)["density"]
        if c.mask_rule in SENSITIVITY_RULES:
            row["fisher_samples"] = sum(u.num_examples for u in updates)
            row |= self._classes_row(index)
        if index == self.rounds:
            write_mask_report(self.run_dir, state.mask, mask_title(c))
        return row | {"aggregate_s": clock.lap()}

    def _classes_row(self, index: int) -> Row:
        """The classes scored in round ``index`` and in rounds 1..``index`` together (the server's own shards: the
        same cuts and sample draws as the clients')."""
        resources = get_resources(self.config, pretrained=True)  # the server's, cached
        labels = resources.data.train_labels.numpy()[resources.train_idx]
        rounds = [calibration_classes(self.config, labels, resources.partitions, r) for r in range(1, index + 1)]
        return {
            "calibration_classes": len(rounds[-1]),
            "calibration_class_ids": " ".join(map(str, rounds[-1])),
            "calibration_classes_seen": len(set().union(*rounds)),
        }

    def _next_mask(self, state: ServerState, index: int, updates: list[ClientUpdate]) -> dict[str, torch.Tensor]:
        """Round ``index``'s mask (:func:`~fedtalos.editing.calibration.next_mask`): from the weights (magnitude), a
        seed (random) or the clients' summed scores (sensitivity)."""
        c, shapes = self.config, _shapes(state)
        scores = sum_scores((u.tensors for u in updates), shapes) if c.mask_rule in SENSITIVITY_RULES else None
        return next_mask(
            c.mask_rule,  # type: ignore[arg-type]
            index,
            self.rounds,
            state.mask,
            shapes=shapes,
            sparsity=c.sparsity,
            scope=c.mask_scope,  # type: ignore[arg-type]
            scores=scores,
            weights={k: state.weights[k] for k in shapes},
            seed=federated_random_mask_seed(c.seed),
        )


def calibration_classes(
    config: RunConfig, train_labels: np.ndarray, partitions: Sequence[np.ndarray], round_index: int
) -> list[int]:
    """The sorted class ids among the samples the calibration cohort scores in round ``round_index`` (1-based):
    each member's draw (:func:`~fedtalos.editing.scoring.calibration_samples`) from its shard."""
    classes: set[int] = set()
    for pid in calibration_cohort(config, round_index):
        shard_labels = train_labels[partitions[pid]]
        take = calibration_samples(config, len(shard_labels), round_index, pid).numpy()
        classes.update(int(y) for y in shard_labels[take])
    return sorted(classes)


def _shapes(state: ServerState) -> Shapes:
    """The scored tensors (all but the head), in model order."""
    return {k: tuple(v.shape) for k, v in state.weights.items() if not k.startswith(HEAD_PREFIX)}


def check_scores(reply: Reply, *, shapes: Shapes, fisher_samples: int) -> ClientUpdate:
    """A Fisher reply as an update: as many samples as the node was asked to score, one finite, non-negative score
    tensor per scored tensor."""
    registered = reply.registered_examples
    want = min(fisher_samples, registered) if registered else None
    n = P.check_num_examples(reply.metrics, want, "the node was asked to score")
    tensors = P.check_tensors(reply.upload(), shapes, None)
    for key, t in tensors.items():
        if not math.isfinite(float(t.sum())):
            raise P.ReplyRejected(f"{key}: scores contain NaN or Inf")
        if bool((t < 0).any()):
            raise P.ReplyRejected(f"{key}: negative scores (sums of squares cannot be negative)")
    return ClientUpdate(reply.pid, n, tensors)
