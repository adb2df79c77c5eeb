"""Step 0 of model editing, federated: the ridge head from every client's sufficient statistics.

Configure: ``query.ridge`` to every client with the global weights. Each client answers ΦᵀΦ, ΦᵀY and n over its
shard's backbone features (no raw data leaves it). Aggregate: the sums solve (ΦᵀΦ + λI)W = ΦᵀY, exactly the ridge
solution on the union of the clients' data; the head's outputs are then scaled by a temperature fitted on the
*server's* validation split (labelled data the server holds): least-squares outputs approximate one-hot targets,
so they lie near [0, 1] and their softmax is nearly uniform, which would make the fine-tuning loss flat and the
Fisher labels (sampled from that softmax) random. Linear probing, the other step-0 head, is a
:class:`~fedtalos.federation.fedavg.FedAvgRounds` phase on the head alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from flwr.app import RecordDict

from fedtalos.config import RunConfig
from fedtalos.editing.head import RidgeStats, backbone_features, fit_logit_scale, solve_ridge
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.messenger import Messenger, Request
from fedtalos.federation.state import ServerState
from fedtalos.phases import Row, Unit
from fedtalos.task.resources import Resources


class RidgeHead:
    """The one-round ``head`` phase of ``head = "ridge"``."""

    name = "head"
    rounds = 1
    evaluates = True

    def __init__(self, config: RunConfig, messenger: Messenger, resources: Resources) -> None:
        self.config = config
        self.messenger = messenger
        self.resources = resources

    def configure(self, unit: Unit, state: ServerState) -> Request:
        weights = state.weights
        dim, classes = weights["head.weight"].shape[1] + 1, weights["head.weight"].shape[0]
        payload = f"head-{unit.step}"
        entries, delivery = self.messenger.transport.outbound(weights, payload)
        content = RecordDict({**entries, P.CONFIG: P.config_record({"round": unit.index, **delivery})})

        def accept(pid: int, reply: RecordDict) -> ClientUpdate:
            n = P.check_num_examples(reply.metric_records.get(P.METRICS, {}), self.messenger.expected_examples(pid))
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
        return Request(everyone, P.RIDGE, lambda pid, force: content, accept, payload)

    def aggregate(self, unit: Unit, state: ServerState, updates: list[ClientUpdate]) -> Row:
        weights = state.weights
        total = RidgeStats.sum(RidgeStats(u.tensors["gram"], u.tensors["cross"], u.num_examples) for u in updates)
        weight, bias = solve_ridge(total, self.config.ridge_lambda)
        scale, fitted_loss = self._validation_scale(state, weight, bias)
        weights["head.weight"].copy_((scale * weight).to(weights["head.weight"].dtype))
        weights["head.bias"].copy_((scale * bias).to(weights["head.bias"].dtype))
        state.extras["ridge_scale"] = scale
        # ridge_val_loss: the cross-entropy the temperature was fitted to, on the server's validation split (the
        # head phase's val_loss is measured on that split too: in-sample for α, not a held-out estimate)
        return {"ridge_scale": scale, "ridge_examples": total.count, "ridge_val_loss": fitted_loss}

    @torch.no_grad()
    def _validation_scale(self, state: ServerState, weight: torch.Tensor, bias: torch.Tensor) -> tuple[float, float]:
        """(α fitted on the server's validation split, the mean cross-entropy of α·logits there)."""
        resources = self.resources
        resources.load_weights(state.weights)
        images, labels = resources.split("val")
        logits = []
        for x, _ in resources.eval_batches(images, labels):
            features = backbone_features(resources.model.eval(), x).cpu().double()  # MPS has no float64
            logits.append(features @ weight.T + bias)
        z, y = torch.cat(logits).float(), labels.cpu()
        scale = fit_logit_scale(z, y)
        return scale, float(F.cross_entropy(scale * z.double(), y.long()))
