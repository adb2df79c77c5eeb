"""Evaluating the global model: on the server's validation and test splits, and on a sample of clients' shards."""

from __future__ import annotations

import torch

from fedtalos.config import RunConfig
from fedtalos.federation import protocol as P
from fedtalos.federation.cohort import sample_cohort
from fedtalos.federation.wire import Outgoing, Reply, Wire
from fedtalos.task.resources import Resources


def evaluate_split(resources: Resources, weights: dict[str, torch.Tensor], split: str) -> dict[str, float]:
    """``{split}_loss`` (nats), ``{split}_acc`` and ``{split}_top5`` of ``weights`` on the server's 'val' or 'test'
    split."""
    resources.load_weights(weights)
    return resources.evaluate(split)


def federated_evaluation(
    config: RunConfig, wire: Wire, weights: dict[str, torch.Tensor], step: int
) -> dict[str, float]:
    """Loss and accuracy of ``weights`` on the shards of a ``federated-eval-fraction`` sample of clients, weighted
    by their example counts: ``fed_eval_loss``, ``fed_eval_acc``, ``fed_eval_clients_failed``. A reply that does
    not check out is logged and left out; there is no retry."""
    cohort = sample_cohort(config.seed, "evaluate", step, config.num_clients, config.federated_eval_cohort_size)
    outgoing = Outgoing(P.EVALUATE, step, cohort, weights, {})
    results = list(wire.exchange(outgoing, check_evaluation, where="federated evaluation", needed=0).accepted.values())
    total = sum(n for n, _, _ in results)
    if not total:
        return {"fed_eval_clients_failed": len(cohort)}
    return {
        "fed_eval_loss": sum(n * loss for n, loss, _ in results) / total,
        "fed_eval_acc": sum(n * acc for n, _, acc in results) / total,
        "fed_eval_clients_failed": len(cohort) - len(results),
    }


def check_evaluation(reply: Reply) -> tuple[int, float, float]:
    """An evaluate reply as (examples, loss, accuracy): its registered example count, a finite loss, an accuracy in
    [0, 1]."""
    n = P.check_num_examples(reply.metrics, reply.registered_examples)
    loss, acc = P.check_metric(reply.metrics, "eval-loss"), P.check_metric(reply.metrics, "eval-acc")
    if loss is None or acc is None or not 0.0 <= acc <= 1.0:
        raise P.ReplyRejected(f"eval-loss / eval-acc missing or out of range: {loss!r}, {acc!r}")
    return n, loss, acc
