"""The one file format of a mask on disk, for a person or another run: a ``.safetensors`` file (no pickle).

Two kinds share it: a run directory's mask (``mask.safetensors`` of the mask report, :func:`write_mask`) and a
mask file, an artifact that outlives its run (``fedtalos edit``, run-config ``mask-path``, :func:`write`). Both
hold

- ``bits``: the mask packed 1 bit per entry (:func:`~fedtalos.editing.sparse.pack_mask`: the tensors flattened
  row-major and concatenated in the order of ``tensors``; 1 = trainable), uint8 of length ⌈N / 8⌉;

and, in the safetensors header's metadata, one JSON document with the scored tensors' names and shapes and
``content_hash``, the SHA-256 of that document and of the tensors' bytes: a file whose header or data was altered
no longer matches it and is refused on load (:class:`MaskFileError`). A mask file also holds ``head.weight``
(C×D) and ``head.bias`` (C), the step-0 head the mask was calibrated with (frozen when the mask is used), and its
provenance (:class:`MaskFile` fields): the model name, :func:`weights_hash` of the backbone weights the mask was
scored on, the rule, sparsity, threshold scope, calibration rounds, samples, seed, head kind, where it was
calibrated (``centralized`` or ``federated``) and the calibrating run's result config; its content hash is the
mask's identity, which a run that uses the file records. :func:`read_mask` reads the mask of either kind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedtalos.editing.masks import Mask, mask_stats
from fedtalos.editing.sparse import pack_mask, unpack_mask
from fedtalos.fsutil import atomic_path
from fedtalos.task.model import HEAD_PREFIX

FORMAT = "fedtalos-mask"
VERSION = 1
HEAD_KEYS = ("head.weight", "head.bias")
_METADATA_KEY = "fedtalos"


class MaskFileError(ValueError):
    """A mask file that cannot be read, is corrupted, or does not fit the run that wants to use it."""


def weights_hash(weights: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) of the backbone weights (every tensor not named ``head.*``), in sorted name order.

    Each tensor contributes its name, dtype, shape and raw bytes (CPU, row-major), so any change of a value, a
    shape or a name changes the hash. The head is left out: step 0 replaces it.
    """
    digest = hashlib.sha256()
    for name in sorted(k for k in weights if not k.startswith(HEAD_PREFIX)):
        t = weights[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class MaskFile:
    """A mask file's contents.

    Attributes:
        mask: scored tensor name → bool tensor (True = trainable), in the model's order.
        head: ``head.weight`` (C×D) and ``head.bias`` (C), the step-0 head the mask was calibrated with.
        model: the ``model`` run-config value of the calibrating run.
        weights_hash: :func:`weights_hash` of the backbone the mask was scored on (the run's starting weights).
        rule, sparsity, scope: the calibration rule, the fraction frozen and the threshold scope.
        rounds: the calibration rounds taken (1 for the magnitude and random rules).
        samples: ``fisher-samples``: calibration samples per round (per client in a federated run).
        seed: the calibrating run's seed.
        head_kind: how the head was obtained: ``ridge`` or ``probe``.
        calibrated: ``centralized`` or ``federated``.
        config: the calibrating run's result config (kebab-case keys), for the record.
        content_hash: SHA-256 of the metadata and the tensors (see the module docstring); set by :func:`read`.
    """

    mask: Mask
    head: dict[str, Tensor]
    model: str
    weights_hash: str
    rule: str
    sparsity: float
    scope: str
    rounds: int
    samples: int
    seed: int
    head_kind: str
    calibrated: str
    config: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Scored tensor name → shape, in the mask's order."""
        return {k: tuple(m.shape) for k, m in self.mask.items()}

    def info(self) -> dict[str, Any]:
        """The JSON metadata (everything but the tensors and the content hash)."""
        info = {k: v for k, v in asdict(self).items() if k not in ("mask", "head", "content_hash")}
        info["tensors"] = [[k, list(s)] for k, s in self.shapes.items()]
        return info

    def density(self) -> float:
        """The trainable fraction of the scored entries."""
        return mask_stats(self.mask)["density"]


def _content_hash(info: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode())
    for key in ("bits", *HEAD_KEYS):
        if key not in tensors:  # a run directory's mask has no head
            continue
        t = tensors[key].contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _write(path: Path, tensors: dict[str, Tensor], info: dict[str, Any]) -> str:
    """Write the tensors and the JSON document with its content hash atomically; returns the hash."""
    from safetensors.torch import save_file

    digest = _content_hash(info, tensors)
    metadata = {"format": FORMAT, "version": str(VERSION), _METADATA_KEY: json.dumps({**info, "content_hash": digest})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return digest


def write(path: str | Path, mask_file: MaskFile) -> MaskFile:
    """Write ``mask_file`` to ``path`` atomically (a temporary file, then a rename); returns it with its hash."""
    missing = [k for k in HEAD_KEYS if k not in mask_file.head]
    if missing:
        raise ValueError(f"the head lacks {', '.join(missing)}")
    tensors = {
        "bits": torch.from_numpy(pack_mask(mask_file.mask)),
        **{k: mask_file.head[k].detach().to("cpu").contiguous() for k in HEAD_KEYS},
    }
    digest = _write(Path(path).expanduser(), tensors, mask_file.info())
    return replace(mask_file, content_hash=digest)


def write_mask(path: str | Path, mask: Mapping[str, Tensor]) -> str:
    """Write a mask alone (a run directory's mask: no head, no provenance) atomically; returns its content hash."""
    info = {"tensors": [[k, list(m.shape)] for k, m in mask.items()]}
    return _write(Path(path).expanduser(), {"bits": torch.from_numpy(pack_mask(mask))}, info)


def read_mask(path: str | Path) -> Mask:
    """The mask of a file of either kind (:func:`write_mask`, :func:`write`), verified: name → CPU bool tensor.

    Raises :class:`MaskFileError` with the reason.
    """
    path = Path(path).expanduser()
    info, tensors, _ = _open(path)
    return _unpack(path, tensors, info["tensors"])


def read(path: str | Path) -> MaskFile:
    """Read and verify a mask file (safetensors: no code runs). Raises :class:`MaskFileError` with the reason."""
    path = Path(path).expanduser()
    info, tensors, digest = _open(path)
    if set(tensors) != {"bits", *HEAD_KEYS}:
        raise MaskFileError(
            f"{path} holds a mask without the head it was calibrated with (a run directory's mask report?); "
            "mask-path takes a file written by mask-save-path or fedtalos edit"
        )
    mask = _unpack(path, tensors, info.pop("tensors"))
    fields = {k: info[k] for k in MaskFile.__dataclass_fields__ if k in info}
    head = {k: tensors[k] for k in HEAD_KEYS}
    return MaskFile(mask=mask, head=head, content_hash=digest, **fields)


def _open(path: Path) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    """A verified file's JSON document (without its hash; ``tensors`` as name → shape), tensors and hash."""
    from safetensors import safe_open

    if not path.is_file():
        raise MaskFileError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except Exception as e:  # safetensors raises its own error types for a bad header or a truncated file
        raise MaskFileError(f"{path} is not a readable mask file (safetensors: {e})") from None
    if metadata.get("format") != FORMAT:
        raise MaskFileError(f"{path} is not a fedtalos mask file (format {metadata.get('format')!r})")
    if metadata.get("version") != str(VERSION):
        raise MaskFileError(f"{path}: mask file version {metadata.get('version')!r}, this fedtalos reads {VERSION}")
    try:
        info = json.loads(metadata[_METADATA_KEY])
        stored = info.pop("content_hash")
        shapes = {str(name): tuple(int(d) for d in shape) for name, shape in info.pop("tensors")}
        if "bits" not in tensors or not set(tensors) <= {"bits", *HEAD_KEYS}:
            raise KeyError(f"tensors {sorted(tensors)}")
        digest = _content_hash({**info, "tensors": [[k, list(s)] for k, s in shapes.items()]}, tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise MaskFileError(f"{path}: malformed mask file metadata ({e})") from None
    if digest != stored:
        raise MaskFileError(f"{path} is corrupted: its contents do not match the hash it was written with")
    return {**info, "tensors": shapes}, tensors, digest


def _unpack(path: Path, tensors: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]) -> Mask:
    bits = tensors["bits"]
    if bits.dtype != torch.uint8 or bits.ndim != 1:
        raise MaskFileError(f"{path}: bits must be 1-D uint8, got {bits.dtype} {tuple(bits.shape)}")
    try:
        return unpack_mask(bits.numpy(), shapes)
    except ValueError as e:
        raise MaskFileError(f"{path}: {e}") from None


def read_npz_mask(path: str | Path) -> Mask:
    """A mask in the ``.npz`` layout that run directories of earlier versions hold (``mask.npz``: packed
    ``bits``, ``names``, ``ndims`` and the flattened ``dims``; read without pickles): name → CPU bool tensor."""
    with np.load(path, allow_pickle=False) as f:
        names = [str(n) for n in f["names"]]
        ndims, dims = f["ndims"].tolist(), f["dims"].tolist()
        bits = f["bits"]
    if len(ndims) != len(names) or sum(ndims) != len(dims):
        raise ValueError(f"{path}: names, ndims and dims do not fit together")
    shapes, offset = {}, 0
    for n, k in zip(names, ndims, strict=True):
        shapes[n] = tuple(dims[offset : offset + k])
        offset += k
    return unpack_mask(bits, shapes)


def check_fits(mask_file: MaskFile, model: str, weights: Mapping[str, Tensor], *, any_weights: bool = False) -> None:
    """Refuse (:class:`MaskFileError`, with the reason) a mask file that does not fit a run's starting model.

    Args:
        mask_file: from :func:`read`.
        model: the run's ``model``.
        weights: the run's starting weights (name → tensor), head included.
        any_weights: accept a mask scored on other backbone weights of the same shapes (its hash differs).
    """
    if mask_file.model != model:
        raise MaskFileError(f"the mask was calibrated for model {mask_file.model!r}, this run uses {model!r}")
    shapes = {k: tuple(v.shape) for k, v in weights.items() if not k.startswith(HEAD_PREFIX)}
    if list(shapes) != list(mask_file.shapes):
        missing = [k for k in shapes if k not in mask_file.shapes]
        extra = [k for k in mask_file.shapes if k not in shapes]
        raise MaskFileError(
            f"the mask's tensors are not this model's scored tensors (missing {missing[:3]}, extra {extra[:3]})"
            if missing or extra
            else "the mask's tensors are in another order than this model's"
        )
    wrong = [k for k, s in shapes.items() if mask_file.shapes[k] != s]
    if wrong:
        k = wrong[0]
        raise MaskFileError(
            f"{len(wrong)} mask tensors have other shapes than this model's (e.g. {k}: {mask_file.shapes[k]} "
            f"instead of {shapes[k]}; another image-size?)"
        )
    for k in HEAD_KEYS:
        if tuple(mask_file.head[k].shape) != tuple(weights[k].shape):
            got, want = tuple(mask_file.head[k].shape), tuple(weights[k].shape)
            raise MaskFileError(f"the mask file's {k} has shape {got}, this model's {want} (another class count?)")
    if not any_weights and mask_file.weights_hash != weights_hash(weights):
        raise MaskFileError(
            "the mask was scored on other starting weights (backbone hash "
            f"{mask_file.weights_hash[:12]}, this run's {weights_hash(weights)[:12]}: another weights-path, "
            "pretrained or seed?); set mask-any-weights = true to use it anyway"
        )
