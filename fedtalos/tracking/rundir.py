"""Run directories: ``<output-root>/<run-name>/`` with ``config.json``, metrics, checkpoints, plots, summary.

:func:`open_run_dir` decides between a fresh run, a resume and a refusal *before* any compute, and never deletes
anything: starting over (``resume = false``) renames the old directory aside.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from fedtalos.config import ConfigError, RunConfig
from fedtalos.config.kinds import keys_read_by
from fedtalos.fsutil import atomic_write_bytes, try_lock
from fedtalos.run.phases import run_phases, total_units
from fedtalos.strategies.dp import privacy_record
from fedtalos.tracking.checkpoint import CheckpointStore
from fedtalos.tracking.metrics import MetricsLog, make_sinks, wandb_identity

CONFIG_FILE = "config.json"
log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"
CHECKPOINTS = "checkpoints"


class RunConfigMismatch(RuntimeError):
    """The run directory holds a run with a different configuration."""


class RunDirBusy(RuntimeError):
    """Another live process is writing this run directory."""


LOCK_FILE = ".lock"


def _lock(path: Path) -> IO[str]:
    """The run directory's lock (``path/.lock``, :func:`~fedtalos.fsutil.try_lock`), held for the whole run: a crashed
    run never blocks its own resume, and a refused start leaves the directory exactly as it was."""
    handle = try_lock(path / LOCK_FILE)
    if handle is None:
        raise RunDirBusy(
            f"{path} is being written by another live process. Two servers must never write one run directory: "
            "stop the other run first (`flwr ls`, then `flwr stop RUN_ID` for a Flower run that goes on after its "
            "stream was interrupted), or choose another run-name."
        )
    return handle


@dataclass
class RunDir:
    """An opened run directory."""

    path: Path
    config: RunConfig
    checkpoints: CheckpointStore
    resumed: bool  # True when the directory already held this run (there may still be no checkpoint yet)
    lock: Any = None  # the open lock file; :meth:`close` releases it

    def close(self) -> None:
        """Release the directory's lock (also released by the OS if the process dies)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def open_metrics(self) -> MetricsLog:
        """The run's metric log, with the TensorBoard / W&B sinks its config asks for."""
        c = self.config
        ids = wandb_identity(self.path, c.result_hash(), c.replace(seed=0).result_hash()) if c.wandb else None
        sinks = make_sinks(
            self.path,
            tensorboard=c.tensorboard,
            wandb=c.wandb,
            project=c.wandb_project,
            config=c.to_dict(),
            wandb_ids=ids,
        )
        return MetricsLog(self.path, sinks)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` atomically."""
        atomic_write_bytes(self.path / SUMMARY_FILE, json.dumps(summary, indent=1).encode())


def record_launch(run_path: Path, launched_at: float, ended_at: float) -> dict[str, Any] | None:
    """Add the whole wall time of the launch that ended the run to its ``summary.json``; returns the summary.

    ``launched_at`` / ``ended_at``: ``time.time()`` when ``flwr run`` started and returned. Adds ``run_wall_s``
    (start-up, rounds and shutdown of that launch; the rows' ``wall_s`` count only the rounds) and, when the
    server's ``timeline`` is from this launch, ``startup_s`` (from ``flwr run`` to the first round's checkpoint) and
    its parts (``startup`` : seconds from the launch to each stamp of the timeline). None without a summary.
    """
    path = run_path / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
        if path.stat().st_mtime < launched_at:  # finished by an earlier launch: this one found it done
            return summary
    except (OSError, ValueError):
        return None
    summary["run_wall_s"] = ended_at - launched_at
    timeline = summary.get("timeline") or {}
    if timeline.get("main_started", 0.0) >= launched_at:
        summary["startup"] = {k: v - launched_at for k, v in timeline.items()}
        if "first_round_done" in timeline:
            summary["startup_s"] = timeline["first_round_done"] - launched_at
    atomic_write_bytes(path, json.dumps(summary, indent=1).encode())
    return summary


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers, plus Python and the platform."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("fedtalos", "torch", "torchvision", "timm", "flwr", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_writable(root: Path) -> str | None:
    """None if run directories can be created under ``root``, else why not (checked without creating ``root``)."""
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            return f"no existing parent directory of {root}"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot write in {existing}: {e.strerror or e}"
    return None


def validate_output_root(config: RunConfig) -> None:
    """Raise :class:`ConfigError` if the output root is not writable (before any directory is created)."""
    root = config.resolved_output_root()
    problem = check_writable(root)
    if problem:
        raise ConfigError([f"output-root = {str(root)!r}: not writable ({problem})"])


def read_record(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` of the run directory ``path``; None while it has none.

    Raises:
        ValueError: the file is not valid JSON.
    """
    stored_file = path / CONFIG_FILE
    return json.loads(stored_file.read_text()) if stored_file.is_file() else None


def is_this_run(record: Mapping[str, Any], config: RunConfig, kind: str) -> bool:
    """Whether a run directory's ``config.json`` record is of this run: the same kind and result hash."""
    return record.get("kind") == kind and record.get("result_hash") == config.result_hash()


