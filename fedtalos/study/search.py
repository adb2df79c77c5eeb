"""Hyper-parameter search with Optuna on the validation split (never the test split): ``fedtalos search``.

Each trial is an ordinary centralized run in ``<output-root>/search-<study>/trial-<n>/`` that reports ``val_acc``
to Optuna (TPE, MedianPruner); the same command resumes the study, re-queueing trials a killed process left
running. Outputs: ``study.db``, ``trials.csv``, ``best.toml``, ``trials.png``; docs/centralized.md § Hyper-parameter
search.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedtalos.config import ConfigError, RunConfig
from fedtalos.config.kinds import for_kind
from fedtalos.fsutil import atomic_write_bytes, try_lock
from fedtalos.study.search_space import Space, load_space

log = logging.getLogger(__name__)

STUDY_DB = "study.db"
TRIALS_CSV = "trials.csv"
BEST_TOML = "best.toml"
TRIALS_PLOT = "trials.png"


class SearchError(RuntimeError):
    """The study cannot be continued as asked (another space or base config, or a search already running)."""


# ---------------------------------------------------------------------------------------------------------------
# The study.


@contextlib.contextmanager
def study_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the study directory (one search process per study)."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = try_lock(directory / ".lock")
    if handle is None:
        raise SearchError(f"another search is running on {directory}; wait for it or use another --study-name")
    try:
        yield
    finally:
        handle.close()


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def base_hash(config: RunConfig, space: Space) -> str:
    """A hash of what every trial shares: the result-deciding keys of the base config, minus the searched ones."""
    import hashlib

    shared = {k: v for k, v in config.result_dict().items() if k not in space.params}
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]


def _check_identity(study: Any, space: Space, base_hash: str) -> None:
    """The study's first run recorded its space and base config; a later run must use the same ones."""
    stored = study.user_attrs
    identity = json.loads(json.dumps({"space": space.to_json(), "base_hash": base_hash}))  # as stored
    if not stored.get("space"):
        for key, value in identity.items():
            study.set_user_attr(key, value)
        return
    if stored.get("space") != identity["space"] or stored.get("base_hash") != base_hash:
        what = "search space" if stored.get("space") != identity["space"] else "base run config"
        raise SearchError(
            f"study {study.study_name!r} was created with another {what}; its trials would not be comparable. "
            "Use another --study-name (or the original space and options)."
        )


