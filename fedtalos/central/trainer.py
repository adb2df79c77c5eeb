"""The centralized run: phases of epochs over a resumable :class:`TrainState`.

Phases, in order (the federated server has the same ones, as rounds):

- ``head`` (only with ``head = ridge | probe``): 'ridge' = the closed-form head on train-split features with
  a temperature fitted on the validation split (one step); 'probe' = ``probe-rounds`` epochs of SGD on the head
  alone, the backbone frozen.
- ``calibration`` (only with ``mask-rule``): the mask from the train split (one step); ``mask.npz``, the density
  table and its figure go into the run directory.
- ``train``: ``epochs`` epochs of SGD with momentum — SparseSGDM with the mask when editing — with the head
  frozen when step 0 produced it, and only the head trained with ``freeze = backbone``.

With ``mask-path`` the run has only ``train``: SparseSGDM with the mask file's mask, its head loaded and frozen
(``tracking/mask_artifact.py``). ``mask-save-path`` writes an editing run's mask file at the end (``epochs = 0``:
a run that only edits, ``fedtalos edit --central``).

An epoch is one shuffled pass over the train split (train minus validation; the last batch may be smaller). Its
order and augmentation come from ``seeds.central_epoch_generator(seed, phase, epoch)``, a pure function of those, so a
run resumed in the middle of an epoch rebuilds that epoch's batches and skips the steps already done. After each
epoch: evaluate on the validation split when due (every ``eval-every`` epochs and at a phase's last epoch; the
test split at the very end, or at every evaluation with ``test-every-eval``), log one metric row, checkpoint.
``checkpoint-every-steps = N`` also checkpoints every N steps inside an epoch. Killing the process anywhere and
running the same command again continues from the last checkpoint and ends bit-identical on the CPU.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fedtalos.central.head_and_mask import calibrate, calibration_sample_count, fit_ridge_head
from fedtalos.central.schedulers import Scheduler, after_evaluation, after_step, current_lr, make_scheduler
from fedtalos.central.state import TrainState, add_stats, capture_rng, empty_partial, restore_rng
from fedtalos.config import RunConfig
from fedtalos.editing import SparseSGDM
from fedtalos.editing.masks import SENSITIVITY_RULES
from fedtalos.editing.scoring import describe_model, model_record
from fedtalos.phases import Phase, PhaseMachine, Row, Unit
from fedtalos.seeds import central_epoch_generator, central_start_seed
from fedtalos.task.device import environment
from fedtalos.task.model import set_trainable
from fedtalos.task.resources import Resources, get_resources
from fedtalos.task.train import train_steps
from fedtalos.tracking.callbacks import run_callbacks
from fedtalos.tracking.mask_artifact import check_mask_files, mask_file_summary, open_mask_path, record_mask_source
from fedtalos.tracking.mask_report import MASK_FILE, mask_title, mask_totals, write_mask_report
from fedtalos.tracking.metrics import format_row, summarize_rows
from fedtalos.tracking.plots import plot_run
from fedtalos.tracking.rundir import RunDir, open_run_dir, validate_output_root

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
        self.optimizer: torch.optim.Optimizer | None = None  # of the training phase in progress
        self.scheduler: Scheduler | None = None
        line = partial(format_row, index="epoch")
        self.callbacks = run_callbacks(self._save, self.metrics, line, run_dir.checkpoints, fault_prefix="central:")
        self.machine = PhaseMachine(
            self.phases(),
            self.callbacks,
            position=lambda: (self.state.phase, self.state.epoch),
            enter=self._enter,
        )
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
        assert self.resources.initial_weights is not None, "get_resources(..., pretrained=True) keeps them"
        self.resources.load_weights(
            {**self.resources.initial_weights, **(self.mask_file.head if self.mask_file else {})}
        )
        torch.manual_seed(central_start_seed(self.config.seed))  # a fresh run never depends on the process's past
        state = TrainState(saves=0, phase=self.machine.phases[0].name)
        if self.mask_file is not None:
            state.mask = {k: m.clone() for k, m in self.mask_file.mask.items()}
            state.extras["mask"] = mask_totals(state.mask)
        return state

    def _checkpoint(self, row: Row | None, score: float | None) -> None:
        """End an epoch (``row``: its metric row) or save inside one (None), through the phase machine."""
        if row is not None:
            self.state.rows.append(row)
        self.machine.checkpoint(self.state.saves + 1, row, score)

    def _save(self, step: int, score: float | None) -> None:
        state = self.state
        state.weights = self.resources.weights()
        state.optimizer = self.optimizer.state_dict() if self.optimizer is not None else None
        state.scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
        state.rng = capture_rng()
        state.saves = step
        self.run_dir.checkpoints.save(step, state.tensors(), state.meta(), score=score)
        state.weights, state.optimizer = {}, None  # the live objects are the truth between checkpoints

    def _enter(self, phase: Phase, fresh: bool) -> None:
        if fresh:
            self.state.phase, self.state.epoch, self.state.step_in_epoch = phase.name, 0, 0
            self.state.optimizer = self.state.scheduler = None
            self.state.partial = empty_partial()
        self.optimizer = self.scheduler = None  # built (and restored) by the phase's first epoch

    def _start_unit(self, phase: str, carried_s: float = 0.0) -> Unit:
        unit = Unit(phase, self.state.epoch + 1, self.state.saves + 1, carried_s)
        self.callbacks.on_round_start(unit)
        return unit

    # ------------------------------------------------------------------------------------------------ phases
    def phases(self) -> list[Phase]:
        """The run's phases in order (model editing adds the head and calibration phases in front)."""
        c = self.config
        phases = []
        if c.head == "ridge":
            phases.append(Phase("head", 1, self._ridge_epoch))
        elif c.head == "probe":
            phases.append(Phase("head", c.probe_rounds, partial(self._train_epoch, "head", c.probe_rounds)))
        if c.editing:
            phases.append(Phase("calibration", 1, self._calibration_epoch))
        phases.append(Phase("train", c.epochs, partial(self._train_epoch, "train", c.epochs)))
        return phases

    def run(self) -> dict[str, Any]:
        """Run (or continue) every phase; returns the summary written to ``summary.json``."""
        try:
            if self.on_evaluation is not None:
                for row in self.state.rows:
                    if row["phase"] == "train" and row.get("val_acc") is not None:
                        self.on_evaluation(row)
            self.machine.run()
            return self._finish()
        finally:
            self.metrics.close()

    def _ridge_epoch(self, index: int) -> None:
        unit = self._start_unit("head")
        scale = fit_ridge_head(self.resources, self.config)
        self.state.extras["logit_scale"] = scale
        row = {"phase": "head", "epoch": index, "step": self.state.global_step, "logit_scale": scale}
        self.callbacks.before_evaluate(unit)
        row.update(self.resources.evaluate("val"))
        self.state.epoch = index
        self._checkpoint(row, row["val_acc"])

    def _calibration_epoch(self, index: int) -> None:
        self._start_unit("calibration")
        mask = calibrate(self.resources, self.config)
        self.state.mask = mask
        self.state.extras["mask"] = mask_totals(mask)
        write_mask_report(self.run_dir.path, mask, mask_title(self.config))
        row = {"phase": "calibration", "epoch": index, "step": self.state.global_step, **self.state.extras["mask"]}
        if self.config.mask_rule in SENSITIVITY_RULES:  # what each calibration round scored (the same count each)
            row["fisher_samples"] = calibration_sample_count(self.config, len(self.resources.train_idx))
        self.state.epoch = index
        self._checkpoint(row, None)

    # ------------------------------------------------------------------------------------------------ training
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the train split: ⌈N_train / batch-size⌉."""
        return math.ceil(len(self.resources.train_idx) / self.config.batch_size)

    def _setup_training(self, phase: str, epochs: int) -> None:
        """Set what trains, build the optimizer and scheduler, and load their checkpointed state if any."""
        c, model = self.config, self.resources.model
        if phase == "head":
            frozen = "backbone"  # linear probing
        elif c.head_frozen:
            frozen = "head"  # the step-0 head (or the mask file's) stays frozen
        else:
            frozen = c.freeze
        set_trainable(model, frozen)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        options = {"lr": c.lr, "momentum": c.momentum, "weight_decay": c.weight_decay}
        if phase == "train" and self.state.mask is not None:
            masks = {p: self.state.mask[n] for n, p in named if n in self.state.mask}
            self.optimizer = SparseSGDM(params, masks=masks, **options)
        else:
            self.optimizer = torch.optim.SGD(params, **options)
        self.scheduler = make_scheduler(self.optimizer, c, epochs, self.steps_per_epoch())
        if self.state.optimizer is not None:
            self.optimizer.load_state_dict(self.state.optimizer)
            self.scheduler.load_state_dict(self.state.scheduler)
            self.state.optimizer = None

    def _segment_end(self, step: int, total: int) -> int:
        """The next step index at which the loop pauses: a mid-epoch checkpoint, a progress update or the end."""
        ends = [total, (step // self._progress_every(total) + 1) * self._progress_every(total)]
        every = self.config.checkpoint_every_steps
        if every:
            ends.append((step // every + 1) * every)
        return min(ends)

    @staticmethod
    def _progress_every(total: int) -> int:
        return max(1, total // PROGRESS_UPDATES)

    def _train_epoch(self, phase: str, epochs: int, epoch: int) -> None:
        """Run (or finish) epoch ``epoch`` (= ``state.epoch + 1``) of a training phase, then evaluate, log and
        checkpoint."""
        if self.optimizer is None:
            self._setup_training(phase, epochs)
        assert self.optimizer is not None and self.scheduler is not None
        c, state, resources = self.config, self.state, self.resources
        optimizer, scheduler = self.optimizer, self.scheduler
        total = self.steps_per_epoch()
        started = time.perf_counter()
        if state.step_in_epoch == 0:
            state.partial = empty_partial()
            state.partial["lr"] = current_lr(optimizer)
        wall_before = state.partial["wall_s"]
        unit = self._start_unit(phase, wall_before)
        images, labels = resources.split("train")
        generator = central_epoch_generator(c.seed, phase, epoch)
        # Rebuilding the epoch's batches and dropping the done ones replays the generator exactly (the dropped
        # batches are still augmented: the draws are interleaved with the images, and that costs little).
        batches = itertools.islice(resources.train_batches(images, labels, generator), state.step_in_epoch, None)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)

        bar = tqdm(
            total=total,
            initial=state.step_in_epoch,
            desc=f"{phase} epoch {epoch}/{epochs}",
            unit="step",
            disable=not c.progress,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.1 if sys.stderr.isatty() else 30.0,  # a log file gets a line now and then, not a stream
        )

        def step_done(_: int) -> None:
            state.global_step += 1
            state.step_in_epoch += 1
            after_step(scheduler)
            bar.update(1)
            self.callbacks.after_step(state.global_step)

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
                add_stats(state.partial, stats)
                p = state.partial
                bar.set_postfix(loss=f"{p['loss_sum'] / p['count']:.4f}", acc=f"{p['correct'] / p['count']:.3f}")
                every = c.checkpoint_every_steps
                if every and state.step_in_epoch % every == 0 and state.step_in_epoch < total:
                    state.partial["wall_s"] = wall_before + time.perf_counter() - started
                    self._checkpoint(None, None)
        finally:
            bar.close()

        p = state.partial
        row: Row = {
            "phase": phase,
            "epoch": epoch,
            "step": state.global_step,
            "lr": p["lr"],
            "train_loss": p["loss_sum"] / p["count"],
            "train_acc": p["correct"] / p["count"],
        }
        due = epoch % c.eval_every == 0 or epoch == epochs
        score = None
        if due:
            self.callbacks.before_evaluate(unit)
            row.update(resources.evaluate("val"))
            score = row["val_acc"]
            after_evaluation(scheduler, row["val_loss"])
            if self.evaluate_test and phase == "train" and (epoch == epochs or c.test_every_eval):
                row.update(resources.evaluate("test"))
        state.epoch, state.step_in_epoch, state.partial = epoch, 0, empty_partial()
        self._checkpoint(row, score)
        if due and phase == "train" and self.on_evaluation is not None:
            self.on_evaluation(row)

    # ------------------------------------------------------------------------------------------------ end
    def _finish(self) -> dict[str, Any]:
        rows = [r for r in self.state.rows if r["phase"] == "train"]
        summary: dict[str, Any] = {
            "kind": KIND,
            "run_name": self.run_dir.path.name,
            "config_hash": self.config.result_hash(),
            "epochs": rows[-1]["epoch"] if rows else 0,
            "steps": self.state.global_step,
            **summarize_rows(rows, index="epoch"),
        }
        head = [r for r in self.state.rows if r["phase"] == "head" and r.get("val_acc") is not None]
        if head:
            summary["head"] = {k: head[-1].get(k) for k in ("val_loss", "val_acc", "logit_scale")}
        if self.state.mask is not None:
            summary["mask"] = self.state.extras.get("mask")
            if not (self.run_dir.path / MASK_FILE).is_file():  # e.g. deleted by hand: the checkpoint has it
                write_mask_report(self.run_dir.path, self.state.mask, mask_title(self.config, self.mask_file))
        summary |= mask_file_summary(
            self.config, self.state.mask, self.mask_source, self.resources.weights, self.resources.initial_weights, KIND
        )
        self.run_dir.write_summary(summary)
        plot_run(self.run_dir.path)
        return summary


# ---------------------------------------------------------------------------------------------------------------


def preflight(config: RunConfig) -> None:
    """Everything that can fail on bad input, before a run directory exists: output root, data, weights, device.

    Raises:
        ConfigError: the output root is not writable, or ``mask-path`` does not fit the run.
        DatasetNotFoundError, DatasetIntegrityError, ModelError, RuntimeError: data, model, weights or device missing.
    """
    validate_output_root(config)
    resources = get_resources(config, pretrained=True)  # loads the data set and the weights (cached for the run)
    assert resources.initial_weights is not None, "get_resources(..., pretrained=True) keeps them"
    check_mask_files(config, resources.initial_weights)  # mask-path fits this model and its starting weights


def default_run_name(config: RunConfig) -> str:
    """``run-name``, or ``central-<what trains>-<schedule>-lr<lr>-seed<seed>-<hash>``: stable for a config."""
    if config.run_name:
        return config.run_name
    if config.editing:
        what = f"{config.mask_rule}-s{config.sparsity:g}"
    elif config.mask_path:
        what = "maskfile"
    elif config.head != "train":
        what = f"{config.head}-head"
    else:
        what = "linear" if config.freeze == "backbone" else "full"
    return f"central-{what}-{config.lr_schedule}-lr{config.lr:g}-seed{config.seed}-{config.result_hash()[:6]}"


def run_centralized(
    config: RunConfig,
    *,
    evaluate_test: bool = True,
    on_evaluation: Callable[[Row], None] | None = None,
) -> tuple[RunDir, dict[str, Any]]:
    """Open (or reopen) the run directory of ``config`` and run it to the end; returns it and the summary.

    Call :func:`preflight` first to fail on bad input before a directory exists.
    """
    config = config if config.run_name else config.replace(run_name=default_run_name(config))
    resources = get_resources(config, pretrained=True)  # the trainer's own, cached for it
    model = model_record(config, resources.model)
    environment_record = environment(resources.device, resources.dtype)
    with open_run_dir(config, KIND, environment=environment_record, model=model) as run_dir:
        log.info("run directory: %s%s", run_dir.path, " (resuming)" if run_dir.resumed else "")
        log.info("%s", describe_model(model))
        trainer = CentralizedTrainer(config, run_dir, evaluate_test=evaluate_test, on_evaluation=on_evaluation)
        return run_dir, trainer.run()
