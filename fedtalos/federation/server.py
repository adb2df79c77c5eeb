"""The federated run on the server: its phases of rounds on the shared phase machine, over a resumable state.

One round = the phase configures a request (cohort sampled from (seed, phase, round), message, reply check) →
the :class:`~fedtalos.federation.messenger.Messenger` sends it and collects the checked replies → the phase
aggregates them into the :class:`ServerState` (in partition-id order) → evaluation when due → one metric row →
checkpoint. The round events (:mod:`fedtalos.phases`) carry checkpointing, timing, the metric log and, in tests,
fault injection. Killing the process at any point and starting the same command again continues after the last
checkpoint and ends bit-identical to an uninterrupted run on the CPU (``tests/reliability/test_kill_resume.py``).
On CUDA only to float tolerance (fused attention backwards and split reductions are nondeterministic), unless
``deterministic = true`` (README, "GPUs"); ``config.json`` records the device a run started on.

Phases: ``head`` (step 0 of model editing: :class:`~fedtalos.federation.head.RidgeHead`, or linear probing),
``calibration`` (:class:`~fedtalos.federation.calibration.Calibration`: the mask), ``train``
(:class:`~fedtalos.federation.fedavg.FedAvgRounds`, sparse when a mask exists). A dense FedAvg run has only
``train``, and so has a run with ``mask-path``: its mask and frozen head come from the mask file.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Protocol

from flwr.serverapp import Grid

from fedtalos.config import RunConfig
from fedtalos.federation.aggregate import ClientUpdate
from fedtalos.federation.calibration import Calibration
from fedtalos.federation.evaluation import evaluate_split, federated_evaluation
from fedtalos.federation.fedavg import FedAvgRounds
from fedtalos.federation.head import RidgeHead
from fedtalos.federation.messenger import Messenger, Request
from fedtalos.federation.state import ServerState
from fedtalos.phases import Phase, PhaseMachine, Row, Unit
from fedtalos.strategies import make_strategy
from fedtalos.task.resources import Resources, get_resources
from fedtalos.tracking.callbacks import run_callbacks
from fedtalos.tracking.mask_artifact import mask_file_summary, open_mask_path, record_mask_source
from fedtalos.tracking.mask_report import MASK_FILE, mask_title, mask_totals, write_mask_report
from fedtalos.tracking.metrics import format_row, summarize_rows
from fedtalos.tracking.rundir import RunDir

log = logging.getLogger(__name__)


class RoundPhase(Protocol):
    """A phase of federated rounds, in Flower's configure / aggregate vocabulary."""

    name: str  # the phase's name in the state, the metric rows and the checkpoints
    rounds: int
    evaluates: bool  # evaluate the global model at its eval-every rounds and its last round

    def configure(self, unit: Unit, state: ServerState) -> Request | None:
        """What to send this round (None: a round that needs no clients)."""
        ...

    def aggregate(self, unit: Unit, state: ServerState, updates: list[ClientUpdate]) -> Row:
        """Fold the accepted replies (partition-id order) into ``state``; returns the row's phase-specific values."""
        ...


