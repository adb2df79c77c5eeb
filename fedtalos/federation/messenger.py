"""The server's side of the wire: which node holds which partition, how tensors travel, one round trip.

:class:`Messenger` owns the node registry, the weights transport and the send / collect / retry logic that every
phase's round uses; phases only say what to send (:class:`Request`) and what to do with the replies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedtalos.config import RunConfig
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.cohort import NodeRegistry
from fedtalos.federation.mask_sync import MASK_MISSING
from fedtalos.federation.timing import Delivery, overhead
from fedtalos.federation.transport import ServerTransport, choose, in_simulation
from fedtalos.phases import Callback, Unit
from fedtalos.task.memory import shared_memory_bytes

log = logging.getLogger(__name__)
SIMULATION_PULL_INTERVAL_S = 0.01  # seconds between looks for replies on the in-memory grid (Flower: 0.1)

ContentFor = Callable[[int, bool], RecordDict]  # (partition id, must include the mask bits) → message content
Accept = Callable[[int, RecordDict], ClientUpdate]  # (partition id, reply) → update; raises P.ReplyRejected


class RoundFailed(RuntimeError):
    """Too few clients answered a round, even after a retry; the last checkpoint is intact."""


@dataclass
class Request:
    """What a phase sends in one round: to whom, which message, and how a reply is checked.

    ``payload`` names the transport payload the content refers to (released once the replies are in).
    """

    cohort: list[int]
    message_type: str
    content_for: ContentFor
    accept: Accept
    payload: str


class Messenger:
    """Messages to and from the run's nodes, by partition id, for a Flower ``Grid``."""

    def __init__(self, config: RunConfig, grid: Grid, events: Callback) -> None:
        self.config = config
        self.grid = grid
        self.events = events
        if in_simulation(grid):
            # The in-memory grid looks for replies every 0.1 s, ~0.05 s of idle wait per round on average, which is
            # several % of a GPU round. Its poll is a dictionary look-up in this process: poll at 100 Hz.
            grid.pull_interval = SIMULATION_PULL_INTERVAL_S
        self.registry = NodeRegistry(config.num_clients, config.round_timeout)
        mode, base = choose(config.transport, grid, shared_memory_bytes(config))
        self.transport = ServerTransport(mode, run_key=config.result_hash(), base=base)
        self.simulation = in_simulation(grid)
        self.arrived: dict[int, float] = {}  # pid → when its last reply was seen (time.time())
        self.pushed_at = 0.0  # when the last messages were handed over (time.time())

    def connect(self) -> None:
        """Wait until every partition's node is registered (see :meth:`NodeRegistry.refresh`)."""
        self.registry.refresh(self.grid, wait_for_all=True)

    def close(self) -> None:
        self.transport.close()

    def expected_examples(self, pid: int) -> int | None:
        """The example count node ``pid`` registered (what its train replies must report)."""
        info = self.registry.node_of(pid)
        return info.num_examples if info else None

    def send(self, pids: list[int], content_for: ContentFor, message_type: str) -> tuple[dict, dict, int]:
        """Send to the nodes of ``pids``; returns (replies by pid, failure reasons by pid, bytes sent).

        A node that answers ``mask-missing`` is sent the message again at once, with the mask bits attached.
        """
        self.registry.refresh(self.grid)
        ok: dict[int, RecordDict] = {}
        failed: dict[int, str] = {}
        bytes_down = 0
        todo, with_mask = list(pids), False
        for _ in range(2):
            node_to_pid, messages = {}, []
            for pid in todo:
                info = self.registry.node_of(pid)
                if info is None:
                    failed[pid] = "not connected"
                    continue
                content = content_for(pid, with_mask)
                bytes_down += self.transport.payload_bytes(content)
                node_to_pid[info.node_id] = pid
                messages.append(Message(content, dst_node_id=info.node_id, message_type=message_type))
            if with_mask is False:
                self.pushed_at = time.time()
            for reply, arrived in self._exchange(messages) if messages else []:
                pid = node_to_pid.get(reply.metadata.src_node_id)
                if pid is None:
                    continue
                self.arrived[pid] = arrived
                if reply.has_error():
                    P.check_error_reply(reply.error.reason, f"{message_type} message", f"client {pid}")
                    failed[pid] = f"error: {reply.error.reason}"
                else:
                    ok[pid] = reply.content
                    failed.pop(pid, None)
            for pid in node_to_pid.values():
                if pid not in ok and pid not in failed:
                    failed[pid] = f"no reply within round-timeout = {self.config.round_timeout:g} s"
            todo = [pid for pid, reason in failed.items() if MASK_MISSING in reason]
            if not todo:
                break
            with_mask = True
        return ok, failed, bytes_down

    def _exchange(self, messages: list[Message]) -> list[tuple[Message, float]]:
        """``grid.send_and_receive``, with when each reply was seen (``time.time()``).

        On the in-memory grid this is the same push-then-poll loop as Flower's, written out so that each reply is
        stamped when it arrives (for the per-client timing, :mod:`fedtalos.federation.timing`); elsewhere all
        replies carry the time ``send_and_receive`` returned.
        """
        timeout = self.config.round_timeout
        if not self.simulation:
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
            now = time.time()
            return [(r, now) for r in replies]
        waiting = set(self.grid.push_messages(messages))
        deadline = time.time() + timeout if timeout is not None else None
        out: list[tuple[Message, float]] = []
        while waiting and (deadline is None or time.time() < deadline):
            for reply in self.grid.pull_messages(waiting):
                out.append((reply, time.time()))
                waiting.discard(reply.metadata.reply_to_message_id)
            if waiting:
                time.sleep(self.grid.pull_interval)
        return out

    def collect(self, unit: Unit, request: Request) -> tuple[list[ClientUpdate], dict[str, Any]]:
        """One round trip: replies checked by ``request.accept``, one retry, failure counts; ``after_replies``.

        Returns the accepted updates in partition-id order (a deterministic aggregate) and the round's counts:
        ``clients_ok``, ``clients_failed``, ``bytes_down``, ``bytes_up`` (payload bytes).

        Raises:
            RoundFailed: fewer than ``min-train-clients`` usable replies after the retry.
        """
        cohort, where = request.cohort, f"round {unit.phase}/{unit.index}"
        updates: dict[int, ClientUpdate] = {}
        failures: dict[int, str] = {}
        bytes_down = bytes_up = 0
        deliveries: dict[int, Delivery] = {}
        needed = min(self.config.min_train_clients, len(cohort))
        for attempt in range(2):
            todo = [p for p in cohort if p not in updates]
            ok, failures, sent = self.send(todo, request.content_for, request.message_type)
            bytes_down += sent
            pushed_at = self.pushed_at
            for pid, reply in sorted(ok.items()):
                accept_started = time.perf_counter()
                try:
                    updates[pid] = request.accept(pid, reply)
                except P.ReplyRejected as e:
                    failures[pid] = f"rejected: {e}"
                    bytes_up += P.message_bytes(reply)
                    continue
                stamps = reply.metric_records.get(P.METRICS, {})
                accept_s = time.perf_counter() - accept_started
                deliveries[pid] = Delivery(dict(stamps), self.arrived.get(pid, 0.0), accept_s)
                sizes = updates[pid].upload_bytes
                bytes_up += sizes if sizes is not None else P.message_bytes(reply)
            for pid, reason in sorted(failures.items()):
                log.warning("%s: client %d failed (%s)", where, pid, reason)
            if len(updates) >= needed:
                break
            if attempt == 0:
                log.warning(
                    "%s: only %d of %d clients usable (min-train-clients = %d); retrying once",
                    where,
                    len(updates),
                    len(cohort),
                    self.config.min_train_clients,
                )
        else:
            raise RoundFailed(
                f"{where}: only {len(updates)} of {len(cohort)} clients returned a usable reply after a "
                f"retry (min-train-clients = {self.config.min_train_clients}). Last failures: "
                + "; ".join(f"client {p}: {r}" for p, r in sorted(failures.items())[:5])
                + ". The last checkpoint is intact: fix the clients and run the same command to resume."
            )
        self.transport.done(request.payload)
        stats = {
            "clients_ok": len(updates),
            "clients_failed": len(cohort) - len(updates),
            "bytes_down": bytes_down,
            "bytes_up": bytes_up,
            **overhead(pushed_at, deliveries, clocks_shared=self.simulation),
        }
        self.events.after_replies(unit)
        return [updates[p] for p in sorted(updates)], stats
