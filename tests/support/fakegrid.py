"""An in-process Flower ``Grid``: messages go straight to the real ClientApp (no Ray), through pickling.

Replies come back in a shuffled order (the server must not depend on it). ``faulty`` maps a partition id to a
function ``(message, context) -> Message`` that replaces the ClientApp for that client, to simulate crashing,
slow or malicious clients.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from fedtalos.client_app import app as client_app
from fedtalos.server_app import main

Handler = Callable[[Message, Context], Message | None]


class FakeGrid(Grid):
    def __init__(
        self,
        num_nodes: int,
        run_config: Mapping[str, Any],
        faulty: Mapping[int, Handler] | None = None,
        node_id_offset: int = 1000,
        shuffle_seed: int = 0,
    ) -> None:
        self.run_config = dict(run_config)
        self.faulty = dict(faulty or {})
        self.contexts: dict[int, Context] = {}
        self.pid_of: dict[int, int] = {}
        for pid in range(num_nodes):
            node_id = node_id_offset + 7 * pid  # not equal to the partition ids, as in real runs
            self.pid_of[node_id] = pid
            self.contexts[node_id] = Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=self.run_config,
            )
        self.shuffle = random.Random(shuffle_seed)
        self.sent: list[Message] = []

    # -- the parts of Grid the server uses
    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            context = self.contexts[node_id]
            incoming = Message(
                pickle.loads(pickle.dumps(message.content)),
                dst_node_id=node_id,
                message_type=message.metadata.message_type,
            )
            handler = self.faulty.get(self.pid_of[node_id], client_app)
            try:
                reply = handler(incoming, context)
            except Exception as e:  # what Flower does with a raising ClientApp
                reply = Message(Error(code=1, reason=f"{type(e).__name__}: {e}"), reply_to=incoming)
            if reply is None:  # a client that never answers (timeout)
                continue
            reply = (
                Message(pickle.loads(pickle.dumps(reply.content)), reply_to=message)
                if not reply.has_error()
                else Message(reply.error, reply_to=message)
            )
            replies.append(reply)
        self.shuffle.shuffle(replies)
        return replies

    # -- not used by the server
    def set_run(self, run: Any) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Any:
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError


def run_server(run_config: dict[str, Any], grid: FakeGrid | None = None, **grid_kwargs: Any) -> tuple[Path, FakeGrid]:
    """The ServerApp's ``main`` against ``grid`` (default: a FakeGrid of ``grid_kwargs``); (run directory, grid)."""
    grid = grid if grid is not None else FakeGrid(run_config.get("num-clients", 10), run_config, **grid_kwargs)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    main(grid, context)
    return Path(run_config["output-root"]) / run_config["run-name"], grid
