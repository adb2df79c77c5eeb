"""fedtalos ClientApp: local training and evaluation on this node's shard, and the model-editing queries."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedtalos.config import RunConfig
from fedtalos.editing.head import ridge_statistics
from fedtalos.editing.optim import SparseSGDM
from fedtalos.editing.scoring import client_scores
from fedtalos.editing.sparse import gather_trainable, unpack_mask
from fedtalos.federation import protocol as P
from fedtalos.federation import transport
from fedtalos.federation.mask_sync import MaskCache
from fedtalos.federation.timing import client_stamps
from fedtalos.seeds import client_generator
from fedtalos.strategies.dp import NORM_BIT, clip_update
from fedtalos.task.device import empty_cache, is_out_of_memory, out_of_memory
from fedtalos.task.model import backbone_parameters, set_trainable
from fedtalos.task.resources import Resources, get_resources
from fedtalos.task.staging import WeightStaging
from fedtalos.task.train import evaluate, train_steps

app = ClientApp()
Handler = Callable[[Message, Context], Message]
masks = MaskCache()
staging = WeightStaging()  # weights in and out of the model: one pinned copy each way on CUDA


def fatal_resource_errors(handler: Handler) -> Handler:
    """Turn an out-of-memory error of ``handler`` into a :class:`~fedtalos.task.device.ResourceError`, which the
    server treats as fatal for the run (with what to lower) instead of a client dropout."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as e:
            if is_out_of_memory(e):
                raise out_of_memory(msg.metadata.message_type, e) from None
            raise

    return wrapped


@functools.lru_cache(maxsize=4)
def _parse_config(items: frozenset) -> RunConfig:
    return RunConfig.from_mapping(dict(items))


def run_config(context: Context) -> RunConfig:
    """The validated run config (parsed once per process)."""
    return _parse_config(frozenset(context.run_config.items()))


def partition_id(context: Context, config: RunConfig) -> int:
    """This node's partition, checked against the run's number of clients."""
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(
            'this SuperNode has no partition: start it with --node-config "partition-id=<i> '
            f'num-partitions={config.num_clients}"'
        )
    pid, count = int(node["partition-id"]), int(node["num-partitions"])
    if count != config.num_clients or not 0 <= pid < count:
        raise ValueError(f"node holds partition {pid} of {count}, but the run has num-clients = {config.num_clients}")
    return pid


def client_resources(config: RunConfig) -> Resources:
    """This process's resources for ``config``: a model whose weights each message brings, the node's shard from
    its file (:mod:`fedtalos.task.shard_cache`)."""
    return get_resources(config, client=True)


def _setup(msg: Message, context: Context) -> tuple[RunConfig, Resources, int, float]:
    """The run config, this process's resources with the message's weights loaded, the partition, and the seconds
    the weights took."""
    config = run_config(context)
    resources = client_resources(config)
    pid = partition_id(context, config)
    loading = time.perf_counter()
    with transport.received(msg.content, msg.content.config_records.get(P.CONFIG, {})) as delivered:
        if delivered.tensors is not None:
            staging.load(resources.model, delivered.tensors, key=delivered.key)
            resources.weights_pending = False
        elif resources.weights_pending:
            raise RuntimeError(f"a {msg.metadata.message_type} message without the global weights reached a new client")
    return config, resources, pid, time.perf_counter() - loading


def _mask_shapes(resources: Resources) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in backbone_parameters(resources.model)}


def _message_mask(msg: Message, resources: Resources, wanted_id: str) -> dict[str, torch.Tensor] | None:
    """The mask a message refers to, on the model's device: from its bits (then cached) or from the cache (else
    MaskMissing). Unpacked and moved once per mask id, not every round."""
    if not wanted_id:
        return None
    if P.MASK in msg.content.array_records:
        masks.put(msg.content[P.MASK][P.MASK_BITS].numpy(), wanted_id)
    return masks.get_on(wanted_id, _mask_shapes(resources), resources.device)


