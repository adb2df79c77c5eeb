"""CIFAR-100: loading, the train/validation split, client sharding, and batched on-device augmentation.

The whole data set lives in memory as uint8 tensors (N×3×32×32) and int64 labels. Batches are cut, augmented
(random crop with 4-pixel zero padding + horizontal flip), resized to the model's resolution and normalised
with ImageNet statistics on whole tensors on the target device; all randomness comes from an explicit
``torch.Generator`` so a client's batches are a pure function of (seed, round, client).
"""

from __future__ import annotations

import functools
import pickle
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedtalos.seeds import iid_shards_rng, noniid_shards_rng, split_rng

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
_REBALANCE_PASSES = 200
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    meta = _read_pickle(folder / "meta")
    classes = tuple(str(c) for c in meta.get("fine_label_names", [str(i) for i in range(NUM_CLASSES)]))
    return Cifar100(*splits["train"], *splits["test"], classes=classes)


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


# ---------------------------------------------------------------------------------------------------------------
# Split and shards. All index arrays are int64 numpy arrays into the *train* labels.


def _as_numpy(labels: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    return np.asarray(labels, dtype=np.int64)


def split_train_val(labels: np.ndarray | torch.Tensor, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation split of the train set.

    Each class gives ``round(val_fraction · n_c)`` of its samples to validation (the per-class counts are
    adjusted by largest remainder so the total is ``round(val_fraction · N)``). Returns sorted, disjoint index
    arrays that together cover ``range(N)``; the same seed gives the same split.
    """
    labels = _as_numpy(labels)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = split_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * val_fraction
    take = np.floor(exact).astype(np.int64)
    short = round(val_fraction * len(labels)) - int(take.sum())
    if short > 0:
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:short]] += 1
    val_parts = []
    for cls, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        val_parts.append(rng.permutation(members)[:k])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train.astype(np.int64), val.astype(np.int64)


def shard_iid(labels: np.ndarray | torch.Tensor, num_clients: int, seed: int) -> list[np.ndarray]:
    """IID sharding: disjoint, covering, client sizes differ by at most 1.

    Samples are ordered class by class (shuffled within each class) and dealt round-robin from a random
    starting client, so every client holds ⌊n_c/K⌋ or ⌈n_c/K⌉ samples of each class c: its class histogram is
    the global one up to one sample per class.
    """
    labels = _as_numpy(labels)
    n = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"cannot give {num_clients} clients at least one sample each from {n} samples")
    rng = iid_shards_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    owner = (np.arange(n) + rng.integers(num_clients)) % num_clients
    client_ids = rng.permutation(num_clients)  # which client gets which deal
    shards = [np.sort(order[owner == k]) for k in range(num_clients)]
    return [shards[i] for i in client_ids]


def shard_noniid(
    labels: np.ndarray | torch.Tensor, num_clients: int, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Non-IID sharding: every client holds exactly ``classes_per_client`` (Nc) distinct classes.

    Disjoint and covering; every class present in ``labels`` is used. Construction:

    1. K·Nc class slots are shared among the C classes in proportion to their sizes (largest remainder), each
       class getting between 1 and min(K, n_c) slots.
    2. The slots, listed class by class, are dealt round-robin to the K clients. A class has at most K slots and
       its slots are consecutive, so no client receives the same class twice: each gets exactly Nc classes.
    3. Each class's samples are split among its clients by water-filling (emptier clients get more, every client
       at least one sample of each of its classes), then every class is re-filled given all the others until
       nothing changes, which lowers the largest client further.

    Size guarantee: when all classes have the same size and C divides K·Nc (CIFAR-100 after the stratified
    split with K=100 and Nc ∈ {1, 5, 10, 50}, or K=1000 and Nc=1), client sizes differ by at most 1. With
    equal class sizes otherwise they differ by a few samples (tests check ≤ 2 on such cases). With unequal
    class sizes the data itself can forbid balance (Nc=1 and a class of 5 samples means a client of ≤ 5),
    so no fixed bound holds; the spread is logged with the run.

    Raises:
        ValueError: with the reason, when Nc > C, K·Nc < C (a class would be left out), K·Nc exceeds the slots
            the classes can hold (a class cannot give the same client two slots), or K > N.
    """
    labels = _as_numpy(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n, num_classes = len(labels), len(classes)
    k, nc = num_clients, classes_per_client
    if k < 1 or nc < 1:
        raise ValueError(f"num_clients and classes_per_client must be >= 1, got {k} and {nc}")
    if nc > num_classes:
        raise ValueError(f"classes_per_client = {nc} exceeds the {num_classes} classes in the data")
    if k > n:
        raise ValueError(f"cannot give {k} clients at least one sample each from {n} samples")
    if k * nc < num_classes:
        raise ValueError(
            f"{k} clients × {nc} classes each = {k * nc} class slots cannot cover all {num_classes} classes; "
            "raise num_clients or classes_per_client"
        )
    capacity = np.minimum(counts, k)  # a class can appear at most once per client and once per sample
    if k * nc > capacity.sum():
        raise ValueError(
            f"{k} clients × {nc} classes each need {k * nc} (client, class) pairs, but the classes can only "
            f"form {int(capacity.sum())} (each class at most once per client and at most once per sample)"
        )
    slots = _apportion(k * nc, counts, capacity)

    rng = noniid_shards_rng(seed)
    # Deal the classes with the most slots first: every client then gets a similar number of shared classes,
    # whose sample counts the water-filling below can adjust, and of whole classes, which it cannot.
    class_order = rng.permutation(num_classes)
    class_order = class_order[np.argsort(-slots[class_order], kind="stable")]
    slot_classes = np.repeat(class_order, slots[class_order])
    start = int(rng.integers(k))
    slot_clients = (np.arange(len(slot_classes)) + start) % k

    owners = {c: slot_clients[slot_classes == c] for c in class_order}
    amounts = {c: np.zeros(len(owners[c]), dtype=np.int64) for c in class_order}
    totals = np.zeros(k, dtype=np.int64)
    # Water-fill class by class, then re-fill each class given all the others (coordinate descent on the
    # largest client size) until nothing changes: a few passes suffice.
    for _ in range(_REBALANCE_PASSES):
        changed = False
        for c in class_order:
            totals[owners[c]] -= amounts[c]
            new = _water_fill(totals[owners[c]], int(counts[c]))
            changed |= not np.array_equal(new, amounts[c])
            amounts[c] = new
            totals[owners[c]] += new
        if not changed:
            break
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in class_order:
        members = rng.permutation(np.flatnonzero(labels == classes[c]))
        for owner, piece in zip(owners[c], np.split(members, np.cumsum(amounts[c])[:-1]), strict=True):
            parts[owner].append(piece)
    client_ids = rng.permutation(k)
    shards = [np.sort(np.concatenate(p)) for p in parts]
    return [shards[i] for i in client_ids]


def _apportion(total: int, counts: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Integers s_c in [1, capacity_c] summing to ``total``, proportional to ``counts`` (largest remainder)."""
    exact = total * counts / counts.sum()
    slots = np.clip(np.floor(exact).astype(np.int64), 1, capacity)
    while slots.sum() != total:
        if slots.sum() < total:
            room = np.flatnonzero(slots < capacity)
            slots[room[np.argmax((exact - slots)[room])]] += 1
        else:
            room = np.flatnonzero(slots > 1)
            slots[room[np.argmin((exact - slots)[room])]] -= 1
    return slots


def _water_fill(current: np.ndarray, amount: int) -> np.ndarray:
    """Split ``amount`` into len(current) parts >= 1 that bring the smallest ``current`` totals up first."""
    m = len(current)
    give = np.ones(m, dtype=np.int64)
    rest = amount - m
    level = current + give
    order = np.argsort(level, kind="stable")
    # Raise the lowest clients to a common level L, then spread the remainder one by one.
    sorted_level = level[order]
    for i in range(1, m + 1):
        target = sorted_level[i] if i < m else None
        need = 0 if target is None else int((target - sorted_level[:i]).sum())
        if target is None or need > rest:
            base, extra = divmod(rest + int(sorted_level[:i].sum()), i)
            new = np.full(i, base, dtype=np.int64)
            new[:extra] += 1
            give[order[:i]] += new - sorted_level[:i]
            return give
    return give  # pragma: no cover - loop always returns


def make_partitions(
    labels: np.ndarray | torch.Tensor, num_clients: int, partitioning: str, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Shard by name: ``'iid'`` or ``'noniid'`` (see :func:`shard_iid` and :func:`shard_noniid`)."""
    if partitioning == "iid":
        return shard_iid(labels, num_clients, seed)
    if partitioning == "noniid":
        return shard_noniid(labels, num_clients, classes_per_client, seed)
    raise ValueError(f"unknown partitioning {partitioning!r}")


# ---------------------------------------------------------------------------------------------------------------
# Batches.


@dataclass(frozen=True)
class ImageTransform:
    """Batched preprocessing on the images' device: (B,3,32,32) uint8 → (B,3,S,S) float, ImageNet-normalised.

    With ``train=True`` each image gets a random crop from its 4-pixel zero-padded version and a random
    horizontal flip (probability 1/2), drawn from the given CPU generator so results do not depend on the device.
    """

    image_size: int
    train: bool
    padding: int = 4
    channels_last: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected a uint8 batch (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if self.train:
            images = self._crop_and_flip(images, generator)
        x = images.float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        scale, shift = _normalisation(x.device)
        x = torch.addcmul(shift, x, scale)  # (x/255 − mean)/std in one pass: interpolation is linear, so order is free
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _crop_and_flip(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.padding
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator)
        flips = torch.rand(b, generator=generator) < 0.5
        dev = images.device
        rows = (offsets[0, :, None] + torch.arange(h)).to(dev)  # (B, H)
        cols = offsets[1, :, None] + torch.arange(w)
        cols = torch.where(flips[:, None], cols.flip(1), cols).to(dev)  # (B, W)
        padded = F.pad(images, (p, p, p, p))
        batch_idx = torch.arange(b, device=dev)[:, None, None, None]
        chan_idx = torch.arange(c, device=dev)[None, :, None, None]
        return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


@functools.lru_cache(maxsize=8)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x·scale + shift = (x/255 − mean)/std, per channel, as (1, 3, 1, 1) tensors on ``device``."""
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def index_batches(
    n: int, batch_size: int, *, generator: torch.Generator | None = None, num_steps: int | None = None
) -> Iterator[torch.Tensor]:
    """Index batches over ``range(n)``.

    ``num_steps=None``: one pass in order (``generator=None``) or in a random permutation, the last batch
    possibly smaller. ``num_steps=J``: exactly J full batches from a stream of fresh permutations (wrapping
    across epochs), as a client's J local steps need.
    """
    if n < 1:
        raise ValueError("cannot make batches from an empty set")
    if num_steps is None:
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        yield from order.split(batch_size)
        return
    size = min(batch_size, n)
    buffer = torch.empty(0, dtype=torch.int64)
    for _ in range(num_steps):
        while len(buffer) < size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:size]
        buffer = buffer[size:]


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: ImageTransform,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    num_steps: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) batches on the device that ``images`` live on; see :func:`index_batches`.

    Augmentation randomness and the order both come from ``generator``, so the batches are reproducible.
    """
    for idx in index_batches(len(labels), batch_size, generator=generator, num_steps=num_steps):
        idx = idx.to(images.device, non_blocking=True)
        yield transform(images[idx], generator), labels[idx]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a CPU tensor to ``device``, through pinned memory for CUDA (asynchronous copy)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