def finished_summary(config: RunConfig, kind: str) -> dict[str, Any] | None:
    """The ``summary.json`` of ``config``'s run when its directory holds this run (:func:`is_this_run`) finished to
    ``config``'s length, else None (also with ``resume = false``, which starts it over). A finished run is not run
    again: starting it would rewrite its files with the same numbers. A longer run of a constant schedule (the
    length is not part of its identity) continues it."""
    path = config.run_dir(kind)
    try:
        record = read_record(path) if config.resume else None
        if record is None or not is_this_run(record, config, kind):
            return None
        summary = json.loads((path / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if kind == "federated":  # rounds over every phase
        done, wanted = summary.get("rounds", 0), total_units(config, kind)
    else:  # epochs of the fine-tuning phase
        last = run_phases(config, kind)[-1]
        done, wanted = summary.get("epochs", 0), last.units if last.name == "train" else 0
    return summary if done >= wanted else None


def recorded_config(config: RunConfig, kind: str) -> dict[str, Any]:
    """The settings ``config.json`` lists: every key a run of ``kind`` reads (a centralized run reads no federated-only
    key, :mod:`fedtalos.config.kinds`); ``result_config`` keeps what the result hash covers."""
    read = keys_read_by(kind)
    return {k: v for k, v in config.to_dict().items() if k in read}


def already_finished_message(path: Path) -> str:
    """What a run says when it finds itself finished."""
    return (
        f"already finished: {path} (summary.json; nothing was run or rewritten; "
        "resume=false starts it over, keeping the old directory renamed)"
    )


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(current))
    return [
        f"{k}: {stored.get(k, '(unset)')!r} → {current.get(k, '(unset)')!r}"
        for k in keys
        if stored.get(k) != current.get(k)
    ]


class EnvironmentChanged(RunConfigMismatch):
    """A resume would continue on another device, autocast dtype or GPU model than the run started on."""


def _check_environment(path: Path, stored: dict[str, Any], current: dict[str, str], allow: bool) -> None:
    before = stored.get("environment")
    if not before or before == current:
        return
    diff = "; ".join(f"{k}: {before.get(k)!r} → {current.get(k)!r}" for k in current if before.get(k) != current[k])
    message = (
        f"{path} was run with {diff}: resuming here continues its numbers on other hardware (another precision, "
        "another random-number generator for the device's draws), so it will not match an uninterrupted run"
    )
    if not allow:
        raise EnvironmentChanged(
            message + ".\nResume on the hardware the run started on, or set "
            "allow-device-change=true to continue anyway."
        )
    log.warning("%s (allow-device-change = true: continuing)", message)


def open_run_dir(
    config: RunConfig,
    kind: str,
    environment: dict[str, str] | None = None,
    model: Mapping[str, Any] | None = None,
) -> RunDir:
    """Create or reopen the run directory of ``config``.

    ``kind`` is ``'federated'`` or ``'centralized'`` (an empty ``run-name`` is derived for it). If the directory
    holds this run (:func:`is_this_run`) it is reopened for resuming; if ``resume = false`` it is renamed to
    ``<name>.old-<timestamp>`` and a fresh one made; a different configuration is refused with the keys that
    differ and the two ways out. ``environment``: what ``device`` / ``precision`` resolved to in this process
    (:func:`fedtalos.task.device.environment`), recorded in ``config.json``; a resume whose environment differs
    from the recorded one raises :class:`EnvironmentChanged` unless ``allow-device-change`` (then a warning).
    ``model``: what to record about the backbone under the key ``model``
    (:func:`fedtalos.editing.scoring.model_record`).
    """
    validate_output_root(config)
    path = config.run_dir(kind)
    stored_file = path / CONFIG_FILE
    resumed = False
    lock = None
    if path.exists():
        lock = _lock(path)  # refuses at once if a live process writes this directory
        try:
            if not config.resume:
                stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
                aside = path.with_name(f"{path.name}.old-{stamp}")
                os.replace(path, aside)
                if lock is not None:
                    lock.close()
                    lock = None
            elif (stored := read_record(path)) is not None:
                if not is_this_run(stored, config, kind):
                    diff = _differences(stored.get("result_config", {}), config.result_dict())
                    raise RunConfigMismatch(
                        f"{path} holds a {stored.get('kind', '?')} run with a different configuration:\n  "
                        + "\n  ".join(diff or [f"kind: {stored.get('kind')!r} → {kind!r}"])
                        + "\nTo keep both, choose another run-name; to start this run over there, set resume=false "
                        "(the old directory is kept, renamed)."
                    )
                if environment is not None:
                    _check_environment(path, stored, environment, config.allow_device_change)
                resumed = True
        except BaseException:
            if lock is not None:
                lock.close()
            raise
    path.mkdir(parents=True, exist_ok=True)
    if lock is None:
        lock = _lock(path)
    record = {
        "kind": kind,
        "run_name": path.name,
        "result_hash": config.result_hash(),
        "config": recorded_config(config, kind),
        "result_config": config.result_dict(),
        "versions": package_versions(),
        **({"environment": dict(environment)} if environment is not None else {}),
        **({"model": dict(model)} if model is not None else {}),
        **({"privacy": privacy} if (privacy := privacy_record(config)) is not None else {}),
        "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if resumed:
        record["created"] = json.loads(stored_file.read_text()).get("created", record["updated"])
    else:
        record["created"] = record["updated"]
    atomic_write_bytes(stored_file, json.dumps(record, indent=1).encode())
    store = CheckpointStore(path / CHECKPOINTS, config.result_hash(), keep=config.checkpoint_keep)
    return RunDir(path=path, config=config, checkpoints=store, resumed=resumed, lock=lock)
