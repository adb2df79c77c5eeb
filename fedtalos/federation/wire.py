"""One message exchange with a cohort, end to end: what goes out, push and poll, the mask resend, each reply's
check as it arrives, one retry, the byte and timing counts, and the close of the round's payload.

:class:`Wire` is the only caller of the transport's ``outbound`` / ``inbound`` / ``done``; phases and federated
evaluation say what to send (:class:`Outgoing`) and how a reply is checked (a function of a :class:`Reply`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedtalos.config import RunConfig
from fedtalos.federation import protocol as P
from fedtalos.federation.cohort import NodeRegistry
from fedtalos.federation.mask_sync import MASK_MISSING
from fedtalos.federation.timing import Delivery, Stopwatch, overhead
from fedtalos.federation.transport import ServerTransport, choose, in_simulation
from fedtalos.task.memory import shared_memory_bytes

log = logging.getLogger(__name__)
SIMULATION_PULL_INTERVAL_S = 0.01  # seconds between looks for replies on the in-memory grid (Flower: 0.1)

T = TypeVar("T")


class RoundFailed(RuntimeError):
    """Too few clients answered a round, even after a retry; the last checkpoint is intact."""


@dataclass
class Outgoing:
    """One message to each partition of a cohort.

    Attributes:
        message_type: ``protocol.TRAIN``, ``RIDGE``, ``FISHER`` or ``EVALUATE``.
        step: the round's step; it names the round's payload (``<message_type>-<step>``).
        cohort: the partition ids to ask, sorted.
        weights: the global weights every message delivers.
        config: the message's config record (the transport adds where the weights are).
        mask_bits: a bit-packed mask to attach (``mask_sync.pack``), or None.
        mask_holders: the partitions that already hold ``mask_bits`` (sent without them, unless they answer
            mask-missing); those sent the bits are added. None: every message carries the bits.
    """

    message_type: str
    step: int
    cohort: list[int]
    weights: Mapping[str, torch.Tensor]
    config: dict[str, Any]
    mask_bits: np.ndarray | None = None
    mask_holders: list[int] | None = None

    @property
    def payload(self) -> str:
        return f"{self.message_type}-{self.step}"


@dataclass
class Reply:
    """A client's answer, as a check sees it: its content, what its node registered, and its upload on demand."""

    pid: int
    content: RecordDict
    registered_examples: int | None  # the example count its node registered (None: unknown)
    transport: ServerTransport
    payload: str
    upload_bytes: int | None = None  # set once the upload is read
    cohort_examples: Mapping[int, int | None] = field(default_factory=dict)  # what each pid of the cohort registered

    @property
    def metrics(self) -> MetricRecord:
        return self.content.metric_records.get(P.METRICS, MetricRecord())

    def upload(self) -> dict[str, torch.Tensor]:
        """The tensors the client uploaded for this payload (from the message or the file the server named)."""
        tensors, self.upload_bytes = self.transport.inbound(self.content, self.payload, self.pid)
        return tensors


Check = Callable[[Reply], T]  # a reply → what the phase keeps of it; raises protocol.ReplyRejected


@dataclass
class Replies(Generic[T]):
    """The accepted replies of an exchange (by partition id, ascending) and its counts for the metric row."""

    accepted: dict[int, T]
    stats: dict[str, Any] = field(default_factory=dict)