class FederatedServer:
    """Runs (or continues) the phases of a federated run against a Flower ``Grid``, in ``run_dir``."""

    def __init__(self, config: RunConfig, grid: Grid, run_dir: RunDir) -> None:
        self.config = config
        self.run_dir = run_dir
        self.resources: Resources = get_resources(config, pretrained=True)
        assert self.resources.initial_weights is not None, "get_resources(..., pretrained=True) keeps them"
        # mask-path: the mask and the frozen head come from the file (checked again: it may have changed since)
        self.mask_file = open_mask_path(config, self.resources.initial_weights) if config.mask_path else None
        self.strategy = make_strategy(config)
        self.metrics = run_dir.open_metrics()
        self.callbacks = run_callbacks(self._save, self.metrics, format_row, run_dir.checkpoints)
        self.messenger = Messenger(config, grid, self.callbacks)
        self.round_phases = self._round_phases()
        self.machine = PhaseMachine(
            [Phase(p.name, p.rounds, partial(self._round, p)) for p in self.round_phases],
            self.callbacks,
            position=lambda: (self.state.phase, self.state.phase_round),
            enter=self._enter,
        )
        self.state = self._start_state()
        self.mask_source = record_mask_source(run_dir.path, config, self.mask_file) if self.mask_file else None
        self.metrics.restore(self.state.rows)
        # time.time() stamps of this session's start-up, in summary.json (and, via record_launch, start-up_s)
        self.timeline: dict[str, float] = {"server_ready": time.time()}

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
        state = ServerState(step=0, phase=self.round_phases[0].name, phase_round=0, weights=weights)
        if self.mask_file is not None:  # step 0 and calibration were done elsewhere: their results, from the file
            weights.update({k: v.clone() for k, v in self.mask_file.head.items()})
            state.mask = {k: m.clone() for k, m in self.mask_file.mask.items()}
        return state

    def _save(self, step: int, score: float | None) -> None:
        self.state.strategy = self.strategy.state_dict()
        self.run_dir.checkpoints.save_async(step, self.state.tensors(), self.state.meta(), score=score)

    def _enter(self, phase: Phase, fresh: bool) -> None:
        if fresh:
            self.state.phase, self.state.phase_round = phase.name, 0

    # ------------------------------------------------------------------------------------------------ phases
    def _round_phases(self) -> list[RoundPhase]:
        """The run's phases in order: [head] [calibration] train."""
        c, m = self.config, self.messenger
        fedavg = partial(FedAvgRounds, config=c, messenger=m, strategy=self.strategy)
        phases: list[RoundPhase] = []
        if c.head == "ridge":
            phases.append(RidgeHead(c, m, self.resources))
        elif c.head == "probe":
            phases.append(fedavg("head", c.probe_rounds, stream="probe", trainable="head", sparse=False))
        if c.editing:
            phases.append(Calibration(c, m, self.run_dir.path))
        trainable = "backbone" if c.head_frozen else "all"
        phases.append(fedavg("train", c.num_server_rounds, stream="train", trainable=trainable, sparse=True))
        return phases

    def run(self) -> dict[str, Any]:
        """Run (or continue) every phase; returns the summary written to ``summary.json``."""
        try:
            self.messenger.connect()
            self.timeline["nodes_connected"] = time.time()
            self.machine.run()
            return self._finish()
        finally:
            self.messenger.close()

    def _round(self, phase: RoundPhase, index: int) -> None:
        c = self.config
        unit = Unit(phase.name, index, self.state.step + 1)
        self.callbacks.on_round_start(unit)
        row: Row = {"phase": phase.name, "round": index, "step": unit.step}
        configured_at = time.perf_counter()
        request = phase.configure(unit, self.state)
        row["configure_s"] = time.perf_counter() - configured_at
        updates: list[ClientUpdate] = []
        if request is not None:
            sent_at = time.perf_counter()
            updates, stats = self.messenger.collect(unit, request)
            row.update(stats, clients_s=time.perf_counter() - sent_at)
        aggregated_at = time.perf_counter()
        row.update(phase.aggregate(unit, self.state, updates))
        row["aggregate_s"] = time.perf_counter() - aggregated_at
        self.callbacks.after_aggregate(unit)
        score = None
        evaluated_at = time.perf_counter()
        if phase.evaluates and (index % c.eval_every == 0 or index == phase.rounds):
            self.callbacks.before_evaluate(unit)
            row.update(evaluate_split(self.resources, self.state.weights, "val"))
            score = row["val_acc"] if phase.name == "train" else None
            last = phase is self.round_phases[-1] and index == phase.rounds
            if last or c.test_every_eval:
                row.update(evaluate_split(self.resources, self.state.weights, "test"))
            if c.federated_eval_fraction > 0:
                row.update(federated_evaluation(c, self.messenger, self.state.weights, unit.step))
        row["eval_s"] = time.perf_counter() - evaluated_at
        self.state.step, self.state.phase_round = unit.step, index
        self.state.rows.append(row)
        self.machine.checkpoint(unit.step, row, score)
        self.timeline.setdefault("first_round_done", time.time())

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
            "timeline": self.timeline,
        }
        if self.state.mask is not None:
            summary["mask"] = mask_totals(self.state.mask)
            if not (self.run_dir.path / MASK_FILE).is_file():  # e.g. deleted by hand: the checkpoint has it
                write_mask_report(self.run_dir.path, self.state.mask, mask_title(self.config, self.mask_file))
        weights = self.state.weights
        summary |= mask_file_summary(
            self.config, self.state.mask, self.mask_source, lambda: weights, self.resources.initial_weights, "federated"
        )
        self.run_dir.write_summary(summary)
        self.metrics.close()
        return summary
