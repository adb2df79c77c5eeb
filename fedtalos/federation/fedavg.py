"""FedAvg rounds through the run's strategy: fine-tuning (``train``, sparse when a mask exists) and linear probing.

Configure: the round's cohort, sampled from (seed, phase, round); one ``train`` message with the global weights, the
round's config (lr, J, what trains) and, for nodes that lack it, the mask. Aggregate: the uploads' example-weighted
average in partition-id order, then the strategy's update of the global weights in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import RecordDict

from fedtalos.config import RunConfig
from fedtalos.editing.masks import gather_trainable, scatter_trainable
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate, aggregate
from fedtalos.federation.cohort import sample_cohort
from fedtalos.federation.mask_sync import pack
from fedtalos.federation.messenger import ContentFor, Messenger, Request
from fedtalos.federation.state import ServerState
from fedtalos.phases import Row, Unit
from fedtalos.strategies.base import ServerStrategy
from fedtalos.task.lr_schedule import lr_at
from fedtalos.task.model import HEAD_PREFIX


@dataclass
class _Pending:
    """What configure prepared for aggregate in the same round."""

    lr: float
    mask: dict[str, torch.Tensor] | None
    reference: dict[str, torch.Tensor]


class FedAvgRounds:
    """A phase of FedAvg rounds.

    Args:
        name: the state's phase name ('train', or 'head' for linear probing).
        rounds: rounds in the phase.
        stream: the random stream of the phase's rounds ('train' or 'probe', see ``seeds.py``): it seeds their
            cohorts and the clients' batches, and travels in the round config.
        trainable: what clients train: 'all', 'head' or 'backbone'.
        sparse: fine-tune only the mask's trainable entries (the state's mask, once calibrated).
    """

    evaluates = True

    def __init__(
        self,
        name: str,
        rounds: int,
        *,
        config: RunConfig,
        messenger: Messenger,
        strategy: ServerStrategy,
        stream: str,
        trainable: str,
        sparse: bool,
    ) -> None:
        self.name, self.rounds = name, rounds
        self.config = config
        self.messenger = messenger
        self.strategy = strategy
        self.stream = stream
        self.trainable = trainable
        self.sparse = sparse
        self._pending: _Pending | None = None

    def learning_rate(self, index: int) -> float:
        """The clients' learning rate in round ``index``: the schedule over the fine-tuning rounds; constant lr when
        probing."""
        if self.stream == "probe":
            return self.config.lr
        return lr_at(self.config, index - 1, self.config.num_server_rounds)

    def configure(self, unit: Unit, state: ServerState) -> Request:
        c, weights = self.config, state.weights
        mask = state.mask if self.sparse else None
        lr = self.learning_rate(unit.index)
        round_config = {
            "stream": self.stream,
            "round": unit.index,
            "server-round": unit.step,
            "lr": lr,
            "local-steps": c.local_steps,
            "trainable": self.trainable,
            **self.strategy.client_config(),
        }
        payload = f"train-{unit.step}"
        entries, delivery = self.messenger.transport.outbound(weights, payload)
        round_config.update(delivery)
        dense = {k: tuple(v.shape) for k, v in weights.items() if _trains(k, self.trainable)}
        masked_count = None
        content_for: ContentFor
        if mask is None:
            plain = RecordDict({**entries, P.CONFIG: P.config_record(round_config)})
            content_for = lambda pid, force: plain  # noqa: E731
            reference = weights
        else:
            bits, mid = pack(mask, [k for k in weights if k in mask])
            round_config["mask-id"] = mid
            holders = _mask_holders(state, mid)
            plain = RecordDict({**entries, P.CONFIG: P.config_record(round_config)})
            with_bits = RecordDict({**plain, P.MASK: P.encode_mask_bits(bits)})

            def content_for(pid: int, force: bool) -> RecordDict:
                if pid in holders and not force:
                    return plain
                if pid not in holders:
                    holders.append(pid)
                return with_bits

            dense = {k: s for k, s in dense.items() if k not in mask}
            masked_count = int(sum(int(m.sum()) for m in mask.values()))
            reference = {**{k: weights[k] for k in dense}, P.MASKED_VALUES: gather_trainable(weights, mask)}
        self._pending = _Pending(lr, mask, reference)

        def accept(pid: int, reply: RecordDict) -> ClientUpdate:
            n = P.check_num_examples(reply.metric_records.get(P.METRICS, {}), self.messenger.expected_examples(pid))
            uploaded, size = self.messenger.transport.inbound(reply, payload, pid)
            tensors = P.check_tensors(uploaded, dense, masked_count)
            distance = P.squared_distance(tensors, reference)
            reported = reply.metric_records[P.METRICS]
            metrics = {k: v for k in ("train-loss", "train-acc") if (v := P.check_metric(reported, k)) is not None}
            return ClientUpdate(pid, n, tensors, metrics, distance, size)

        cohort = sample_cohort(c.seed, self.stream, unit.index, c.num_clients, c.cohort_size)
        return Request(cohort, P.TRAIN, content_for, accept, payload)

    def aggregate(self, unit: Unit, state: ServerState, updates: list[ClientUpdate]) -> Row:
        assert self._pending is not None, "configure comes first"
        pending, self._pending = self._pending, None
        # the drift is per weight of the whole model, uploaded or not: dense and sparse rounds on one scale
        result = aggregate(updates, pending.reference, coordinates=sum(v.numel() for v in state.weights.values()))
        average = result.average
        if pending.mask is not None:
            flat = average.pop(P.MASKED_VALUES)
            scattered = scatter_trainable(flat, pending.mask, state.weights)
            average.update({k: v for k, v in scattered.items() if k in pending.mask})
        self.strategy.apply(state.weights, average, unit.index)  # the phase's rounds: FedAdam's bias correction
        return {
            "lr": pending.lr,
            "train_loss": result.metrics.get("train-loss"),
            "train_acc": result.metrics.get("train-acc"),
            "drift": result.drift,
        }


def _mask_holders(state: ServerState, mid: str) -> list[int]:
    """Partitions that were sent mask ``mid`` (kept in the checkpoint: their nodes cache it on disk, and a node that
    lost it answers mask-missing and gets it again)."""
    record = state.extras.get("mask_holders")
    if not record or record["mask_id"] != mid:
        record = state.extras["mask_holders"] = {"mask_id": mid, "pids": []}
    return record["pids"]


def _trains(name: str, trainable: str) -> bool:
    is_head = name.startswith(HEAD_PREFIX)
    return trainable == "all" or (trainable == "head") == is_head
