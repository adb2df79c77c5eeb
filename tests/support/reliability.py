"""Helpers for the reliability tests: misbehaving clients, run outcomes, captured fedtalos logs.

A *faulty* client is the real ClientApp with its reply to some message types replaced: by an exception (the
ClientApp raised), by nothing (no reply before the timeout), by a Flower error message (the ClientApp process
died), or by a tampered reply. Outcomes are compared bit for bit: a run whose faulty client was rejected must end
exactly like a run in which that client never answered.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, Context, Error, Message

from fedtalos.client_app import app as client_app
from tests.support.fakegrid import FakeGrid, Handler

Tamper = Callable[[Message, Message], Message | None]  # (incoming message, real reply) → what the server gets


def faulty(message_types: set[str], tamper: Tamper) -> Handler:
    """A client that runs the real ClientApp and passes its replies to ``message_types`` through ``tamper``."""

    def handler(message: Message, context: Context) -> Message | None:
        reply = client_app(message, context)
        if message.metadata.message_type not in message_types:
            return reply
        return tamper(message, reply)

    return handler


def silent(message: Message, reply: Message) -> None:
    """No reply at all: to the server, a client that timed out."""
    return None


def raises(message: Message, reply: Message) -> Message:
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def crashed(message: Message, reply: Message) -> Message:
    """What Flower returns when the ClientApp process dies mid-message."""
    return Message(
        Error(code=1, reason="ClientAppException: the ClientApp process exited with code -9"), reply_to=message
    )


def npy_array(values: np.ndarray, dtype: str | None = None, shape: tuple[int, ...] | None = None) -> Array:
    """An ``Array`` holding ``values``, optionally *declaring* another dtype or shape than its bytes hold."""
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return Array(
        dtype=dtype or str(values.dtype),
        shape=tuple(shape if shape is not None else values.shape),
        stype="numpy.ndarray",
        data=buffer.getvalue(),
    )


def run_dir_of(config: dict[str, Any]) -> Path:
    return Path(config["output-root"]) / config["run-name"]


def train_messages(grid: FakeGrid, message_type: str = "train") -> list[int]:
    """Partition ids the grid delivered ``message_type`` messages to, in order."""
    return [grid.pid_of[m.metadata.dst_node_id] for m in grid.sent if m.metadata.message_type == message_type]
