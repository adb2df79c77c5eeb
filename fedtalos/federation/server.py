"""The federated run on the server: phases of rounds over a resumable :class:`ServerState`.

One round = sample a cohort from (seed, phase, round) → send → validate replies → aggregate in partition-id
order → update the global model through the strategy → evaluate when due → log a metric row → checkpoint.
Killing the process at any point and starting the same command again continues after the last checkpoint and
ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedtalos import faults
from fedtalos.config import RunConfig
from fedtalos.federation import protocol as P
from fedtalos.federation.aggregate import ClientUpdate, aggregate
from fedtalos.federation.cohort import NodeRegistry, sample_cohort
from fedtalos.federation.state import ServerState
from fedtalos.strategies import make_strategy
from fedtalos.task.resources import Resources, get_resources
from fedtalos.task.schedules import lr_at
from fedtalos.tracking.metrics import MetricsLog, format_row, make_sinks, summarize_rows
from fedtalos.tracking.rundir import RunDir

log = logging.getLogger(__name__)


class RoundFailed(RuntimeError):
    """Too few clients answered a round, even after a retry; the last checkpoint is intact."""


@dataclass
class Replies:
    """The answers to one round's messages: contents of successful replies and reasons of failures, by pid."""

    ok: dict[int, RecordDict]
    failed: dict[int, str]
    bytes_down: int


@dataclass
class Phase:
    """A phase: its name, how many rounds it has, and the function that runs round ``r`` (1-based)."""

    name: str
    rounds: int
    run_round: Callable[[int], dict[str, Any]]


