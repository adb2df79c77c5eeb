"""Atomic, verified checkpoints: ``ckpt-<step>.safetensors`` (tensors) + ``ckpt-<step>.json`` (the rest).

Each file is written atomically, the JSON last (it records the tensor file's size and SHA-256, the config hash and
its own SHA-256), so a checkpoint without it is incomplete. Reading tries the newest first and skips, with the
reason, any whose files are missing, altered or of another config; loading runs no code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedtalos.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{9})\.json$")
_TENSOR_NAME = re.compile(r"^ckpt-(\d{9})\.safetensors$")
FORMAT_VERSION = 2  # 2: the record carries its own SHA-256 (a flipped byte in the JSON is detected too)
# Format 1 records (no record hash) are read too; no single flipped bit turns a '2' into a '1', so a damaged
# format-2 record cannot pass for a format-1 one.
_READABLE_FORMATS = (1, 2)
_RECORD_FIELDS = {
    "format": int,
    "step": int,
    "config_hash": str,
    "tensors_file": str,
    "tensors_bytes": int,
    "tensors_sha256": str,
    "meta": dict,
}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the previous ones are intact) or none could be read."""


@dataclass
class Checkpoint:
    """One saved state: ``step`` (a monotone counter, e.g. the global round), tensors and JSON metadata."""

    step: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    path: Path


def _record_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 of a record (without its ``record_sha256``) in canonical JSON: key order and whitespace do not
    matter, every value does. Computed from a JSON round trip so that writer and reader hash the same thing."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    canonical = json.dumps(json.loads(json.dumps(body, allow_nan=True)), sort_keys=True, allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views, shared storage and non-CPU tensors: store independent CPU copies.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


