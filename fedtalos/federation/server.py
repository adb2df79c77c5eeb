"""The federated run on the server: its phases' rounds (``run.phases.run_phases``) over a resumable
:class:`ServerState`, each round checkpointed. Killing the process anywhere and running the same command again
continues after the last checkpoint and ends bit-identical on the CPU (``tests/reliability/test_kill_resume.py``);
on CUDA to float tolerance unless ``deterministic = true``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from flwr.serverapp import Grid

from fedtalos.config import RunConfig
from fedtalos.federation.calibration import Calibration
from fedtalos.federation.evaluation import evaluate_split, federated_evaluation
from fedtalos.federation.head import RidgeHead
from fedtalos.federation.state import ServerState
from fedtalos.federation.train_round import TrainRounds
from fedtalos.federation.wire import Wire
from fedtalos.run.finish import finish_run
from fedtalos.run.phases import PhaseSpec, Row, evaluation_due, remaining, run_phases
from fedtalos.run.start import start_weights
from fedtalos.strategies import make_strategy
from fedtalos.task.resources import Resources, get_resources
from fedtalos.tracking.hooks import run_hooks
from fedtalos.tracking.mask_artifact import open_mask_path, record_mask_source
from fedtalos.tracking.metrics import format_row
from fedtalos.tracking.rundir import RunDir

log = logging.getLogger(__name__)


class RoundPhase(Protocol):
    """A phase of federated rounds: ridge head, calibration or training rounds."""

    def run_round(self, state: ServerState, index: int, wire: Wire) -> Row:
        """Round ``index`` of the phase, from the cohort to the updated ``state``; the row's round values."""
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
        self.hooks = run_hooks(run_dir.checkpoints)
        self.wire = Wire(config, grid)
        self.specs = run_phases(config, "federated")
        self.phases = {spec.name: self._phase(spec) for spec in self.specs}
        self.state = self._start_state()
        self.mask_source = record_mask_source(run_dir.path, config, self.mask_file) if self.mask_file else None
        self.metrics.restore(self.state.rows)
        # time.time() stamps of this session's start-up, in summary.json (and, via record_launch, start-up_s)
        self.timeline: dict[str, float] = {"server_ready": time.time()}

    def _phase(self, spec: PhaseSpec) -> RoundPhase:
        if spec.trains:
            return TrainRounds(spec, self.config, self.hooks, self.strategy)
        if spec.name == "head":
            return RidgeHead(self.config, self.hooks, self.resources)
        return Calibration(spec, self.config, self.hooks, self.run_dir.path)

    def run(self) -> dict[str, Any]:
        """Run (or continue) every phase; returns the summary written to ``summary.json``."""
        try:
            self.wire.connect()
            self.timeline["nodes_connected"] = time.time()
            self._rounds()
            return self._finish()
        finally:
            self.wire.close()

    def _rounds(self) -> None:
        state, hooks = self.state, self.hooks
        for spec, index in remaining(self.specs, state.phase, state.phase_round):
            step, started = state.step + 1, time.perf_counter()
            hooks("round-start", step)
            row: Row = {"phase": spec.name, "round": index, "step": step}
            row |= self.phases[spec.name].run_round(state, index, self.wire)
            hooks("after-aggregate", step)
            evaluated_at = time.perf_counter()
            if evaluation_due(self.config, spec, index):
                hooks("before-eval", step)
                row |= self._evaluate(spec, index, step)
            row["eval_s"] = time.perf_counter() - evaluated_at
            state.advance(spec.name, index, row)
            # wall_s: the round up to its checkpoint; checkpoint_s: handing it over (the next checkpoint holds it)
            checkpoint_at = time.perf_counter()
            row["wall_s"] = checkpoint_at - started
            hooks("before-checkpoint", step)
            self._save(score=row.get("val_acc") if spec.name == "train" else None)
            row["checkpoint_s"] = time.perf_counter() - checkpoint_at
            self.metrics.append(row)
            log.info(format_row(row))
            hooks("after-checkpoint", step)
            self.timeline.setdefault("first_round_done", time.time())

    def _evaluate(self, spec: PhaseSpec, index: int, step: int) -> Row:
        """Validation; the test split at the run's last round (or every time, ``test-every-eval``); the clients'."""
        c, weights = self.config, self.state.weights
        row: Row = dict(evaluate_split(self.resources, weights, "val"))
        if (spec is self.specs[-1] and index == spec.units) or c.test_every_eval:
            row |= evaluate_split(self.resources, weights, "test")
        if c.federated_eval_fraction > 0:
            row |= federated_evaluation(c, self.wire, weights, step)
        return row

    def _save(self, score: float | None) -> None:
        """Checkpoint the state, in the background; ``score`` (validation accuracy) ranks the best checkpoint."""
        self.state.strategy = self.strategy.state_dict()
        self.run_dir.checkpoints.save_async(self.state.step, self.state.tensors(), self.state.meta(), score=score)

    # ------------------------------------------------------------------------------------------------ start, end
    def _start_state(self) -> ServerState:
        checkpoint = self.run_dir.checkpoints.latest()
        if checkpoint is not None:
            state = ServerState.from_checkpoint(checkpoint)
            self.strategy.load_state_dict(state.strategy)
            log.info("resuming %s after round %d (%s phase)", self.run_dir.path.name, state.step, state.phase)
            return state
        weights, mask = start_weights(self.resources, self.mask_file)
        return ServerState(step=0, phase=self.specs[0].name, phase_round=0, weights=weights, mask=mask)

    def _finish(self) -> dict[str, Any]:
        self.run_dir.checkpoints.wait()
        rows, weights = self.state.rows, self.state.weights
        summary = finish_run(
            self.config,
            self.run_dir,
            "federated",
            rows=rows,
            mask=self.state.mask,
            counts={"rounds": self.state.step},
            extra={
                "wall_s": sum(r.get("wall_s", 0.0) for r in rows),
                "bytes_up": sum(r.get("bytes_up", 0) for r in rows),
                "bytes_down": sum(r.get("bytes_down", 0) for r in rows),
                "timeline": self.timeline,
            },
            final_weights=lambda: weights,
            initial_weights=self.resources.initial_weights,
            mask_file=self.mask_file,
            mask_source=self.mask_source,
        )
        self.metrics.close()
        return summary