def _requeue_interrupted(study: Any) -> None:
    """Trials left RUNNING by a killed process: mark failed and re-queue their parameters and run directory."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_dir = trial.user_attrs.get("run_dir", f"trial-{trial.number:04d}")
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"run_dir": run_dir, "resumes": trial.number})
        log.info("trial %d was interrupted: re-queued, it resumes from %s", trial.number, run_dir)


def run_trial(study: Any, space: Space, base: Mapping[str, Any], study_dir: Path) -> None:
    """Ask for one trial, run it as a centralized run, and tell Optuna how it ended."""
    import optuna
    from optuna.trial import TrialState

    from fedtalos.central.trainer import run_centralized

    trial = study.ask(space.distributions())
    run_name = trial.user_attrs.get("run_dir") or f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", run_name)
    values = {**base, **space.fixed, **trial.params, "output-root": str(study_dir), "run-name": run_name}
    try:
        config = RunConfig.from_mapping(values)
    except ConfigError as e:  # a combination the per-key checks could not see (e.g. lr-min > a sampled lr)
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d: invalid configuration, skipped:\n%s", trial.number, e)
        return
    log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v!r}" for k, v in trial.params.items()))

    def report(row: dict[str, Any]) -> None:
        trial.report(row["val_acc"], step=row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"val_acc {row['val_acc']:.4f} at epoch {row['epoch']}")

    try:
        _, summary = run_centralized(config, evaluate_test=False, on_evaluation=report)
    except optuna.TrialPruned as e:
        trial.set_user_attr("pruned_at", str(e))
        study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d pruned (%s)", trial.number, e)
        return
    except Exception as e:  # recorded, and the search goes on; KeyboardInterrupt leaves the trial RUNNING
        trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        study.tell(trial, state=TrialState.FAIL)
        log.exception("trial %d failed", trial.number)
        return
    study.tell(trial, summary["final"]["val_acc"])
    log.info("trial %d: val_acc %.4f", trial.number, summary["final"]["val_acc"])


# ---------------------------------------------------------------------------------------------------------------
# Outputs.


def ranked_trials(study: Any) -> list[dict[str, Any]]:
    """One row per trial: complete ones by value (desc), then pruned by their last val_acc, then the rest."""
    from optuna.trial import TrialState

    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}
    keyed = []
    for t in study.get_trials(deepcopy=False):
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        value = t.value if t.state == TrialState.COMPLETE else last
        row = {
            "trial": t.number,
            "state": t.state.name.lower(),
            "val_acc": value,
            "best_val_acc": max(t.intermediate_values.values()) if t.intermediate_values else None,
            "epochs_done": max(t.intermediate_values) if t.intermediate_values else 0,
            **{f"param:{k}": v for k, v in t.params.items()},
            "run_dir": t.user_attrs.get("run_dir", ""),
            "wall_s": t.duration.total_seconds() if t.duration else None,
            "note": t.user_attrs.get("error") or t.user_attrs.get("pruned_at") or "",
        }
        accuracy = value if value is not None else -math.inf
        keyed.append(((order.get(t.state, 2), -accuracy, t.number), row))
    rows = [row for _, row in sorted(keyed, key=lambda item: item[0])]
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row["state"] in ("complete", "pruned") else None
    return rows


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = ["rank", "trial", "state", "val_acc", "best_val_acc", "epochs_done"]
    for row in rows:
        columns += [k for k in row if k not in columns and k.startswith("param:")]
    columns += ["run_dir", "wall_s", "note"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def best_overrides(study: Any, space: Space, base: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run-config overrides of the best complete trial (no run-name: the re-run gets its own directory)."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    values = {**base, **space.fixed, **best.params}
    values.pop("run-name", None)
    return values


def write_best_toml(values: Mapping[str, Any], study: Any, path: Path) -> None:
    import tomli_w

    best = study.best_trial
    header = (
        f"# Best trial of study {study.study_name!r}: trial {best.number}, validation accuracy {best.value:.4f}.\n"
        f"# Re-run it (also evaluated on the test split at the end): fedtalos central --config {path.name}\n"
    )
    atomic_write_bytes(path, (header + tomli_w.dumps(dict(values))).encode())


def write_outputs(study: Any, space: Space, base: Mapping[str, Any], study_dir: Path, top: int = 5) -> dict[str, Any]:
    """``trials.csv``, ``best.toml`` (when a trial completed) and ``trials.png``; returns what was written."""
    rows = ranked_trials(study)
    write_trials_csv(rows, study_dir / TRIALS_CSV)
    out: dict[str, Any] = {"trials": rows, "csv": study_dir / TRIALS_CSV, "best": None}
    values = best_overrides(study, space, base)
    if values is not None:
        write_best_toml(values, study, study_dir / BEST_TOML)
        out["best"] = study_dir / BEST_TOML
    runs = [study_dir / r["run_dir"] for r in rows if r["rank"] is not None][:top]
    runs = [r for r in runs if (r / "metrics.jsonl").is_file()]
    if runs:
        from fedtalos.tracking.plots import plot_runs

        with contextlib.suppress(ValueError):
            plot_runs(
                runs, study_dir / TRIALS_PLOT, x="epoch", title=f"study {study.study_name}: best {len(runs)} trials"
            )
    return out


# ---------------------------------------------------------------------------------------------------------------


def search(
    base: Mapping[str, Any],
    space_path: str | Path,
    trials: int,
    study_name: str | None = None,
    *,
    pruner_startup_trials: int = 5,
    pruner_warmup_epochs: int = 1,
    pruner: Any | None = None,
) -> dict[str, Any]:
    """Run (or continue) a study until it holds ``trials`` finished trials; write its outputs.

    Args:
        base: run-config overrides shared by every trial (validated; paths absolute).
        space_path: the search space TOML file.
        trials: the number of finished (complete or pruned) trials the study should hold.
        study_name: default: the space file's stem.
        pruner_startup_trials: trials that finish before the MedianPruner prunes anything.
        pruner_warmup_epochs: epochs of every trial that are never pruned.
        pruner: an Optuna pruner to use instead of that MedianPruner.

    Returns:
        ``{"study_dir", "trials" (ranked rows), "csv", "best" (best.toml path or None)}``.
    """
    import optuna

    from fedtalos.run.preflight import preflight
    from fedtalos.seeds import search_sampler_seed

    space = load_space(space_path, base)
    study_name = study_name or Path(space_path).stem
    config = for_kind(RunConfig.from_mapping({**base, **space.fixed}), "centralized")
    preflight(config, "centralized")  # output root, data, weights: fail before a study exists
    study_dir = config.resolved_output_root() / f"search-{study_name}"
    with study_lock(study_dir):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=study_name,
            storage=f"sqlite:///{study_dir / STUDY_DB}",
            load_if_exists=True,
            direction="maximize",
            pruner=pruner
            or optuna.pruners.MedianPruner(n_startup_trials=pruner_startup_trials, n_warmup_steps=pruner_warmup_epochs),
        )
        # Seeded per (seed, trials so far): reproducible, and a continued study does not replay earlier proposals.
        study.sampler = optuna.samplers.TPESampler(seed=search_sampler_seed(config.seed, len(study.trials)))
        _check_identity(study, space, base_hash(config, space))
        _requeue_interrupted(study)
        done = _finished(study)
        if done:
            log.info("study %s: %d of %d trials already finished", study_name, done, trials)
        while _finished(study) < trials:
            run_trial(study, space, base, study_dir)
            write_outputs(study, space, base, study_dir)
        out = write_outputs(study, space, base, study_dir)
    return {"study_dir": study_dir, **out}