class CheckpointStore:
    """The checkpoints of one run directory.

    Args:
        directory: where the files go (created on the first save).
        config_hash: the run's result-config hash; checkpoints with another hash are refused on load.
        keep: how many of the newest checkpoints to keep; the best (highest ``score``) is kept as well.
        fault_hook: test hook called with (stage name, step) during a write (to inject kills and disk errors).
    """

    def __init__(
        self,
        directory: Path,
        config_hash: str,
        keep: int = 2,
        fault_hook: Callable[[str, int], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.config_hash = config_hash
        self.keep = keep
        self.fault_hook = fault_hook or (lambda stage, step: None)
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def _paths(self, step: int) -> tuple[Path, Path]:
        stem = self.directory / f"ckpt-{step:09d}"
        return stem.with_suffix(".safetensors"), stem.with_suffix(".json")

    def steps(self) -> list[int]:
        """Steps with a JSON companion on disk, oldest first (not yet verified)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def save(
        self, step: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], score: float | None = None
    ) -> Path:
        """Write checkpoint ``step`` atomically, then prune old ones. Returns the JSON path.

        Raises:
            CheckpointError: the write failed (e.g. disk full); earlier checkpoints are untouched.
        """
        self.wait()
        return self._write(step, _contiguous(tensors), dict(meta), score)

    def save_async(
        self, step: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], score: float | None = None
    ) -> None:
        """Like :meth:`save`, but write in a background thread so the next round can start.

        The tensors and metadata are copied now (the caller goes on changing them). At most one write is in
        flight: this call first waits for the previous one and raises its error, if any. A kill during the write
        loses only this checkpoint: resuming falls back to the previous one, which is complete.
        """
        self.wait()
        snapshot, meta_copy = _contiguous(tensors), json.loads(json.dumps(dict(meta)))
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending = self._writer.submit(self._write, step, snapshot, meta_copy, score)

    def wait(self) -> None:
        """Block until the background write (if any) is on disk; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], score: float | None) -> Path:
        tensor_path, json_path = self._paths(step)
        try:
            blob = save_safetensors(tensors)
            self.fault_hook("before-tensors", step)
            atomic_write_bytes(tensor_path, blob)
            self.fault_hook("after-tensors", step)
            record = {
                "format": FORMAT_VERSION,
                "step": step,
                "config_hash": self.config_hash,
                "tensors_file": tensor_path.name,
                "tensors_bytes": len(blob),
                "tensors_sha256": hashlib.sha256(blob).hexdigest(),
                "score": score,
                "meta": meta,
            }
            record["record_sha256"] = _record_digest(record)
            atomic_write_bytes(json_path, json.dumps(record, indent=1, allow_nan=True).encode())
            self.fault_hook("after-json", step)
        except OSError as e:
            raise CheckpointError(
                f"could not write checkpoint {step} to {self.directory}: {e}. The previous checkpoints are intact; "
                "free the space (or fix the permissions) and run the same command again to resume."
            ) from e
        self._prune()
        return json_path

    def _read_record(self, step: int) -> dict[str, Any]:
        _, json_path = self._paths(step)
        try:
            record = json.loads(json_path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"unreadable metadata {json_path.name}: {e}") from None
        if not isinstance(record, dict) or record.get("format") not in _READABLE_FORMATS or record.get("step") != step:
            raise CheckpointError(
                f"{json_path.name} is not a fedtalos checkpoint record (format {FORMAT_VERSION}, step {step})"
            )
        if record["format"] >= 2 and record.get("record_sha256") != _record_digest(record):
            raise CheckpointError(f"{json_path.name} fails its SHA-256 check (corrupted or edited)")
        wrong = [k for k, t in _RECORD_FIELDS.items() if type(record.get(k)) is not t]
        if wrong or record["tensors_file"] != self._paths(step)[0].name:
            raise CheckpointError(f"{json_path.name} has invalid fields: {wrong or ['tensors_file']}")
        return record

    def load(self, step: int) -> Checkpoint:
        """Load and verify checkpoint ``step``; raises :class:`CheckpointError` saying what is wrong."""
        record = self._read_record(step)
        if record["config_hash"] != self.config_hash:
            raise CheckpointError(
                f"checkpoint {step} belongs to another run configuration (hash {record['config_hash']}, "
                f"this run {self.config_hash})"
            )
        tensor_path = self.directory / record["tensors_file"]
        try:
            blob = tensor_path.read_bytes()
        except OSError:
            raise CheckpointError(f"checkpoint {step}: tensor file {tensor_path.name} is missing") from None
        if len(blob) != record["tensors_bytes"]:
            raise CheckpointError(
                f"checkpoint {step}: {tensor_path.name} has {len(blob)} bytes, expected {record['tensors_bytes']} "
                "(truncated?)"
            )
        if hashlib.sha256(blob).hexdigest() != record["tensors_sha256"]:
            raise CheckpointError(f"checkpoint {step}: {tensor_path.name} fails its SHA-256 check (corrupted)")
        try:
            tensors = load_safetensors(blob)
        except Exception as e:  # a hash-valid file that safetensors rejects was written by something else
            raise CheckpointError(f"checkpoint {step}: {tensor_path.name} is not a safetensors file: {e}") from None
        return Checkpoint(step=step, tensors=tensors, meta=record["meta"], path=tensor_path)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; broken ones are logged and skipped. None if there is none.

        Raises:
            CheckpointError: checkpoints exist but every one of them is broken (nothing is deleted).
        """
        steps = self.steps()
        problems = []
        for step in reversed(steps):
            try:
                checkpoint = self.load(step)
            except CheckpointError as e:
                log.warning("skipping checkpoint: %s", e)
                problems.append(str(e))
                continue
            self._report_orphans(step)
            if problems:
                log.warning("resuming from checkpoint %d, the newest one that verifies", step)
            return checkpoint
        self._report_orphans(-1)
        if problems:
            raise CheckpointError(
                "no usable checkpoint in "
                + str(self.directory)
                + ":\n  "
                + "\n  ".join(problems)
                + "\nStart over with resume=false (the directory is kept, renamed) or another run-name."
            )
        return None

    def _report_orphans(self, step: int) -> None:
        # Tensor files newer than the checkpoint resumed from, without a JSON companion: a write that did not
        # finish (killed, disk full) or a deleted companion. Ignored, but said, so a lost round is never silent.
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.iterdir()):
            m = _TENSOR_NAME.match(path.name)
            if m and int(m.group(1)) > step and not path.with_suffix(".json").exists():
                log.warning(
                    "ignoring %s: its companion %s is missing (a checkpoint write that did not finish)",
                    path.name,
                    path.with_suffix(".json").name,
                )

    def _prune(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.keep :])
        best_step, best_score = None, None
        for step in steps:
            try:
                score = self._read_record(step).get("score")
            except CheckpointError:
                continue
            if score is not None and (best_score is None or score > best_score):
                best_step, best_score = step, score
        if best_step is not None:
            keep.add(best_step)
        for step in steps:
            if step in keep:
                continue
            tensor_path, json_path = self._paths(step)
            json_path.unlink(missing_ok=True)  # the JSON first: a half-deleted checkpoint is an ignored one
            tensor_path.unlink(missing_ok=True)
        for stray in self.directory.glob("ckpt-*.safetensors"):
            if not stray.with_suffix(".json").exists() and int(stray.stem[5:]) < max(steps, default=0):
                stray.unlink(missing_ok=True)  # tensors of a write that died before its JSON

    def best(self) -> Checkpoint | None:
        """The kept checkpoint with the highest score (None if no checkpoint has a score)."""
        scored = []
        for step in self.steps():
            try:
                score = self._read_record(step).get("score")
            except CheckpointError:
                continue
            if score is not None:
                scored.append((score, step))
        return self.load(max(scored)[1]) if scored else None
