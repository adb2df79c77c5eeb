"""A run's mask file (``editing/mask_file.py``): reading ``mask-path``, writing ``mask-save-path``, the record.

- :func:`open_mask_path`: the run's ``mask-path`` file, read, verified and checked against the run's model,
  starting weights and validation split (:func:`split_problem`); every problem is a
  :class:`~fedtalos.config.ConfigError`, raised by the preflights before a run directory exists.
- :func:`save_run_mask`: an editing run's mask and head, written to ``mask-save-path`` when the run ends.
- :func:`record_mask_source`: ``mask_source.json`` in the run directory of a run that fine-tunes with a mask file
  (its path, content hash, rule, sparsity, where it was calibrated); a resumed run refuses a file whose hash
  changed since.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from fedtalos.config import ConfigError, RunConfig
from fedtalos.editing import mask_file as mf
from fedtalos.editing.masks import Mask
from fedtalos.fsutil import atomic_write_bytes
from fedtalos.run.phases import calibration_rounds
from fedtalos.tracking.rundir import check_writable

log = logging.getLogger(__name__)

MASK_SOURCE_FILE = "mask_source.json"


def check_mask_files(config: RunConfig, initial_weights: Mapping[str, Tensor]) -> None:
    """The preflight of the mask-file keys: ``mask-path`` fits (:func:`open_mask_path`), ``mask-save-path`` can be
    written. Raises :class:`~fedtalos.config.ConfigError`."""
    if config.mask_path:
        open_mask_path(config, initial_weights)
    if config.mask_save_path:
        problem = check_writable(Path(config.mask_save_path).expanduser().parent)
        if problem:
            raise ConfigError([f"mask-save-path = {config.mask_save_path!r}: not writable ({problem})"])


def open_mask_path(config: RunConfig, initial_weights: Mapping[str, Tensor]) -> mf.MaskFile:
    """The verified mask file of ``config.mask_path`` that fits the run's model and starting weights.

    Raises:
        ConfigError: the file is missing, unreadable or corrupted, or was calibrated for another model, other
            tensor shapes, or (without ``mask-any-weights``) other starting weights; the message says which.
    """
    try:
        found = mf.read(config.mask_path)
        mf.check_fits(found, config.model, initial_weights, any_weights=config.mask_any_weights)
    except mf.MaskFileError as e:
        raise ConfigError([f"mask-path = {config.mask_path!r}: {e}"]) from None
    problem = None if config.mask_any_split else split_problem(found, config)
    if problem:
        raise ConfigError([f"mask-path = {config.mask_path!r}: {problem}"])
    return found


def split_problem(found: mf.MaskFile, config: RunConfig) -> str | None:
    """Why the mask file's frozen head does not fit the run's data split, or None: the head was fitted on the train
    split of the calibrating run's seed and val-fraction, and another seed's validation split holds ≈ 90 % of
    those images (its validation accuracy would be partly on the head's training data)."""
    val_fraction = found.config.get("val-fraction", config.val_fraction)
    if found.seed == config.seed and val_fraction == config.val_fraction:
        return None
    return (
        f"its head was fitted on the train split of seed {found.seed} (val-fraction {val_fraction}), and this "
        f"run's validation split (seed {config.seed}, val-fraction {config.val_fraction}) overlaps it: write a mask "
        f"file for this split (fedtalos edit --seed {config.seed} ...), or set mask-any-split = true to use it anyway"
    )


def save_run_mask(
    config: RunConfig, mask: Mask, head: Mapping[str, Tensor], initial_weights: Mapping[str, Tensor], calibrated: str
) -> mf.MaskFile:
    """Write an editing run's mask and head to ``config.mask_save_path``; ``calibrated``: centralized/federated.

    ``initial_weights`` are the run's starting weights: the backbone the mask was scored on (step 0 only fits the
    head), whose :func:`~fedtalos.editing.mask_file.weights_hash` the file records.
    """
    record = mf.MaskFile(
        mask={k: m.cpu() for k, m in mask.items()},
        head={k: head[k].detach().cpu().clone() for k in mf.HEAD_KEYS},
        model=config.model,
        weights_hash=mf.weights_hash(initial_weights),
        rule=config.mask_rule,
        sparsity=config.sparsity,
        scope=config.mask_scope,
        rounds=calibration_rounds(config),
        samples=config.fisher_samples,
        seed=config.seed,
        head_kind=config.head,
        calibrated=calibrated,
        config=config.result_dict(),
    )
    return mf.write(config.mask_save_path, record)


def mask_file_summary(
    config: RunConfig,
    mask: Mask | None,
    mask_source: dict[str, Any] | None,
    head: Callable[[], Mapping[str, Tensor]],
    initial_weights: Mapping[str, Tensor] | None,
    calibrated: str,
) -> dict[str, Any]:
    """The mask-file part of a run's ``summary.json``, for both kinds of run: ``mask_file`` (the ``mask-path`` it
    fine-tuned with) and ``mask_saved`` (path and hash of the file written to ``mask-save-path``, written here).

    ``head`` gives the final weights (only called when a file is written: the centralized trainer copies them).
    """
    summary: dict[str, Any] = {}
    if mask_source is not None:
        summary["mask_file"] = mask_source
    if config.mask_save_path and mask is not None:
        assert initial_weights is not None, "an editing run that saves its mask keeps its starting weights"
        saved = save_run_mask(config, mask, head(), initial_weights, calibrated)
        summary["mask_saved"] = {"path": config.mask_save_path, "hash": saved.content_hash}
        log.info("mask file: %s (hash %s)", config.mask_save_path, saved.content_hash[:12])
    return summary


def source_record(config: RunConfig, found: mf.MaskFile) -> dict[str, Any]:
    """What a run records about the mask file it fine-tunes with (``mask_source.json``, ``summary.json``)."""
    return {
        "path": config.mask_path,
        "hash": found.content_hash,
        "calibrated": found.calibrated,
        "rule": found.rule,
        "sparsity": found.sparsity,
        "rounds": found.rounds,
        "samples": found.samples,
        "seed": found.seed,
        "head": found.head_kind,
        "weights_hash": found.weights_hash,
        "density": found.density(),
    }


def record_mask_source(run_dir: Path, config: RunConfig, found: mf.MaskFile) -> dict[str, Any]:
    """Write ``mask_source.json`` (first start), or refuse a file whose contents changed since (a resume).

    Raises:
        ConfigError: the run directory recorded another mask hash (the file at ``mask-path`` was replaced).
    """
    path = Path(run_dir) / MASK_SOURCE_FILE
    record = source_record(config, found)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("hash") != found.content_hash:
            raise ConfigError(
                [
                    f"mask-path = {config.mask_path!r}: the file changed since this run started (hash "
                    f"{str(stored.get('hash'))[:12]} → {found.content_hash[:12]}); restore it, or start over with "
                    "resume = false or another run-name"
                ]
            )
        return stored
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    return record


def read_mask_source(run_dir: Path) -> dict[str, Any] | None:
    """The ``mask_source.json`` of a run directory, or None (a run that calibrated its own mask, or a dense run)."""
    path = Path(run_dir) / MASK_SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
