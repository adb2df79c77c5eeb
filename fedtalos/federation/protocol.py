"""What travels in Flower messages, in one place: record keys, encodings, and the checks on every reply.

A ``train`` message carries ``arrays`` (global weights), ``config`` and, for nodes that lack it, the bit-packed
``mask``; a reply carries only what the client could change (trainable tensors, and under ``MASKED_VALUES`` the
trainable entries of masked ones) and ``metrics``. A reply that fails a check raises :class:`ReplyRejected`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedtalos.task.device import RESOURCE_ERROR

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
MASK = "mask"
MASK_BITS = "bits"
MASKED_VALUES = "__masked_values__"
NUM_EXAMPLES = "num-examples"

# message types
TRAIN = "train"
EVALUATE = "evaluate"
IDENTITY = "query.identity"
RIDGE = "query.ridge"
FISHER = "query.fisher"


class ReplyRejected(ValueError):
    """A client's reply is malformed or implausible; ``reason`` says how."""


class ClientResourceError(RuntimeError):
    """A client lacks memory or its device (:class:`~fedtalos.task.device.ResourceError`): fatal for the run.

    Never counted as a dropout: with ``min-train-clients = 1`` rounds and Fisher sums would quietly use fewer
    clients, with numbers that depend on which clients happened to fit.
    """


def check_error_reply(reason: str, where: str, who: str) -> None:
    """Raise :class:`ClientResourceError` if an error reply's ``reason`` is a client's resource error."""
    if RESOURCE_ERROR in reason:
        detail = reason[reason.index(RESOURCE_ERROR) + len(RESOURCE_ERROR) :].strip().rstrip("'>")
        raise ClientResourceError(
            f"{where}: {who} failed for lack of resources, which stops the run (it would otherwise go on with "
            f"fewer clients): {detail}. The last checkpoint is intact: fix it and run the same command to resume."
        )


def tensor_to_array(tensor: torch.Tensor) -> Array:
    """A Flower ``Array`` holding ``tensor`` (CPU, contiguous)."""
    return Array(tensor.detach().cpu().contiguous().numpy())


def array_to_tensor(array: Array) -> torch.Tensor:
    """The tensor in a Flower ``Array`` (a fresh, writable CPU tensor)."""
    return torch.from_numpy(array.numpy())


