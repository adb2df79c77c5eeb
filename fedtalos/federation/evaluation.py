"""Evaluating the global model: on the server's validation and test splits, and on a sample of clients' shards."""

from __future__ import annotations

import logging

import torch
from flwr.app import RecordDict

from fedtalos.config import RunConfig
from fedtalos.federation import protocol as P
from fedtalos.federation.cohort import sample_cohort
from fedtalos.federation.messenger import Messenger
from fedtalos.task.resources import Resources

log = logging.getLogger(__name__)


def evaluate_split(resources: Resources, weights: dict[str, torch.Tensor], split: str) -> dict[str, float]:
    """``{split}_loss`` (nats) and ``{split}_acc`` of ``weights`` on the server's 'val' or 'test' split."""
    resources.load_weights(weights)
    return resources.evaluate(split)


def federated_evaluation(
    config: RunConfig, messenger: Messenger, weights: dict[str, torch.Tensor], step: int
) -> dict[str, float]:
    """Loss and accuracy of ``weights`` on the shards of a ``federated-eval-fraction`` sample of clients, weighted
    by their example counts: ``fed_eval_loss``, ``fed_eval_acc``, ``fed_eval_clients_failed``. A reply that does
    not check out is logged and left out."""
    cohort = sample_cohort(config.seed, "evaluate", step, config.num_clients, config.federated_eval_cohort_size)
    payload = f"evaluate-{step}"
    entries, delivery = messenger.transport.outbound(weights, payload)
    content = RecordDict({**entries, P.CONFIG: P.config_record(delivery)})
    ok, failed, _ = messenger.send(cohort, lambda pid, force: content, P.EVALUATE)
    messenger.transport.done(payload)
    rows = []  # (n, loss, acc) of the replies that check out
    for pid, reply in sorted(ok.items()):
        try:
            metrics = reply.metric_records.get(P.METRICS, {})
            n = P.check_num_examples(metrics, messenger.expected_examples(pid))
            loss, acc = P.check_metric(metrics, "eval-loss"), P.check_metric(metrics, "eval-acc")
            if loss is None or acc is None or not 0.0 <= acc <= 1.0:
                raise P.ReplyRejected(f"eval-loss / eval-acc missing or out of range: {loss!r}, {acc!r}")
        except P.ReplyRejected as e:
            failed[pid] = f"rejected: {e}"
            continue
        rows.append((n, loss, acc))
    for pid, reason in sorted(failed.items()):
        log.warning("federated evaluation: client %d failed (%s)", pid, reason)
    total = sum(n for n, _, _ in rows)
    if not total:
        return {"fed_eval_clients_failed": len(cohort)}
    return {
        "fed_eval_loss": sum(n * loss for n, loss, _ in rows) / total,
        "fed_eval_acc": sum(n * acc for n, _, acc in rows) / total,
        "fed_eval_clients_failed": len(cohort) - len(rows),
    }
