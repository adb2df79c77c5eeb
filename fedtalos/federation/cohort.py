"""Who takes part: the node ↔ partition registry and the seeded cohort of each round.

Node ids change from run to run, partition ids do not: the server asks each node its partition once
(``query.identity``) and draws cohorts as a pure function of (seed, stream, round) over partition ids, so a resumed
run replays the same cohorts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedtalos.config import RunConfig
from fedtalos.federation import protocol as P
from fedtalos.seeds import calibration_cohort_rng, cohort_rng

log = logging.getLogger(__name__)


def sample_cohort(seed: int, stream: str, round_index: int, num_clients: int, size: int) -> list[int]:
    """``size`` distinct partition ids out of ``num_clients``, sorted; a pure function of its arguments."""
    return _choose(cohort_rng(seed, stream, round_index), num_clients, size)


def calibration_cohort(config: RunConfig, round_index: int) -> list[int]:
    """The partition ids that score in calibration round ``round_index``, sorted: one cohort for every round of the
    calibration (TaLoS re-scores the same data), or a fresh one per round with ``calibration-redraw``."""
    rng = calibration_cohort_rng(config.seed, round_index if config.calibration_redraw else None)
    return _choose(rng, config.num_clients, config.calibration_cohort_size)


def _choose(rng: np.random.Generator, num_clients: int, size: int) -> list[int]:
    if not 1 <= size <= num_clients:
        raise ValueError(f"cohort size {size} must be in [1, {num_clients}]")
    return sorted(int(p) for p in rng.choice(num_clients, size=size, replace=False))


WAIT_POLL_S = 0.25  # seconds between looks for new nodes while waiting for all (each look delays start-up)


class RegistryError(RuntimeError):
    """The connected nodes do not form the federation the run config describes."""


@dataclass
class NodeInfo:
    """What a node said about itself at registration."""

    node_id: int
    num_examples: int


class NodeRegistry:
    """partition id → the node that holds it, for the K partitions of the run."""

    def __init__(self, num_clients: int, timeout: float) -> None:
        self.num_clients = num_clients
        self.timeout = timeout
        self.nodes: dict[int, NodeInfo] = {}
        self._known_node_ids: set[int] = set()
        self._failed: dict[int, float] = {}  # node id → when it last failed to identify itself

    def node_of(self, pid: int) -> NodeInfo | None:
        """The node holding partition ``pid``, if it is registered."""
        return self.nodes.get(pid)

    def refresh(self, grid: Grid, wait_for_all: bool = False, wait_seconds: float = 300.0) -> None:
        """Register nodes that are new since the last call; forget nodes that left.

        With ``wait_for_all`` wait (up to ``wait_seconds``) until all K partitions are registered, and check that
        the federation matches the run config.
        """
        deadline = time.monotonic() + wait_seconds
        logged_at = time.monotonic()
        while True:
            connected = set(grid.get_node_ids())
            gone = self._known_node_ids - connected
            if gone:
                self.nodes = {pid: info for pid, info in self.nodes.items() if info.node_id not in gone}
                self._known_node_ids -= gone
            # a node that failed to identify itself is asked again only after a while, and reported once
            now = time.monotonic()
            new = sorted(n for n in connected - self._known_node_ids if now - self._failed.get(n, -1e9) > 30.0)
            if new:
                self._register(grid, new)
            if not wait_for_all or len(self.nodes) >= self.num_clients:
                break
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"only {len(self.nodes)} of num-clients = {self.num_clients} partitions are connected after "
                    f"{wait_seconds:.0f} s. In simulation, start with --federation-config "
                    f'"num-supernodes={self.num_clients}" (or set num-clients to the number of SuperNodes).'
                )
            if time.monotonic() - logged_at >= 30.0:
                logged_at = time.monotonic()
                log.info("waiting for nodes: %d of %d partitions registered", len(self.nodes), self.num_clients)
            time.sleep(WAIT_POLL_S)

    def _register(self, grid: Grid, node_ids: Iterable[int]) -> None:
        messages = [Message(RecordDict(), dst_node_id=nid, message_type=P.IDENTITY) for nid in node_ids]
        replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        for reply in replies:
            nid = reply.metadata.src_node_id
            if reply.has_error():
                P.check_error_reply(reply.error.reason, "identifying the nodes", f"node {nid}")
                if nid not in self._failed:
                    log.warning("node %d did not identify itself (asked again every 30 s): %s", nid, reply.error.reason)
                self._failed[nid] = time.monotonic()
                continue
            self._failed.pop(nid, None)
            metrics = reply.content.metric_records.get(P.METRICS, {})
            pid, count = metrics.get("partition-id"), metrics.get("num-partitions")
            if count != self.num_clients:
                raise RegistryError(
                    f"node {nid} holds partition {pid} of {count}, but num-clients = {self.num_clients}: the "
                    f"federation has {count} partitions. In simulation, start with --federation-config "
                    f'"num-supernodes={self.num_clients}" (or set num-clients={count}).'
                )
            pid = int(pid)
            if pid in self.nodes and self.nodes[pid].node_id != nid and self.nodes[pid].node_id in self._known_node_ids:
                raise RegistryError(f"nodes {self.nodes[pid].node_id} and {nid} both claim partition {pid}")
            self.nodes[pid] = NodeInfo(node_id=nid, num_examples=int(metrics.get(P.NUM_EXAMPLES, 0)))
            self._known_node_ids.add(nid)