def encode_tensors(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Named tensors → ``ArrayRecord`` (order kept)."""
    return ArrayRecord({k: tensor_to_array(v) for k, v in tensors.items()})


def decode_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``ArrayRecord`` → named CPU tensors."""
    return {k: array_to_tensor(v) for k, v in record.items()}


def encode_mask_bits(bits: np.ndarray) -> ArrayRecord:
    """A bit-packed mask (uint8, see ``fedtalos.editing.masks.pack_mask``) as a record."""
    return ArrayRecord({MASK_BITS: Array(np.ascontiguousarray(bits, dtype=np.uint8))})


def message_bytes(content: RecordDict) -> int:
    """Payload bytes of a message's arrays (what the byte metrics count)."""
    return sum(record.count_bytes() for record in content.array_records.values())


def make_reply(arrays: ArrayRecord | None, metrics: Mapping[str, float | int]) -> RecordDict:
    """A reply ``RecordDict``: one ArrayRecord (optional) and one MetricRecord, as Flower's strategies expect."""
    content = RecordDict({METRICS: MetricRecord(dict(metrics))})
    if arrays is not None:
        content[ARRAYS] = arrays
    return content


def config_record(values: Mapping[str, int | float | str | bool]) -> ConfigRecord:
    """A ``ConfigRecord`` from plain values."""
    return ConfigRecord(dict(values))


def check_num_examples(metrics: MetricRecord, expected: int | None, what: str = "the node registered") -> int:
    """``num-examples`` of a reply: a positive integer, equal to ``expected`` (what the node registered, or for
    calibration the number of samples it was asked to score; ``what`` says which in the rejection)."""
    value = metrics.get(NUM_EXAMPLES)
    if value is None:
        raise ReplyRejected("no num-examples")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReplyRejected(f"num-examples is not a number: {value!r}")
    if value != int(value) or value <= 0:
        raise ReplyRejected(f"num-examples must be a positive integer, got {value}")
    if expected is not None and int(value) != expected:
        raise ReplyRejected(f"num-examples = {int(value)}, but {what} {expected} examples")
    return int(value)


def decode_array(key: str, array: Array) -> torch.Tensor:
    """The tensor in a client's ``Array``, or :class:`ReplyRejected` if its bytes do not decode.

    A reply's bytes are untrusted: ``numpy.load`` raises many exception types on garbage (ValueError, EOFError,
    OSError, ...), and every one of them must reject the reply, not crash the server.
    """
    try:
        return array_to_tensor(array)
    except Exception as e:
        raise ReplyRejected(f"{key}: undecodable array ({type(e).__name__}: {e})") from None


def check_metric(metrics: MetricRecord, key: str) -> float | None:
    """A reply's scalar metric ``key`` as a float (None if absent); a list, NaN or Inf rejects the reply."""
    value = metrics.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReplyRejected(f"{key} is not a finite number: {value!r}")
    return float(value)


def decode_upload(content: RecordDict) -> dict[str, torch.Tensor]:
    """The tensors of a reply's single ArrayRecord ``arrays``, each checked against its declared shape and dtype.

    An Array declares its shape and dtype separately from its bytes: a (1,)-shaped payload declared as (n,) would
    otherwise broadcast into the average.
    """
    if ARRAYS not in content.array_records or len(content.array_records) != 1:
        raise ReplyRejected(f"expected exactly one ArrayRecord named {ARRAYS!r}, got {list(content.array_records)}")
    tensors = {}
    for key, array in content.array_records[ARRAYS].items():
        tensor = decode_array(key, array)
        if tuple(tensor.shape) != tuple(array.shape) or _dtype_name(tensor) != array.dtype:
            raise ReplyRejected(
                f"{key}: data is {tensor.dtype} {tuple(tensor.shape)}, declared {array.dtype} {tuple(array.shape)}"
            )
        tensors[key] = tensor
    return tensors


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def check_tensors(
    tensors: Mapping[str, torch.Tensor],
    expected_shapes: Mapping[str, tuple[int, ...]],
    masked_count: int | None,
) -> dict[str, torch.Tensor]:
    """Check an upload's keys, shapes and dtypes (float32); returns it.

    Values are checked for NaN/Inf by :func:`squared_distance`, which needs the same pass over the data anyway.

    Args:
        tensors: what the client uploaded (from :func:`decode_upload` or a shared-memory file).
        expected_shapes: name → shape of every tensor the client must upload densely (its trainable, unmasked
            tensors).
        masked_count: number of trainable entries in masked tensors (the length of ``MASKED_VALUES``), or None
            when no mask is active.

    Raises:
        ReplyRejected: missing or extra keys, wrong shapes or dtypes.
    """
    expected = set(expected_shapes) | ({MASKED_VALUES} if masked_count is not None else set())
    got = set(tensors)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise ReplyRejected(
            f"arrays do not match: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    for key, tensor in tensors.items():
        shape = (masked_count,) if key == MASKED_VALUES else expected_shapes[key]
        if tuple(tensor.shape) != tuple(shape):
            raise ReplyRejected(f"{key}: shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        if tensor.dtype != torch.float32:
            raise ReplyRejected(f"{key}: dtype {_dtype_name(tensor)}, expected float32")
    return dict(tensors)


def squared_distance(tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """‖tensors − reference‖² over all keys, in one pass; rejects NaN, Inf and values so large the norm overflows.

    This is both the NaN/Inf check of an upload and its term of the client-drift metric.
    """
    total = 0.0
    for key, value in tensors.items():
        distance = float(torch.dist(value, reference[key]))
        if not math.isfinite(distance):
            raise ReplyRejected(f"{key}: contains NaN or Inf (or values so large their norm overflows)")
        total += distance * distance
    return total
