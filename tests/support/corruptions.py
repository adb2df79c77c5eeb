"""Ways to damage a checkpoint on disk (each with the warning the store must give), and a pickle that runs code."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from fedtalos.tracking import checkpoint as ckpt_module
from fedtalos.tracking.checkpoint import CheckpointStore

CONFIG_HASH = "cfg000000001"


def checkpoint_tensors(step: int) -> dict[str, torch.Tensor]:
    """The tensors the tests save as checkpoint ``step`` (seeded by the step)."""
    g = torch.Generator().manual_seed(step)
    return {"weights/a": torch.randn(4, 3, generator=g), "weights/b": torch.randn(7, generator=g)}


def checkpoint_meta(step: int) -> dict:
    """The JSON part the tests save with checkpoint ``step``."""
    return {"step": step, "phase": "train", "phase_round": step, "rows": [{"round": step, "val_acc": 0.5}]}


class _MarkerPickle:
    """Unpickling this object creates ``path``: proof that a loader executed code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weights/a": _MarkerPickle(marker)})


def rewrite_record(json_path: Path, **changes) -> None:
    """Edit a JSON companion *consistently*, as a deliberate forger would (record hash recomputed)."""
    record = json.loads(json_path.read_text())
    record.update(changes)
    record["record_sha256"] = ckpt_module._record_digest(record)
    json_path.write_text(json.dumps(record))


# ------------------------------------------------------------------------------------------- corruption kinds
def truncate_tensors(tensor_path: Path, json_path: Path) -> None:
    tensor_path.write_bytes(tensor_path.read_bytes()[:-10])


def flip_tensor_byte(tensor_path: Path, json_path: Path) -> None:
    data = bytearray(tensor_path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's values: still a valid safetensors file, with one value changed
    tensor_path.write_bytes(bytes(data))


def _empty_tensor_file(tensor_path: Path, json_path: Path) -> None:
    tensor_path.write_bytes(b"")


def _flip_json_value(tensor_path: Path, json_path: Path) -> None:
    # Valid JSON afterwards, just another phase_round: without the record's own hash this would resume silently
    # at the wrong round.
    text = json_path.read_text()
    assert '"phase_round": 2' in text
    json_path.write_text(text.replace('"phase_round": 2', '"phase_round": 3'))


def _truncate_json(tensor_path: Path, json_path: Path) -> None:
    json_path.write_bytes(json_path.read_bytes()[:-20])


def _delete_tensors(tensor_path: Path, json_path: Path) -> None:
    tensor_path.unlink()


def _delete_json(tensor_path: Path, json_path: Path) -> None:
    json_path.unlink()


def _foreign_config(tensor_path: Path, json_path: Path) -> None:
    # A checkpoint written by a run with another result-config hash (e.g. copied between run directories).
    tensor_path.unlink()
    json_path.unlink()
    CheckpointStore(json_path.parent, "cfg999999999", keep=2).save(2, checkpoint_tensors(2), checkpoint_meta(2))


def _pickle_instead_of_tensors(tensor_path: Path, json_path: Path) -> None:
    # padded to the recorded size (pickle ignores bytes after its STOP opcode), so only the hash can tell
    blob = malicious_pickle(json_path.parent.parent / "pwned")
    tensor_path.write_bytes(blob.ljust(tensor_path.stat().st_size, b"\0"))


CORRUPTIONS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    # name: (damage to checkpoint 2, what the warning must say)
    "truncated tensors": (truncate_tensors, "(truncated?)"),
    "flipped tensor byte": (flip_tensor_byte, "fails its SHA-256 check"),
    "empty tensor file": (_empty_tensor_file, "has 0 bytes"),
    "flipped json value": (_flip_json_value, "ckpt-000000002.json fails its SHA-256 check"),
    "truncated json": (_truncate_json, "unreadable metadata ckpt-000000002.json"),
    "missing tensor file": (_delete_tensors, "tensor file ckpt-000000002.safetensors is missing"),
    "missing json companion": (_delete_json, "companion ckpt-000000002.json is missing"),
    "another run config": (_foreign_config, "belongs to another run configuration"),
    "pickle instead of tensors": (_pickle_instead_of_tensors, "fails its SHA-256 check"),
}