class Wire:
    """Messages to and from the run's nodes, by partition id, over a Flower ``Grid``."""

    def __init__(self, config: RunConfig, grid: Grid) -> None:
        self.config = config
        self.grid = grid
        self.simulation = in_simulation(grid)
        if self.simulation:
            # The in-memory grid looks for replies every 0.1 s, ~0.05 s of idle wait per round on average, which is
            # several % of a GPU round. Its poll is a dictionary look-up in this process: poll at 100 Hz.
            grid.pull_interval = SIMULATION_PULL_INTERVAL_S
        self.registry = NodeRegistry(config.num_clients, config.round_timeout)
        mode, base = choose(config.transport, grid, shared_memory_bytes(config))
        self.transport = ServerTransport(mode, run_key=config.result_hash(), base=base)

    def connect(self) -> None:
        """Wait until every partition's node is registered (see :meth:`NodeRegistry.refresh`)."""
        self.registry.refresh(self.grid, wait_for_all=True)

    def close(self) -> None:
        self.transport.close()

    def expected_examples(self, pid: int) -> int | None:
        """The example count node ``pid`` registered (what its train replies must report)."""
        info = self.registry.node_of(pid)
        return info.num_examples if info else None

    def exchange(
        self, outgoing: Outgoing, check: Check[T], *, where: str, needed: int, clock: Stopwatch | None = None
    ) -> Replies[T]:
        """Send ``outgoing``, check each reply with ``check`` as it arrives (while the rest of the cohort trains),
        retry the missing ones once if fewer than ``needed`` passed; then close the round's payload.

        Returns the accepted replies and the row's counts: ``configure_s`` (``clock``'s lap once the messages are
        encoded: the round's preparation), ``clients_ok``, ``clients_failed``, ``bytes_down``, ``bytes_up`` (payload
        bytes), the per-client timing (:func:`~fedtalos.federation.timing.overhead`), ``after_last_reply_s`` (the
        checks left once the last reply arrived) and ``clients_s`` (the lap to the end of the exchange). Failures
        are logged as ``<where>: client <pid> failed (<reason>)``. Uploads read from shared memory are views of
        their slots: valid until this wire's next exchange.

        Raises:
            RoundFailed: fewer than ``needed`` usable replies after the retry.
        """
        clock = clock or Stopwatch()
        cohort, payload = outgoing.cohort, outgoing.payload
        entries, delivery = self.transport.outbound(outgoing.weights, payload, cohort)
        plain = RecordDict({**entries, P.CONFIG: P.config_record({**outgoing.config, **delivery})})
        bits = outgoing.mask_bits
        with_bits = None if bits is None else RecordDict({**plain, P.MASK: P.encode_mask_bits(bits)})
        configure_s = clock.lap()
        accepted: dict[int, T] = {}
        failed: dict[int, str] = {}
        deliveries: dict[int, Delivery] = {}
        rejected: dict[int, str] = {}  # of the current attempt
        registered = {pid: self.expected_examples(pid) for pid in cohort}
        bytes_down = bytes_up = 0
        pushed_at = 0.0

        def accept(pid: int, content: RecordDict, seen: float) -> None:
            """Check a reply as it arrives, while the rest of the cohort still trains."""
            nonlocal bytes_up
            reply = Reply(pid, content, self.expected_examples(pid), self.transport, payload, None, registered)
            checked_at = time.perf_counter()
            try:
                accepted[pid] = check(reply)
            except P.ReplyRejected as e:
                rejected[pid] = f"rejected: {e}"
                bytes_up += P.message_bytes(content)
                self.transport.reject(pid)  # its upload is not kept: the retry writes there
                return
            stamps = content.metric_records.get(P.METRICS, {})
            deliveries[pid] = Delivery(dict(stamps), seen, time.perf_counter() - checked_at)
            bytes_up += reply.upload_bytes if reply.upload_bytes is not None else P.message_bytes(content)

        for attempt in range(2):
            todo = [p for p in cohort if p not in accepted]
            rejected.clear()
            failed, sent, pushed_at = self._send(todo, outgoing, plain, with_bits, accept)
            failed.update(rejected)
            bytes_down += sent
            for pid, reason in sorted(failed.items()):
                log.warning("%s: client %d failed (%s)", where, pid, reason)
            if len(accepted) >= needed:
                break
            if attempt == 0:
                log.warning(
                    "%s: only %d of %d clients usable (min-train-clients = %d); retrying once",
                    where,
                    len(accepted),
                    len(cohort),
                    self.config.min_train_clients,
                )
        else:
            raise RoundFailed(
                f"{where}: only {len(accepted)} of {len(cohort)} clients returned a usable reply after a "
                f"retry (min-train-clients = {self.config.min_train_clients}). Last failures: "
                + "; ".join(f"client {p}: {r}" for p, r in sorted(failed.items())[:5])
                + ". The last checkpoint is intact: fix the clients and run the same command to resume."
            )
        self.transport.done(payload)
        stats = {
            "configure_s": configure_s,
            "clients_ok": len(accepted),
            "clients_failed": len(cohort) - len(accepted),
            "bytes_down": bytes_down,
            "bytes_up": bytes_up,
            **overhead(pushed_at, deliveries, clocks_shared=self.simulation),
            **({"after_last_reply_s": time.time() - max(d.arrived for d in deliveries.values())} if deliveries else {}),
            "clients_s": clock.lap(),
        }
        return Replies(dict(sorted(accepted.items())), stats)

    def _send(
        self,
        pids: list[int],
        outgoing: Outgoing,
        plain: RecordDict,
        with_bits: RecordDict | None,
        on_reply: Callable[[int, RecordDict, float], None],
    ) -> tuple[dict[int, str], int, float]:
        """Send to the nodes of ``pids`` and hand each reply without an error to ``on_reply`` (partition id,
        content, when it was seen; ``time.time()``) as it arrives: (failure reasons by pid, bytes sent, when the
        messages were handed over).

        A node that answers ``mask-missing`` is sent the message again at once, with the mask bits.
        """
        self.registry.refresh(self.grid)
        answered: set[int] = set()
        failed: dict[int, str] = {}
        bytes_down = 0
        pushed_at = 0.0
        todo, with_mask = list(pids), False
        for _ in range(2):
            node_to_pid, messages = {}, []
            for pid in todo:
                info = self.registry.node_of(pid)
                if info is None:
                    failed[pid] = "not connected"
                    continue
                content = self._content(pid, outgoing, plain, with_bits, with_mask)
                bytes_down += self.transport.payload_bytes(content)
                node_to_pid[info.node_id] = pid
                messages.append(Message(content, dst_node_id=info.node_id, message_type=outgoing.message_type))
            if not with_mask:
                pushed_at = time.time()
            for reply, seen in self._push_and_poll(messages) if messages else []:
                pid = node_to_pid.get(reply.metadata.src_node_id)
                if pid is None:
                    continue
                if reply.has_error():
                    P.check_error_reply(reply.error.reason, f"{outgoing.message_type} message", f"client {pid}")
                    failed[pid] = f"error: {reply.error.reason}"
                else:
                    answered.add(pid)
                    failed.pop(pid, None)
                    on_reply(pid, reply.content, seen)
            for pid in node_to_pid.values():
                if pid not in answered and pid not in failed:
                    failed[pid] = f"no reply within round-timeout = {self.config.round_timeout:g} s"
            todo = [pid for pid, reason in failed.items() if MASK_MISSING in reason]
            if not todo:
                break
            with_mask = True
        return failed, bytes_down, pushed_at

    @staticmethod
    def _content(
        pid: int, outgoing: Outgoing, plain: RecordDict, with_bits: RecordDict | None, with_mask: bool
    ) -> RecordDict:
        """The message for partition ``pid``: with the mask bits unless its node holds them (and is not asking)."""
        if with_bits is None:
            return plain
        holders = outgoing.mask_holders
        if holders is None:
            return with_bits
        if pid in holders and not with_mask:
            return plain
        if pid not in holders:
            holders.append(pid)
        return with_bits

    def _push_and_poll(self, messages: list[Message]) -> Iterator[tuple[Message, float]]:
        """``grid.send_and_receive``, each reply as it arrives, with when it was seen (``time.time()``).

        On the in-memory grid this is the same push-then-poll loop as Flower's, written out so that each reply is
        handed on (and stamped, for the per-client timing, :mod:`fedtalos.federation.timing`) when it arrives;
        elsewhere all replies come when ``send_and_receive`` returns, with its time.
        """
        timeout = self.config.round_timeout
        if not self.simulation:
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
            now = time.time()
            yield from ((r, now) for r in replies)
            return
        waiting = set(self.grid.push_messages(messages))
        deadline = time.time() + timeout if timeout is not None else None
        while waiting and (deadline is None or time.time() < deadline):
            for reply in self.grid.pull_messages(waiting):
                waiting.discard(reply.metadata.reply_to_message_id)
                yield reply, time.time()
            if waiting:
                time.sleep(self.grid.pull_interval)
