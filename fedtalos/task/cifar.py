"""CIFAR-100 on disk: download (torchvision) and MD5 check, a parser that admits only arrays, the in-memory set.

The whole data set lives in memory as uint8 tensors (N×3×32×32) and int64 labels.
"""

from __future__ import annotations

import functools
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CIFAR_FOLDER = "cifar-100-python"
CIFAR_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# The official MD5 sums (the same ones torchvision checks).
CIFAR_MD5 = {
    CIFAR_ARCHIVE: "eb9058c3a382ffc7106e4002c42a8d85",
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
NUM_CLASSES = 100


class DatasetNotFoundError(FileNotFoundError):
    """CIFAR-100 is neither on disk nor downloadable; the message says where to put which file."""


class DatasetIntegrityError(ValueError):
    """CIFAR-100 files on disk do not match the official MD5 sums."""


@dataclass(frozen=True)
class Cifar100:
    """The whole data set in memory.

    Attributes:
        train_images: uint8 tensor (50000, 3, 32, 32).
        train_labels: int64 tensor (50000,), fine labels 0..99.
        test_images: uint8 tensor (10000, 3, 32, 32).
        test_labels: int64 tensor (10000,).
        classes: the 100 fine class names.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------------
# On-disk format: cifar-100-python/{train,test,meta}, Python pickles of dicts (the torchvision layout).


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a tampered data file cannot run code."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-100 file")


def _read_pickle(path: Path) -> dict[str, object]:
    with open(path, "rb") as f:
        raw = _ArrayUnpickler(f, encoding="latin1").load()
    if not isinstance(raw, dict):
        raise DatasetIntegrityError(f"{path} is not a CIFAR-100 pickle (expected a dict, got {type(raw).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def read_cifar100_folder(folder: Path) -> Cifar100:
    """Parse an extracted ``cifar-100-python`` folder (no checksum check; see :func:`load_cifar100`)."""
    splits = {}
    for split in ("train", "test"):
        entry = _read_pickle(folder / split)
        try:
            data = np.asarray(entry["data"], dtype=np.uint8)
            labels = np.asarray(entry["fine_labels"], dtype=np.int64)
        except KeyError as e:
            raise DatasetIntegrityError(f"{folder / split} has no {e.args[0]!r} entry") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise DatasetIntegrityError(
                f"{folder / split}: expected data of shape (N, 3072) and N labels, got {data.shape} and {len(labels)}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise DatasetIntegrityError(f"{folder / split}: fine labels outside 0..{NUM_CLASSES - 1}")
        splits[split] = (torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels))
    return Cifar100(*splits["train"], *splits["test"], classes=read_classes(folder))


def read_classes(folder: Path, verify: bool = False) -> tuple[str, ...]:
    """The fine class names from ``folder``'s ``meta`` file alone (checked against its MD5 sum when ``verify``)."""
    if verify and _md5(folder / "meta") != CIFAR_MD5["meta"]:
        raise DatasetIntegrityError(f"{folder / 'meta'} does not match the official CIFAR-100 MD5 sum")
    meta = _read_pickle(folder / "meta")
    return tuple(str(c) for c in meta.get("fine_label_names", [str(i) for i in range(NUM_CLASSES)]))


def _md5(path: Path) -> str:
    import hashlib

    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _not_found_message(root: Path, reason: str) -> str:
    return (
        f"CIFAR-100 was not found in {root} and could not be downloaded ({reason}).\n"
        f"Put either the archive {root / CIFAR_ARCHIVE} (from {CIFAR_URL}) or its extracted folder "
        f"{root / CIFAR_FOLDER}/ (with the files train, test, meta) there, or point the run config key "
        f"dataset-root (centralized: --dataset-root) at the directory that holds them."
    )


def ensure_cifar100(root: Path, download: bool = True, verify: bool = True) -> Path:
    """Return the extracted ``cifar-100-python`` folder under ``root``, extracting or downloading it if needed.

    Downloading and archive checks go through torchvision (MD5 checked). An existing folder is checked
    against the official MD5 sums when ``verify`` is true (turn it off only for generated test data).
    """
    root = Path(root).expanduser()
    folder = root / CIFAR_FOLDER
    files_present = all((folder / name).is_file() for name in ("train", "test", "meta"))
    if not files_present:
        archive = root / CIFAR_ARCHIVE
        if archive.is_file():
            if verify and _md5(archive) != CIFAR_MD5[CIFAR_ARCHIVE]:
                raise DatasetIntegrityError(
                    f"{archive} does not match the official MD5 sum; delete it and download it again"
                )
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(root, filter="data")
        elif download:
            _download(root)
        else:
            raise DatasetNotFoundError(_not_found_message(root, "dataset-download is off"))
    if verify:
        bad = [name for name in ("train", "test", "meta") if _md5(folder / name) != CIFAR_MD5[name]]
        if bad:
            raise DatasetIntegrityError(
                f"{', '.join(bad)} in {folder} do not match the official CIFAR-100 MD5 sums. Delete the folder "
                "to download it again (or set dataset-verify=false if these are generated test files)."
            )
    return folder


def _download(root: Path) -> None:
    from torchvision.datasets import CIFAR100

    try:
        root.mkdir(parents=True, exist_ok=True)
        CIFAR100(str(root), train=True, download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError on bad MD5
        raise DatasetNotFoundError(_not_found_message(root, f"{type(e).__name__}: {e}")) from None


@functools.lru_cache(maxsize=2)
def _load_cached(root: str, download: bool, verify: bool) -> Cifar100:
    return read_cifar100_folder(ensure_cifar100(Path(root), download, verify))


def load_cifar100(root: Path | str, download: bool = True, verify: bool = True) -> Cifar100:
    """Load CIFAR-100 into memory (cached per process): see :func:`ensure_cifar100` for the file handling."""
    return _load_cached(str(Path(root).expanduser()), download, verify)