@app.query("identity")
def identity(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds and how many examples it has.

    A node whose partition count differs from the run's still answers (with 0 examples): the server, which
    sees the whole federation, turns that into one clear error.
    """
    config = run_config(context)
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        partition_id(context, config)  # raises the explanation
    pid, count = int(node["partition-id"]), int(node["num-partitions"])
    size = len(client_resources(config).client_data(pid)[1]) if count == config.num_clients and 0 <= pid < count else 0
    metrics = {"partition-id": pid, "num-partitions": count, P.NUM_EXAMPLES: size}
    return Message(P.make_reply(None, metrics), reply_to=msg)


@app.train()
@fatal_resource_errors
def train(msg: Message, context: Context) -> Message:
    """J local steps of (Sparse)SGD with momentum, fresh optimizer, from the global weights.

    Uploads only what could change: trainable tensors, and for masked tensors only their trainable entries. The
    reply's metrics carry the handler's timing (:mod:`fedtalos.federation.timing`).
    """
    started = time.time()
    config, resources, pid, weights_s = _setup(msg, context)
    round_config = msg.content[P.CONFIG]
    model = resources.model
    set_trainable(model, str(round_config.get("frozen", "none")))  # the phase's frozen part
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    mask = _message_mask(msg, resources, str(round_config.get("mask-id", "")))
    mask = {n: m for n, m in mask.items() if n in params} if mask else {}
    optimizer = SparseSGDM(
        list(params.values()),
        masks=[mask.get(n) for n in params],
        lr=float(round_config["lr"]),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    regularizer = None
    mu = float(round_config.get("proximal-mu", 0.0))
    if mu > 0:  # FedProx: (μ/2)·‖w − w_global‖² over the trainable parameters
        anchors = {n: p.detach().clone() for n, p in params.items()}

        def regularizer() -> torch.Tensor:
            return 0.5 * mu * sum((p - anchors[n]).pow(2).sum() for n, p in params.items())

    clipping_norm = round_config.get("clipping-norm")  # dp on the client side: clip the upload, as Flower's mods
    start = _upload({n: p.detach().cpu().clone() for n, p in params.items()}, mask) if clipping_norm else None
    images, labels = resources.client_data(pid)
    stream, round_index = str(round_config["stream"]), int(round_config["round"])
    generator = client_generator(config.seed, stream, round_index, pid)
    batches = resources.train_batches(images, labels, generator, num_steps=int(round_config["local-steps"]))
    stepping = time.perf_counter()
    stats = train_steps(
        model,
        optimizer,
        batches,
        loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        autocast_dtype=resources.dtype,
        regularizer=regularizer,
    )
    steps_s = time.perf_counter() - stepping  # includes the loss read-back (train_steps syncs once at its end)
    upload = _upload({n: p.detach() for n, p in params.items()}, mask)
    if start is not None or not transport.to_shared_memory(round_config):  # a slot takes them from the device
        upload = staging.read(upload)
    metrics = {P.NUM_EXAMPLES: len(labels), "train-loss": stats.loss, "train-acc": stats.accuracy}
    if start is not None:
        upload, clipped = clip_update({k: v.cpu() for k, v in upload.items()}, start, float(clipping_norm))
        metrics[NORM_BIT] = float(clipped)  # the adaptive wrappers adapt the norm to the fraction clipped
    sending = time.perf_counter()
    arrays = transport.send(upload, round_config, pid)
    metrics.update(client_stamps(started, steps_s, weights_s, time.perf_counter() - sending))
    return Message(P.make_reply(arrays, metrics), reply_to=msg)


def _upload(params: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a train reply carries of ``params``: unmasked tensors whole, masked ones as their trainable entries."""
    upload = {n: p for n, p in params.items() if n not in mask}
    if mask:
        upload[P.MASKED_VALUES] = gather_trainable(params, mask)
    return upload


@app.evaluate()
@fatal_resource_errors
def evaluate_local(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global weights on this node's shard (federated evaluation)."""
    _, resources, pid, _ = _setup(msg, context)
    images, labels = resources.client_data(pid)
    stats = evaluate(resources.model, resources.eval_batches(images, labels), autocast_dtype=resources.dtype)
    metrics = {P.NUM_EXAMPLES: stats.count, "eval-loss": stats.loss, "eval-acc": stats.accuracy}
    return Message(P.make_reply(None, metrics), reply_to=msg)


@app.query("ridge")
@fatal_resource_errors
def ridge(msg: Message, context: Context) -> Message:
    """Step 0: ΦᵀΦ, ΦᵀY (float64) and n over this shard's backbone features; no raw data leaves the node."""
    _, resources, pid, _ = _setup(msg, context)
    images, labels = resources.client_data(pid)
    stats = ridge_statistics(resources.model, resources.eval_batches(images, labels), resources.num_classes)
    arrays = ArrayRecord({"gram": Array(stats.gram.numpy()), "cross": Array(stats.cross.numpy())})
    empty_cache(resources.device)  # the feature passes' blocks: give them back before the next phase
    return Message(P.make_reply(arrays, {P.NUM_EXAMPLES: stats.count}), reply_to=msg)


@app.query("fisher")
@fatal_resource_errors
def fisher(msg: Message, context: Context) -> Message:
    """Sums of squared per-sample gradients over ``fisher-samples`` of this shard, with the current soft mask."""
    config, resources, pid, _ = _setup(msg, context)
    round_config = msg.content[P.CONFIG]
    soft_mask = None
    if P.MASK in msg.content.array_records:
        soft_mask = unpack_mask(msg.content[P.MASK][P.MASK_BITS].numpy(), _mask_shapes(resources))
    scores, count = client_scores(config, resources, pid, int(round_config["round"]), soft_mask)
    arrays = transport.send(scores, round_config, pid)
    del scores
    empty_cache(resources.device)  # the per-sample hooks' blocks (GBs at 224 px): training needs them back
    return Message(P.make_reply(arrays, {P.NUM_EXAMPLES: count}), reply_to=msg)
