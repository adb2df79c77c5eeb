"""Training rounds: fine-tuning (``train``, sparse once a mask exists) and linear probing (``head = "probe"``).

One round: the cohort of (seed, stream, round) → one ``train`` message (global weights, the round's config, the mask
for nodes that lack it) → each upload checked as it arrives and folded into the example-weighted mean in
partition-id order (:class:`~fedtalos.federation.aggregate.RunningMean`; a strategy that ``combines_updates``
combines the checked updates itself instead) → the strategy's update of the global weights, in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch

from fedtalos.config import RunConfig
from fedtalos.editing.sparse import gather_trainable, scatter_trainable
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate, RunningMean, aggregate
from fedtalos.federation.cohort import sample_cohort
from fedtalos.federation.mask_sync import pack
from fedtalos.federation.state import ServerState
from fedtalos.federation.timing import Stopwatch
from fedtalos.federation.wire import Outgoing, Reply, Wire
from fedtalos.run.phases import PhaseSpec, Row
from fedtalos.strategies.base import ServerStrategy
from fedtalos.strategies.dp import NORM_BIT
from fedtalos.task.lr_schedule import lr_at
from fedtalos.task.model import trains
from fedtalos.tracking.hooks import Hooks


class TrainRounds:
    """A phase of training rounds through the run's strategy (``spec``: 'train', or 'head' for linear probing)."""

    def __init__(self, spec: PhaseSpec, config: RunConfig, hooks: Hooks, strategy: ServerStrategy) -> None:
        self.spec = spec
        self.config = config
        self.hooks = hooks
        self.strategy = strategy
        self.sparse = spec.name == "train"  # fine-tuning trains only the mask's entries, once there is a mask
        self.sums: dict[str, torch.Tensor] = {}  # the mean's buffers, reused every round

    def learning_rate(self, index: int) -> float:
        """The clients' learning rate in round ``index``: the schedule over the fine-tuning rounds; constant lr when
        probing."""
        if self.spec.stream == "probe":
            return self.config.lr
        return lr_at(self.config, index - 1, self.config.num_server_rounds)

    def run_round(self, state: ServerState, index: int, wire: Wire) -> Row:
        c, weights, step = self.config, state.weights, state.step + 1
        clock = Stopwatch()
        lr = self.learning_rate(index)
        config = {
            "stream": self.spec.stream,
            "round": index,
            "server-round": step,
            "lr": lr,
            "local-steps": c.local_steps,
            "frozen": self.spec.frozen,
            **self.strategy.client_config(),
        }
        cohort = sample_cohort(c.seed, self.spec.stream, index, c.num_clients, c.cohort_size)
        outgoing = Outgoing(P.TRAIN, step, cohort, weights, config)
        dense = {k: tuple(v.shape) for k, v in weights.items() if trains(k, self.spec.frozen)}
        mask = state.mask if self.sparse else None
        masked_count, reference = None, weights  # what the clients start from, for the drift
        if mask is not None:
            outgoing.mask_bits, config["mask-id"] = pack(mask, [k for k in weights if k in mask])
            outgoing.mask_holders = _mask_holders(state, config["mask-id"])
            dense = {k: s for k, s in dense.items() if k not in mask}
            masked_count = int(sum(int(m.sum()) for m in mask.values()))
            reference = {**{k: weights[k] for k in dense}, P.MASKED_VALUES: gather_trainable(weights, mask)}

        # the mean, folded as the replies arrive (a strategy that combines the updates needs them all first)
        running = None if self.strategy.combines_updates else RunningMean(buffers=self.sums)
        check = partial(check_train_reply, dense=dense, masked_count=masked_count, reference=reference, fold=running)
        needed = min(c.min_train_clients, len(cohort))
        where = f"round {self.spec.name}/{index}"
        replies = wire.exchange(outgoing, check, where=where, needed=needed, clock=clock)
        self.hooks("after-replies", step)

        # the drift is per weight of the whole model, uploaded or not: dense and sparse rounds on one scale
        coordinates = sum(v.numel() for v in weights.values())
        updates = list(replies.accepted.values())
        if running is not None and running.complete and len(updates) == len(cohort):
            result = running.result(reference, coordinates=coordinates)
        else:  # a client failed (the weights p_i change) or the strategy combines the updates itself
            result = aggregate(updates, reference, coordinates=coordinates, buffers=self.sums)
        average = result.average
        if self.strategy.combines_updates:  # a rule over every update (a median, a selection): not their mean
            average = self.strategy.combine(updates, reference)
        if mask is not None:
            flat = average.pop(P.MASKED_VALUES)
            scattered = scatter_trainable(flat, mask, weights)
            average.update({k: v for k, v in scattered.items() if k in mask})
        self.strategy.apply(weights, average, index)  # the phase's rounds: FedAdam's bias correction
        return replies.stats | {
            "lr": lr,
            "train_loss": result.metrics.get("train-loss"),
            "train_acc": result.metrics.get("train-acc"),
            "drift": result.drift,
            "aggregate_s": clock.lap(),
        }


def check_train_reply(
    reply: Reply,
    *,
    dense: Mapping[str, tuple[int, ...]],
    masked_count: int | None,
    reference: Mapping[str, torch.Tensor],
    fold: RunningMean | None = None,
) -> ClientUpdate:
    """A train reply as an update: its registered example count, the expected tensors (``dense`` ones, and the
    ``masked_count`` trainable entries of masked ones), finite values, and its train loss / accuracy (and norm bit);
    offered to ``fold`` once accepted."""
    n = P.check_num_examples(reply.metrics, reply.registered_examples)
    tensors = P.check_tensors(reply.upload(), dense, masked_count)
    distance = P.squared_distance(tensors, reference)
    wanted = ("train-loss", "train-acc", NORM_BIT)  # NORM_BIT: the client clipped its upload (adaptive DP)
    metrics = {k: v for k in wanted if (v := P.check_metric(reply.metrics, k)) is not None}
    update = ClientUpdate(reply.pid, n, tensors, metrics, distance)
    if fold is not None:
        fold.offer(update, reference, reply.cohort_examples)
    return update


def _mask_holders(state: ServerState, mid: str) -> list[int]:
    """Partitions that were sent mask ``mid`` (kept in the checkpoint: their nodes cache it on disk, and a node that
    lost it answers mask-missing and gets it again)."""
    record = state.extras.get("mask_holders")
    if not record or record["mask_id"] != mid:
        record = state.extras["mask_holders"] = {"mask_id": mid, "pids": []}
    return record["pids"]
