"""Step 0 of model editing, federated: the ridge head from every client's sufficient statistics.

Each client answers ΦᵀΦ, ΦᵀY and n over its shard's backbone features (no raw data leaves it); their sums solve
(ΦᵀΦ + λI)W = ΦᵀY, the ridge solution on the union of the clients' data. The head's outputs are then scaled by a
temperature fitted on the server's validation split: least-squares outputs lie near [0, 1], and their softmax would
be nearly uniform (a flat fine-tuning loss, random Fisher labels). Linear probing is a ``TrainRounds`` phase.
"""

from __future__ import annotations

from functools import partial

import torch

from fedtalos.config import RunConfig
from fedtalos.editing.head import RidgeStats, fit_head, validation_features
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.state import ServerState
from fedtalos.federation.timing import Stopwatch
from fedtalos.federation.wire import Outgoing, Reply, Wire
from fedtalos.run.phases import Row
from fedtalos.task.resources import Resources
from fedtalos.tracking.hooks import Hooks


class RidgeHead:
    """The one-round ``head`` phase of ``head = "ridge"``."""

    def __init__(self, config: RunConfig, hooks: Hooks, resources: Resources) -> None:
        self.config = config
        self.hooks = hooks
        self.resources = resources

    def run_round(self, state: ServerState, index: int, wire: Wire) -> Row:
        weights, step = state.weights, state.step + 1
        clock = Stopwatch()
        everyone = list(range(self.config.num_clients))
        outgoing = Outgoing(P.RIDGE, step, everyone, weights, {"round": index})
        dim, classes = weights["head.weight"].shape[1] + 1, weights["head.weight"].shape[0]

        check = partial(check_statistics, dim=dim, classes=classes)
        needed = min(self.config.min_train_clients, len(everyone))
        replies = wire.exchange(outgoing, check, where=f"round head/{index}", needed=needed, clock=clock)
        self.hooks("after-replies", step)

        head = self._fit_head(state, list(replies.accepted.values()))
        return replies.stats | head | {"aggregate_s": clock.lap()}

    def _fit_head(self, state: ServerState, updates: list[ClientUpdate]) -> Row:
        """The summed statistics → the ridge head, scaled by the temperature fitted on the server's validation
        split (:func:`~fedtalos.editing.head.fit_head`), into the weights."""
        weights, resources = state.weights, self.resources
        total = RidgeStats.sum(RidgeStats(u.tensors["gram"], u.tensors["cross"], u.num_examples) for u in updates)
        resources.load_weights(weights)
        images, labels = resources.split("val")
        features = validation_features(resources.model, (x for x, _ in resources.eval_batches(images, labels)))
        head = fit_head(total, self.config.ridge_lambda, features, labels, logits_dtype=torch.float32)
        weights["head.weight"].copy_((head.scale * head.weight).to(weights["head.weight"].dtype))
        weights["head.bias"].copy_((head.scale * head.bias).to(weights["head.bias"].dtype))
        state.extras["ridge_scale"] = head.scale
        # ridge_val_loss: the cross-entropy the temperature was fitted to, on the server's validation split (the
        # head phase's val_loss is measured on that split too: in-sample for α, not a held-out estimate)
        return {"ridge_scale": head.scale, "ridge_examples": total.count, "ridge_val_loss": head.fitted_loss}


def check_statistics(reply: Reply, *, dim: int, classes: int) -> ClientUpdate:
    """A ridge reply as an update: finite float64 ΦᵀΦ (dim × dim) and ΦᵀY (dim × classes) over its registered
    examples."""
    n = P.check_num_examples(reply.metrics, reply.registered_examples)
    arrays = reply.content.array_records.get(P.ARRAYS)
    if arrays is None or set(arrays) != {"gram", "cross"}:
        raise P.ReplyRejected("expected arrays 'gram' and 'cross'")
    tensors = {k: P.decode_array(k, arrays[k]) for k in ("gram", "cross")}
    for key, shape in (("gram", (dim, dim)), ("cross", (dim, classes))):
        t = tensors[key]
        if tuple(t.shape) != shape or t.dtype != torch.float64 or not bool(torch.isfinite(t).all()):
            raise P.ReplyRejected(f"{key}: expected finite float64 {shape}, got {t.dtype} {tuple(t.shape)}")
    if abs(float(tensors["gram"][-1, -1]) - n) > 1e-6:  # the bias column's Σ1·1 is the sample count
        raise P.ReplyRejected(f"gram[-1,-1] = {float(tensors['gram'][-1, -1])} does not match n = {n}")
    return ClientUpdate(reply.pid, n, tensors)