class FederatedServer:
    """Runs the phases of a federated run against a Flower ``Grid``."""

    def __init__(self, config: RunConfig, grid: Grid, run_dir: RunDir) -> None:
        self.config = config
        self.grid = grid
        self.run_dir = run_dir
        self.resources: Resources = get_resources(config, pretrained=True)
        self.strategy = make_strategy(config)
        self.registry = NodeRegistry(config.num_clients, config.round_timeout)
        sinks = make_sinks(
            run_dir.path,
            tensorboard=config.tensorboard,
            wandb=config.wandb,
            project=config.wandb_project,
            config=config.to_dict(),
        )
        self.metrics = MetricsLog(run_dir.path, sinks)
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
        return ServerState(step=0, phase=self.phases()[0].name, phase_round=0, weights=self.resources.weights())

    def _checkpoint(self, score: float | None) -> None:
        self.state.strategy = self.strategy.state_dict()
        store = self.run_dir.checkpoints
        store.fault_hook = lambda stage: faults.point(f"checkpoint:{stage}", self.state.step)
        store.save(self.state.step, self.state.tensors(), self.state.meta(), score=score)

    # ------------------------------------------------------------------------------------------------ phases
    def phases(self) -> list[Phase]:
        """The run's phases in order (model editing adds the head and calibration phases in front)."""
        return [Phase("train", self.config.num_server_rounds, self._train_round)]

    def run(self) -> dict[str, Any]:
        """Run (or continue) every phase; returns the summary written to ``summary.json``."""
        self.registry.refresh(self.grid, wait_for_all=True)
        phases = self.phases()
        names = [p.name for p in phases]
        for phase in phases[names.index(self.state.phase) :]:
            if self.state.phase != phase.name:
                self.state.phase, self.state.phase_round = phase.name, 0
            while self.state.phase_round < phase.rounds:
                self._round(phase)
        return self._finish()

    def _round(self, phase: Phase) -> None:
        started = time.perf_counter()
        index = self.state.phase_round + 1
        step = self.state.step + 1
        faults.point("round-start", step)
        row = {"phase": phase.name, "round": index, "step": step}
        row.update(phase.run_round(index))
        last = phase.name == self.phases()[-1].name and index == phase.rounds
        due = index % self.config.eval_every == 0 or index == phase.rounds
        score = None
        if due:
            faults.point("before-eval", step)
            row.update(self._evaluate("val"))
            score = row["val_acc"]
            if last or self.config.test_every_eval:
                row.update(self._evaluate("test"))
            if self.config.federated_eval_fraction > 0:
                row.update(self._federated_evaluate(phase.name, index))
        row["wall_s"] = time.perf_counter() - started
        self.state.step, self.state.phase_round = step, index
        self.state.rows.append(row)
        self.metrics.append(row)
        faults.point("before-checkpoint", step)
        self._checkpoint(score)
        faults.point("after-checkpoint", step)
        log.info(format_row(row))

    # ------------------------------------------------------------------------------------------------ rounds
    def _send(self, pids: list[int], content: RecordDict, message_type: str) -> Replies:
        """Send ``content`` to the nodes of ``pids``; collect replies until all answered or the timeout."""
        self.registry.refresh(self.grid)
        messages, node_to_pid, failed = [], {}, {}
        for pid in pids:
            info = self.registry.node_of(pid)
            if info is None:
                failed[pid] = "not connected"
                continue
            node_to_pid[info.node_id] = pid
            messages.append(Message(content, dst_node_id=info.node_id, message_type=message_type))
        replies = self.grid.send_and_receive(messages, timeout=self.config.round_timeout) if messages else []
        ok = {}
        for reply in replies:
            pid = node_to_pid.get(reply.metadata.src_node_id)
            if pid is None:
                continue
            if reply.has_error():
                failed[pid] = f"error: {reply.error.reason}"
            else:
                ok[pid] = reply.content
        for pid in node_to_pid.values():
            if pid not in ok and pid not in failed:
                failed[pid] = f"no reply within round-timeout = {self.config.round_timeout:g} s"
        return Replies(ok, failed, P.message_bytes(content) * len(messages))

    def _collect(
        self,
        phase: str,
        index: int,
        content: RecordDict,
        message_type: str,
        accept: Callable[[int, RecordDict], ClientUpdate],
    ) -> tuple[list[ClientUpdate], dict[str, Any]]:
        """One round trip to a cohort, with validation, one retry, and failure accounting."""
        cohort = sample_cohort(self.config.seed, phase, index, self.config.num_clients, self.config.cohort_size)
        updates: dict[int, ClientUpdate] = {}
        failures: dict[int, str] = {}
        bytes_down = bytes_up = 0
        for attempt in range(2):
            todo = [pid for pid in cohort if pid not in updates]
            replies = self._send(todo, content, message_type)
            bytes_down += replies.bytes_down
            failures = dict(replies.failed)
            for pid, reply in sorted(replies.ok.items()):
                bytes_up += P.message_bytes(reply)
                try:
                    updates[pid] = accept(pid, reply)
                except P.ReplyRejected as e:
                    failures[pid] = f"rejected: {e}"
            for pid, reason in sorted(failures.items()):
                log.warning("round %s/%d: client %d failed (%s)", phase, index, pid, reason)
            if len(updates) >= self.config.min_train_clients:
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
        return [updates[p] for p in sorted(updates)], stats

    def _train_round(self, index: int, phase: str = "train", trainable: str = "all") -> dict[str, Any]:
        lr = lr_at(self.config, index - 1, self.config.num_server_rounds)
        round_config = {
            "phase": phase,
            "round": index,
            "server-round": self.state.step + 1,
            "lr": lr,
            "local-steps": self.config.local_steps,
            "trainable": trainable,
            **self.strategy.client_config(),
        }
        content = RecordDict({P.ARRAYS: P.encode_tensors(self.state.weights), P.CONFIG: P.config_record(round_config)})
        shapes = {k: tuple(v.shape) for k, v in self.state.weights.items() if _trainable(k, trainable)}

        def accept(pid: int, reply: RecordDict) -> ClientUpdate:
            info = self.registry.node_of(pid)
            n = P.check_num_examples(reply.metric_records.get(P.METRICS, {}), info.num_examples if info else None)
            tensors = P.check_upload(reply, shapes, None)
            metrics = {k: float(v) for k, v in reply[P.METRICS].items() if k in ("train-loss", "train-acc")}
            return ClientUpdate(pid, n, tensors, metrics)

        updates, stats = self._collect(phase, index, content, P.TRAIN, accept)
        faults.point("after-replies", self.state.step + 1)
        result = aggregate(updates, self.state.weights)
        self.strategy.apply(self.state.weights, result.average, self.state.step + 1)
        faults.point("after-aggregate", self.state.step + 1)
        return {
            "lr": lr,
            "train_loss": result.metrics.get("train-loss"),
            "train_acc": result.metrics.get("train-acc"),
            "drift": result.drift,
            **stats,
        }

    # ------------------------------------------------------------------------------------------------ evaluation
    def _evaluate(self, split: str) -> dict[str, float]:
        self.resources.load_weights(self.state.weights)
        return self.resources.evaluate(split)

    def _federated_evaluate(self, phase: str, index: int) -> dict[str, float]:
        size = max(1, round(self.config.federated_eval_fraction * self.config.num_clients))
        cohort = sample_cohort(self.config.seed, "evaluate", self.state.step + 1, self.config.num_clients, size)
        content = RecordDict({P.ARRAYS: P.encode_tensors(self.state.weights)})
        replies = self._send(cohort, content, P.EVALUATE)
        rows = [r[P.METRICS] for _, r in sorted(replies.ok.items())]
        total = sum(int(m[P.NUM_EXAMPLES]) for m in rows)
        if not total:
            return {}
        return {
            "fed_eval_loss": sum(m["eval-loss"] * m[P.NUM_EXAMPLES] for m in rows) / total,
            "fed_eval_acc": sum(m["eval-acc"] * m[P.NUM_EXAMPLES] for m in rows) / total,
        }

    # ------------------------------------------------------------------------------------------------ end
    def _finish(self) -> dict[str, Any]:
        rows = self.state.rows
        summary = {
            "kind": "federated",
            "run_name": self.run_dir.path.name,
            "config_hash": self.config.result_hash(),
            "rounds": self.state.step,
            **summarize_rows(rows),
            "bytes_up": sum(r.get("bytes_up", 0) for r in rows),
            "bytes_down": sum(r.get("bytes_down", 0) for r in rows),
        }
        self.run_dir.write_summary(summary)
        self.metrics.close()
        return summary


def _trainable(name: str, trainable: str) -> bool:
    is_head = name.startswith("head.")
    return trainable == "all" or (trainable == "head") == is_head
