"""The centralized run: one loop over the phases of :func:`fedtalos.run.phases.run_phases` (ridge or probe head,
calibration, train), an epoch at a time, over a resumable :class:`TrainState`.

An epoch is one shuffled pass over the train split, its batches from ``seeds.central_epoch_generator(seed, phase,
epoch)``: a run resumed inside an epoch rebuilds them and skips the steps done. After each epoch: validation when
due (the test split at the end), one metric row, a checkpoint (also every ``checkpoint-every-steps`` steps). Killed
anywhere and started again, a run ends bit-identical on the CPU. Its preflight, start, checkpoint encoding and end
are the federated run's too (:mod:`fedtalos.run`); fault injection stops at its ``central:<point>`` hooks.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedtalos.central.head_and_mask import calibrate, calibration_sample_count, fit_ridge_head
from fedtalos.central.schedulers import Scheduler, after_evaluation, after_step, current_lr, make_scheduler
from fedtalos.central.state import TrainState, capture_rng, restore_rng
from fedtalos.config import RunConfig
from fedtalos.config.kinds import for_kind
from fedtalos.editing.masks import mask_stats
from fedtalos.editing.optim import SparseSGDM
from fedtalos.editing.scoring import describe_model, model_record
from fedtalos.run.finish import finish_run
from fedtalos.run.phases import SENSITIVITY_RULES, PhaseSpec, Row, evaluation_due, remaining, run_phases
from fedtalos.run.start import start_weights
from fedtalos.seeds import central_epoch_generator, central_start_seed
from fedtalos.task.device import environment
from fedtalos.task.model import set_trainable
from fedtalos.task.resources import Resources, get_resources
from fedtalos.task.train import train_steps
from fedtalos.tracking.checkpoint import CheckpointStore
from fedtalos.tracking.hooks import run_hooks
from fedtalos.tracking.log_setup import progress, run_log
from fedtalos.tracking.mask_artifact import open_mask_path, record_mask_source
from fedtalos.tracking.mask_report import mask_title, write_mask_report
from fedtalos.tracking.metrics import format_row, read_rows
from fedtalos.tracking.rundir import (
    CHECKPOINTS,
    RunDir,
    already_finished_message,
    finished_summary,
    open_run_dir,
)

log = logging.getLogger(__name__)

KIND = "centralized"
# Progress-bar updates read the loss sums from the device: about this many times per epoch (a sync each).
PROGRESS_UPDATES = 10


class CentralizedTrainer:
    """Runs (or continues) the phases of one centralized run in ``run_dir``.

    Args:
        config: the validated run config.
        run_dir: from :func:`open_run_dir` with kind 'centralized'.
        evaluate_test: evaluate on the test split at the end (False for hyper-parameter search trials, which
            must never see the test split).
        on_evaluation: called with each fine-tuning row that has validation metrics, after its checkpoint is
            written (so it may raise to stop the run, e.g. Optuna pruning); rows restored from a checkpoint are
            replayed first, so the callback always sees the whole validation curve.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: RunDir,
        *,
        evaluate_test: bool = True,
        on_evaluation: Callable[[Row], None] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.evaluate_test = evaluate_test
        self.on_evaluation = on_evaluation
        self.resources: Resources = get_resources(config, pretrained=True)
        assert self.resources.initial_weights is not None, "get_resources(..., pretrained=True) keeps them"
        # mask-path: the mask and the frozen head come from the file (checked again: it may have changed since)
        self.mask_file = open_mask_path(config, self.resources.initial_weights) if config.mask_path else None
        self.metrics = run_dir.open_metrics()
        self.hooks = run_hooks(run_dir.checkpoints, prefix="central:")
        self.phases = run_phases(config, KIND)
        self.optimizer: torch.optim.Optimizer | None = None  # of the training phase in progress
        self.scheduler: Scheduler | None = None
        # the unit in progress: when it started and the seconds it took before a resume (its row's wall_s)
        self.unit_started, self.unit_carried_s = time.perf_counter(), 0.0
        self.state = self._start_state()
        self.mask_source = record_mask_source(run_dir.path, config, self.mask_file) if self.mask_file else None
        self.metrics.restore(self.state.rows)

    # ------------------------------------------------------------------------------------------------ state
    def _start_state(self) -> TrainState:
        checkpoint = self.run_dir.checkpoints.latest()
        if checkpoint is not None:
            state = TrainState.from_checkpoint(checkpoint)
            self.resources.load_weights(state.weights)
            state.weights = {}
            restore_rng(state.rng)
            log.info(
                "resuming %s: %s phase, epoch %d done, step %d of the next",
                self.run_dir.path.name,
                state.phase,
                state.epoch,
                state.step_in_epoch,
            )
            return state
        # The cached model may have been trained by an earlier run in this process: start from the built weights.
        weights, mask = start_weights(self.resources, self.mask_file)
        self.resources.load_weights(weights)
        torch.manual_seed(central_start_seed(self.config.seed))  # a fresh run never depends on the process's past
        return TrainState(saves=0, phase=self.phases[0].name, mask=mask)

    def _begin_unit(self, carried_s: float = 0.0) -> int:
        """Start an epoch's clock (``carried_s``: its seconds before a resume); returns its step for the hooks: the
        index of the next checkpoint as it begins."""
        step = self.state.saves + 1
        self.unit_started, self.unit_carried_s = time.perf_counter(), carried_s
        self.hooks("round-start", step)
        return step

    def _checkpoint(self, row: Row | None, score: float | None) -> None:
        """End an epoch (``row``: its metric row, logged once saved) or save inside one (None).

        The row's ``wall_s`` runs from its epoch's start to here (earlier attempts included; in the checkpoint);
        its ``checkpoint_s`` (the save) is known only afterwards, so the next checkpoint carries it.
        """
        step = self.state.saves + 1
        saving_at = time.perf_counter()
        if row is not None:
            self.state.rows.append(row)
            row["wall_s"] = self.unit_carried_s + saving_at - self.unit_started
        self.hooks("before-checkpoint", step)
        self._save(step, score)
        if row is not None:
            row["checkpoint_s"] = time.perf_counter() - saving_at
            self.metrics.append(row)
            log.info(format_row(row, index="epoch"))
        self.hooks("after-checkpoint", step)

    def _save(self, step: int, score: float | None) -> None:
        state = self.state
        state.weights = self.resources.weights()
        state.optimizer = self.optimizer.state_dict() if self.optimizer is not None else None
        state.scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
        state.rng = capture_rng()
        state.saves = step
        self.run_dir.checkpoints.save(step, state.tensors(), state.meta(), score=score)
        state.weights, state.optimizer = {}, None  # the live objects are the truth between checkpoints

    def _enter(self, phase: PhaseSpec) -> None:
        """Start ``phase``, or continue it where the checkpoint left it."""
        if self.state.phase != phase.name:
            self.state.phase, self.state.epoch = phase.name, 0
            self.state.optimizer = self.state.scheduler = None
            self.state.start_epoch()
        self.optimizer = self.scheduler = None  # built (and restored) by the phase's first epoch

    # ------------------------------------------------------------------------------------------------ phases
    def run(self) -> dict[str, Any]:
        """Run (or continue) every phase; returns the summary written to ``summary.json``."""
        try:
            if self.on_evaluation is not None:
                for row in self.state.rows:
                    if row["phase"] == "train" and row.get("val_acc") is not None:
                        self.on_evaluation(row)
            entered = None
            for phase, epoch in remaining(self.phases, self.state.phase, self.state.epoch):
                if phase is not entered:
                    self._enter(phase)
                    entered = phase
                if phase.name == "head" and not phase.trains:
                    self._ridge_epoch(phase, epoch)
                elif phase.name == "calibration":
                    self._calibration_epoch(epoch)
                else:
                    self._train_epoch(phase, epoch)
            return self._finish()
        finally:
            self.metrics.close()

    def _ridge_epoch(self, phase: PhaseSpec, epoch: int) -> None:
        step = self._begin_unit()
        scale = fit_ridge_head(self.resources, self.config)
        self.state.extras["logit_scale"] = scale
        row = {"phase": phase.name, "epoch": epoch, "step": self.state.global_step, "logit_scale": scale}
        self.hooks("before-eval", step)
        row.update(self.resources.evaluate("val"))
        self.state.epoch = epoch
        self._checkpoint(row, row["val_acc"])

    def _calibration_epoch(self, epoch: int) -> None:
        self._begin_unit()
        mask = calibrate(self.resources, self.config)
        self.state.mask = mask
        write_mask_report(self.run_dir.path, mask, mask_title(self.config))
        row = {"phase": "calibration", "epoch": epoch, "step": self.state.global_step, **mask_stats(mask)}
        if self.config.mask_rule in SENSITIVITY_RULES:  # what each calibration round scored (the same count)
            row["fisher_samples"] = calibration_sample_count(self.config, len(self.resources.train_idx))
        self.state.epoch = epoch
        self._checkpoint(row, None)

    # ------------------------------------------------------------------------------------------------ training
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the train split: ⌈N_train / batch-size⌉."""
        return math.ceil(len(self.resources.train_idx) / self.config.batch_size)

    def _setup_training(self, phase: PhaseSpec) -> None:
        """Set what trains, build the optimizer and scheduler, and load their checkpointed state if any."""
        c, model = self.config, self.resources.model
        set_trainable(model, phase.frozen)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        options = {"lr": c.lr, "momentum": c.momentum, "weight_decay": c.weight_decay}
        if phase.name == "train" and self.state.mask is not None:
            masks = {p: self.state.mask[n] for n, p in named if n in self.state.mask}
            self.optimizer = SparseSGDM(params, masks=masks, **options)
        else:
            self.optimizer = torch.optim.SGD(params, **options)
        self.scheduler = make_scheduler(self.optimizer, c, phase.units, self.steps_per_epoch())
        if self.state.optimizer is not None:
            self.optimizer.load_state_dict(self.state.optimizer)
            self.scheduler.load_state_dict(self.state.scheduler)
            self.state.optimizer = None

    def _segment_end(self, step: int, total: int) -> int:
        """The next step index at which the loop pauses: a mid-epoch checkpoint, a progress update or the end."""
        progress_every = max(1, total // PROGRESS_UPDATES)
        ends = [total, (step // progress_every + 1) * progress_every]
        every = self.config.checkpoint_every_steps
        if every:
            ends.append((step // every + 1) * every)
        return min(ends)

    def _train_epoch(self, phase: PhaseSpec, epoch: int) -> None:
        """Run (or finish) epoch ``epoch`` (= ``state.epoch + 1``) of a training phase, then evaluate, log and
        checkpoint."""
        if self.optimizer is None:
            self._setup_training(phase)
        assert self.optimizer is not None and self.scheduler is not None
        c, state, resources = self.config, self.state, self.resources
        optimizer, scheduler = self.optimizer, self.scheduler
        total = self.steps_per_epoch()
        started = time.perf_counter()
        if state.step_in_epoch == 0:
            state.start_epoch(current_lr(optimizer))
        wall_before = state.epoch_wall_s
        step = self._begin_unit(wall_before)
        images, labels = resources.split("train")
        generator = central_epoch_generator(c.seed, phase.name, epoch)
        # Rebuilding the epoch's batches and dropping the done ones replays the generator exactly (the dropped
        # batches are still augmented: the draws are interleaved with the images, and that costs little).
        batches = itertools.islice(resources.train_batches(images, labels, generator), state.step_in_epoch, None)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)

        bar = progress(total, state.step_in_epoch, f"{phase.name} epoch {epoch}/{phase.units}", c.progress)

        def step_done(_: int) -> None:
            state.global_step += 1
            state.step_in_epoch += 1
            after_step(scheduler)
            bar.update(1)
            self.hooks("step", state.global_step)

        try:
            while state.step_in_epoch < total:
                todo = self._segment_end(state.step_in_epoch, total) - state.step_in_epoch
                stats = train_steps(
                    resources.model,
                    optimizer,
                    itertools.islice(batches, todo),
                    loss_fn=loss_fn,
                    autocast_dtype=resources.dtype,
                    after_step=step_done,
                )
                if stats.steps != todo:
                    raise RuntimeError(f"epoch {epoch} ran out of batches after {state.step_in_epoch} of {total} steps")
                state.epoch_sums += stats
                bar.set_postfix(loss=f"{state.epoch_sums.loss:.4f}", acc=f"{state.epoch_sums.accuracy:.3f}")
                every = c.checkpoint_every_steps
                if every and state.step_in_epoch % every == 0 and state.step_in_epoch < total:
                    state.epoch_wall_s = wall_before + time.perf_counter() - started
                    self._checkpoint(None, None)
        finally:
            bar.close()

        sums = state.epoch_sums
        row: Row = {
            "phase": phase.name,
            "epoch": epoch,
            "step": state.global_step,
            "lr": state.epoch_lr,
            "train_loss": sums.loss_sum / sums.count,
            "train_acc": sums.correct / sums.count,
        }
        due = evaluation_due(c, phase, epoch)
        score = None
        if due:
            self.hooks("before-eval", step)
            row.update(resources.evaluate("val"))
            score = row["val_acc"]
            after_evaluation(scheduler, row["val_loss"])
            if self.evaluate_test and phase.name == "train" and (epoch == phase.units or c.test_every_eval):
                row.update(resources.evaluate("test"))
        state.epoch = epoch
        state.start_epoch()
        self._checkpoint(row, score)
        if due and phase.name == "train" and self.on_evaluation is not None:
            self.on_evaluation(row)

    # ------------------------------------------------------------------------------------------------ end
    def _finish(self) -> dict[str, Any]:
        state = self.state
        train = [r for r in state.rows if r["phase"] == "train"]
        head = [r for r in state.rows if r["phase"] == "head" and r.get("val_acc") is not None]
        extra = {"head": {k: head[-1].get(k) for k in ("val_loss", "val_acc", "logit_scale")}} if head else {}
        return finish_run(
            self.config,
            self.run_dir,
            KIND,
            rows=state.rows,
            mask=state.mask,
            counts={"epochs": train[-1]["epoch"] if train else 0, "steps": state.global_step},
            extra=extra,
            final_weights=self.resources.weights,
            initial_weights=self.resources.initial_weights,
            mask_file=self.mask_file,
            mask_source=self.mask_source,
        )


# ---------------------------------------------------------------------------------------------------------------


def run_centralized(
    config: RunConfig,
    *,
    evaluate_test: bool = True,
    on_evaluation: Callable[[Row], None] | None = None,
) -> tuple[RunDir, dict[str, Any]]:
    """Open (or reopen) the run directory of ``config`` and run it to the end; returns it and the summary.

    Call :func:`fedtalos.run.preflight.preflight` first to fail on bad input before a directory exists.
    """
    config = for_kind(config, KIND)  # the federated-only keys take no part in it
    config = config if config.run_name else config.replace(run_name=config.resolved_run_name(KIND))
    summary = finished_summary(config, KIND)
    if summary is not None:
        path = config.run_dir(KIND)
        log.info("%s", already_finished_message(path))
        if on_evaluation is not None:  # the caller sees the whole validation curve, as after a resume
            for row in read_rows(path):
                if row.get("phase") == "train" and row.get("val_acc") is not None:
                    on_evaluation(row)
        store = CheckpointStore(path / CHECKPOINTS, config.result_hash(), keep=config.checkpoint_keep)
        return RunDir(path=path, config=config, checkpoints=store, resumed=True), summary
    resources = get_resources(config, pretrained=True)  # the trainer's own, cached for it
    model = model_record(config, resources.model)
    environment_record = environment(resources.device, resources.dtype)
    with open_run_dir(config, KIND, environment=environment_record, model=model) as run_dir, run_log(run_dir.path):
        log.info("run directory: %s%s", run_dir.path, " (resuming)" if run_dir.resumed else "")
        log.info("%s", describe_model(model))
        trainer = CentralizedTrainer(config, run_dir, evaluate_test=evaluate_test, on_evaluation=on_evaluation)
        return run_dir, trainer.run()
