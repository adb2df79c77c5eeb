"""The federated run on the server: phases of rounds over a resumable :class:`ServerState`.

One round = sample a cohort from (seed, phase, round) → send → validate replies → aggregate in partition-id
order → update the global model through the strategy → evaluate when due → log a metric row → checkpoint.
Killing the process at any point and starting the same command again continues after the last checkpoint and
ends bit-identical to an uninterrupted run.

Phases: ``head`` (step 0 of model editing: ridge or linear probing), ``calibration`` (the mask), ``train``
(FedAvg, sparse when a mask exists). A dense FedAvg run has only ``train``.
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
from fedtalos.editing.masks import gather_trainable, scatter_trainable
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate, aggregate
from fedtalos.federation.cohort import NodeRegistry, sample_cohort
from fedtalos.federation.mask_sync import MASK_MISSING, pack
from fedtalos.federation.state import ServerState
from fedtalos.federation.transport import ServerTransport, choose, in_simulation
from fedtalos.strategies import make_strategy
from fedtalos.task.lr_schedule import lr_at
from fedtalos.task.model import HEAD_PREFIX
from fedtalos.task.resources import Resources, get_resources
from fedtalos.testing import faults
from fedtalos.tracking.metrics import format_row, summarize_rows
from fedtalos.tracking.rundir import RunDir

log = logging.getLogger(__name__)
SIMULATION_PULL_INTERVAL_S = 0.01  # seconds between looks for replies on the in-memory grid (Flower: 0.1)

ContentFor = Callable[[int, bool], RecordDict]  # (pid, must include the mask) → message content


class RoundFailed(RuntimeError):
    """Too few clients answered a round, even after a retry; the last checkpoint is intact."""


@dataclass
class Phase:
    """A phase: its name, its number of rounds, the function running round ``r`` (1-based), whether to evaluate."""

    name: str
    rounds: int
    run_round: Callable[[int], dict[str, Any]]
    evaluates: bool = True


class FederatedServer:
    """Runs the phases of a federated run against a Flower ``Grid``."""

    def __init__(self, config: RunConfig, grid: Grid, run_dir: RunDir) -> None:
        from fedtalos.federation.editing import EditingRounds  # editing rounds use this module's helpers

        self.config = config
        self.grid = grid
        if in_simulation(grid):
            # The in-memory grid looks for replies every 0.1 s, ~0.05 s of idle wait per round on average, which is
            # several % of a GPU round. Its poll is a dictionary look-up in this process: poll at 100 Hz.
            grid.pull_interval = SIMULATION_PULL_INTERVAL_S
        self.run_dir = run_dir
        self.resources: Resources = get_resources(config, pretrained=True)
        self.strategy = make_strategy(config)
        self.registry = NodeRegistry(config.num_clients, config.round_timeout)
        self.editing = EditingRounds(self)
        self.transport = ServerTransport(choose(config.transport, grid), run_key=config.result_hash())
        self.metrics = run_dir.open_metrics()
        self.state = self._start_state()
        self.metrics.restore(self.state.rows)

    # ------------------------------------------------------------------------------------------------ state
    def _start_state(self) -> ServerState:
        checkpoint = self.run_dir.checkpoints.latest()
        if checkpoint is not None:
            state = ServerState.from_checkpoint(checkpoint)
            self.strategy.load_state_dict(state.strategy)
            log.info("resuming %s after round %d (%s phase)", self.run_dir.path.name, state.step, state.phase)
            return state
        # the built weights, not the cached model's: evaluation loads every round's global model into that one
        assert self.resources.initial_weights is not None, "get_resources(..., pretrained=True) keeps them"
        weights = {k: v.clone() for k, v in self.resources.initial_weights.items()}
        return ServerState(step=0, phase=self.phases()[0].name, phase_round=0, weights=weights)

    def _checkpoint(self, score: float | None) -> None:
        self.state.strategy = self.strategy.state_dict()
        store = self.run_dir.checkpoints
        store.fault_hook = lambda stage, step: faults.point(f"checkpoint:{stage}", step)
        store.save_async(self.state.step, self.state.tensors(), self.state.meta(), score=score)

    # ------------------------------------------------------------------------------------------------ phases
    def phases(self) -> list[Phase]:
        """The run's phases in order: [head] [calibration] train."""
        c = self.config
        phases = []
        if c.head == "ridge":
            phases.append(Phase("head", 1, self.editing.ridge_round))
        elif c.head == "probe":
            phases.append(Phase("head", c.probe_rounds, self.editing.probe_round))
        if c.editing:
            phases.append(
                Phase("calibration", self.editing.calibration_rounds(), self.editing.calibration_round, evaluates=False)
            )
        phases.append(Phase("train", c.num_server_rounds, self._train_round))
        return phases

    def run(self) -> dict[str, Any]:
        """Run (or continue) every phase; returns the summary written to ``summary.json``."""
        try:
            self.registry.refresh(self.grid, wait_for_all=True)
            phases = self.phases()
            names = [p.name for p in phases]
            for phase in phases[names.index(self.state.phase) :]:
                if self.state.phase != phase.name:
                    self.state.phase, self.state.phase_round = phase.name, 0
                while self.state.phase_round < phase.rounds:
                    self._round(phase, last=phase is phases[-1] and self.state.phase_round + 1 == phase.rounds)
            return self._finish()
        finally:
            self.transport.close()

    def _round(self, phase: Phase, last: bool) -> None:
        started = time.perf_counter()
        index = self.state.phase_round + 1
        step = self.state.step + 1
        faults.point("round-start", step)
        row = {"phase": phase.name, "round": index, "step": step}
        row.update(phase.run_round(index))
        score = None
        evaluated_at = time.perf_counter()
        if phase.evaluates and (index % self.config.eval_every == 0 or index == phase.rounds):
            faults.point("before-eval", step)
            row.update(self.evaluate_split("val"))
            score = row["val_acc"] if phase.name == "train" else None
            if last or self.config.test_every_eval:
                row.update(self.evaluate_split("test"))
            if self.config.federated_eval_fraction > 0:
                row.update(self._federated_evaluate())
        row["eval_s"] = time.perf_counter() - evaluated_at
        self.state.step, self.state.phase_round = step, index
        faults.point("before-checkpoint", step)
        checkpoint_at = time.perf_counter()
        self.state.rows.append(row)
        self._checkpoint(score)
        # timings are known only now; the next checkpoint carries them (they are not part of the results)
        row["checkpoint_s"] = time.perf_counter() - checkpoint_at
        row["wall_s"] = time.perf_counter() - started
        self.metrics.append(row)
        faults.point("after-checkpoint", step)
        log.info(format_row(row))

    # ------------------------------------------------------------------------------------------------ messaging
    def _send(self, pids: list[int], content_for: ContentFor, message_type: str) -> tuple[dict, dict, int]:
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
            replies = self.grid.send_and_receive(messages, timeout=self.config.round_timeout) if messages else []
            for reply in replies:
                pid = node_to_pid.get(reply.metadata.src_node_id)
                if pid is None:
                    continue
                if reply.has_error():
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

    def collect(
        self,
        phase: str,
        index: int,
        cohort: list[int],
        content_for: ContentFor,
        message_type: str,
        accept: Callable[[int, RecordDict], ClientUpdate],
    ) -> tuple[list[ClientUpdate], dict[str, Any]]:
        """One round trip to ``cohort``: validation (``accept`` raises ReplyRejected), one retry, failure counts."""
        updates: dict[int, ClientUpdate] = {}
        failures: dict[int, str] = {}
        bytes_down = bytes_up = 0
        for attempt in range(2):
            ok, failures, sent = self._send([p for p in cohort if p not in updates], content_for, message_type)
            bytes_down += sent
            for pid, reply in sorted(ok.items()):
                try:
                    updates[pid] = accept(pid, reply)
                except P.ReplyRejected as e:
                    failures[pid] = f"rejected: {e}"
                    bytes_up += P.message_bytes(reply)
                    continue
                sizes = updates[pid].upload_bytes
                bytes_up += sizes if sizes is not None else P.message_bytes(reply)
            for pid, reason in sorted(failures.items()):
                log.warning("round %s/%d: client %d failed (%s)", phase, index, pid, reason)
            if len(updates) >= min(self.config.min_train_clients, len(cohort)):
                break
            if attempt == 0:
                log.warning(
                    "round %s/%d: only %d of %d clients usable (min-train-clients = %d); retrying once",
                    phase,
                    index,
                    len(updates),
                    len(cohort),
                    self.config.min_train_clients,
                )
        else:
            raise RoundFailed(
                f"round {phase}/{index}: only {len(updates)} of {len(cohort)} clients returned a usable reply after a "
                f"retry (min-train-clients = {self.config.min_train_clients}). Last failures: "
                + "; ".join(f"client {p}: {r}" for p, r in sorted(failures.items())[:5])
                + ". The last checkpoint is intact: fix the clients and run the same command to resume."
            )
        stats = {
            "clients_ok": len(updates),
            "clients_failed": len(cohort) - len(updates),
            "bytes_down": bytes_down,
            "bytes_up": bytes_up,
        }
        faults.point("after-replies", self.state.step + 1)
        return [updates[p] for p in sorted(updates)], stats

    def expected_examples(self, pid: int) -> int | None:
        """The example count node ``pid`` registered (what its train replies must report)."""
        info = self.registry.node_of(pid)
        return info.num_examples if info else None

    # ------------------------------------------------------------------------------------------------ training
    def _train_round(self, index: int) -> dict[str, Any]:
        trainable = "all" if self.config.head == "train" else "backbone"
        lr = lr_at(self.config, index - 1, self.config.num_server_rounds)
        return self.train_round("train", index, trainable, lr)

    def train_round(self, phase: str, index: int, trainable: str, lr: float) -> dict[str, Any]:
        """A FedAvg round: clients train ``trainable`` ('all', 'head', 'backbone'); sparse when a mask exists."""
        weights, mask = self.state.weights, self.state.mask if phase == "train" else None
        round_config = {
            "phase": phase,
            "round": index,
            "server-round": self.state.step + 1,
            "lr": lr,
            "local-steps": self.config.local_steps,
            "trainable": trainable,
            **self.strategy.client_config(),
        }
        name = f"train-{self.state.step + 1}"
        entries, delivery = self.transport.outbound(weights, name)
        round_config.update(delivery)
        dense = {k: tuple(v.shape) for k, v in weights.items() if _is_trainable(k, trainable)}
        masked_count = None
        content_for: ContentFor
        if mask is None:
            plain = RecordDict({**entries, P.CONFIG: P.config_record(round_config)})
            content_for = lambda pid, force: plain  # noqa: E731
            reference = weights
        else:
            order = [k for k in weights if k in mask]
            bits, mid = pack(mask, order)
            round_config["mask-id"] = mid
            holders = self._mask_holders(mid)
            plain = RecordDict({**entries, P.CONFIG: P.config_record(round_config)})
            with_bits = RecordDict({**plain, P.MASK: P.encode_mask_bits(bits)})

            def content_for(pid: int, force: bool) -> RecordDict:
                if pid in holders and not force:
                    return plain
                if pid not in holders:
                    holders.append(pid)
                return with_bits

            dense = {k: s for k, s in dense.items() if k not in mask}
            masked_count = int(sum(int(m.sum()) for m in mask.values()))
            reference = {**{k: weights[k] for k in dense}, P.MASKED_VALUES: gather_trainable(weights, mask)}

        def accept(pid: int, reply: RecordDict) -> ClientUpdate:
            n = P.check_num_examples(reply.metric_records.get(P.METRICS, {}), self.expected_examples(pid))
            uploaded, size = self.transport.inbound(reply, name, pid)
            tensors = P.check_tensors(uploaded, dense, masked_count)
            distance = P.squared_distance(tensors, reference)
            reported = reply.metric_records[P.METRICS]
            metrics = {k: v for k in ("train-loss", "train-acc") if (v := P.check_metric(reported, k)) is not None}
            return ClientUpdate(pid, n, tensors, metrics, distance, size)

        cohort = sample_cohort(self.config.seed, phase, index, self.config.num_clients, self.config.cohort_size)
        sent_at = time.perf_counter()
        updates, stats = self.collect(phase, index, cohort, content_for, P.TRAIN, accept)
        received_at = time.perf_counter()
        result = aggregate(updates, reference)
        average = result.average
        if mask is not None:
            flat = average.pop(P.MASKED_VALUES)
            average.update({k: v for k, v in scatter_trainable(flat, mask, weights).items() if k in mask})
        self.strategy.apply(weights, average, self.state.step + 1)
        self.transport.done(name)
        faults.point("after-aggregate", self.state.step + 1)
        return {
            "lr": lr,
            "train_loss": result.metrics.get("train-loss"),
            "train_acc": result.metrics.get("train-acc"),
            "drift": result.drift,
            **stats,
            "clients_s": received_at - sent_at,
            "aggregate_s": time.perf_counter() - received_at,
        }

    def _mask_holders(self, mid: str) -> list[int]:
        """Partitions that were sent mask ``mid`` (kept in the checkpoint: their nodes cache it on disk, and a
        node that lost it answers mask-missing and gets it again)."""
        record = self.state.extras.get("mask_holders")
        if not record or record["mask_id"] != mid:
            record = self.state.extras["mask_holders"] = {"mask_id": mid, "pids": []}
        return record["pids"]

    # ------------------------------------------------------------------------------------------------ evaluation
    def evaluate_split(self, split: str) -> dict[str, float]:
        """Loss and accuracy of the global model on 'val' or 'test', on the server."""
        self.resources.load_weights(self.state.weights)
        return self.resources.evaluate(split)

    def _federated_evaluate(self) -> dict[str, float]:
        size = max(1, round(self.config.federated_eval_fraction * self.config.num_clients))
        cohort = sample_cohort(self.config.seed, "evaluate", self.state.step + 1, self.config.num_clients, size)
        name = f"evaluate-{self.state.step + 1}"
        entries, delivery = self.transport.outbound(self.state.weights, name)
        content = RecordDict({**entries, P.CONFIG: P.config_record(delivery)})
        ok, failed, _ = self._send(cohort, lambda pid, force: content, P.EVALUATE)
        self.transport.done(name)
        rows = []  # (n, loss, acc) of the replies that check out; the others are logged and left out
        for pid, reply in sorted(ok.items()):
            try:
                metrics = reply.metric_records.get(P.METRICS, {})
                n = P.check_num_examples(metrics, self.expected_examples(pid))
                loss, acc = P.check_metric(metrics, "eval-loss"), P.check_metric(metrics, "eval-acc")
                if loss is None or acc is None or not 0.0 <= acc <= 1.0:
                    raise P.ReplyRejected(f"eval-loss / eval-acc missing or out of range: {loss!r}, {acc!r}")
            except P.ReplyRejected as e:
                failed[pid] = f"rejected: {e}"
                continue
            rows.append((n, loss, acc))
        for pid, reason in sorted(failed.items()):
            log.warning("federated evaluation: client %d failed (%s)", pid, reason)
        total = sum(n for n, _, _ in rows)
        if not total:
            return {"fed_eval_clients_failed": len(cohort)}
        return {
            "fed_eval_loss": sum(n * loss for n, loss, _ in rows) / total,
            "fed_eval_acc": sum(n * acc for n, _, acc in rows) / total,
            "fed_eval_clients_failed": len(cohort) - len(rows),
        }

    # ------------------------------------------------------------------------------------------------ end
    def _finish(self) -> dict[str, Any]:
        self.run_dir.checkpoints.wait()
        rows = self.state.rows
        train_rows = [r for r in rows if r.get("phase") == "train"]  # the best is the best fine-tuned model
        summary = {
            "kind": "federated",
            "run_name": self.run_dir.path.name,
            "config_hash": self.config.result_hash(),
            "rounds": self.state.step,
            **summarize_rows(train_rows, index="round"),
            "wall_s": sum(r.get("wall_s", 0.0) for r in rows),
            "bytes_up": sum(r.get("bytes_up", 0) for r in rows),
            "bytes_down": sum(r.get("bytes_down", 0) for r in rows),
        }
        if self.state.mask is not None:
            summary["mask"] = self.editing.write_mask_outputs()
        self.run_dir.write_summary(summary)
        self.metrics.close()
        return summary


def _is_trainable(name: str, trainable: str) -> bool:
    is_head = name.startswith(HEAD_PREFIX)
    return trainable == "all" or (trainable == "head") == is_head
