"""Generated stand-ins for CIFAR-100, written in the real on-disk format, for tests and benchmarks only.

The images are *not* CIFAR: each class has a random low-frequency colour pattern, and every sample is that
pattern shifted by up to 2 pixels plus Gaussian noise, so a small model can learn the classes quickly. Files
follow torchvision's layout exactly (``cifar-100-python/{train,test,meta}`` pickles of dicts), but their MD5
sums are of course not the official ones: load them with ``dataset-verify = false``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from fedtalos.task.cifar import CIFAR_FOLDER, NUM_CLASSES


def generate_images(labels: np.ndarray, seed: int, noise: float = 40.0) -> np.ndarray:
    """uint8 images (N, 3072) in CIFAR's row layout (R plane, G plane, B plane) for the given labels."""
    rng = np.random.default_rng(seed)
    proto_rng = np.random.default_rng(12345)  # the same class patterns for train and test
    prototypes = proto_rng.uniform(0, 255, size=(NUM_CLASSES, 3, 4, 4))
    prototypes = prototypes.repeat(8, axis=2).repeat(8, axis=3)  # (C, 3, 32, 32), 8×8 blocks
    images = prototypes[labels]
    shifts = rng.integers(-2, 3, size=(len(labels), 2))
    for i, (dy, dx) in enumerate(shifts):
        images[i] = np.roll(images[i], (dy, dx), axis=(1, 2))
    images = images + rng.normal(0.0, noise, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8).reshape(len(labels), -1)


def write_fake_cifar100(root: str | Path, train_per_class: int = 20, test_per_class: int = 5, seed: int = 0) -> Path:
    """Write a generated CIFAR-100-format folder under ``root`` and return ``root``.

    ``train_per_class``/``test_per_class`` samples for each of the 100 classes (the real set has 500/100).
    """
    root = Path(root)
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, per_class, split_seed in (("train", train_per_class, seed), ("test", test_per_class, seed + 1)):
        labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), per_class))
        entry = {
            "filenames": [f"generated_{split}_{i}.png" for i in range(len(labels))],
            "batch_label": f"generated {split} batch",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": generate_images(labels, split_seed),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {
        "fine_label_names": [f"class_{i:02d}" for i in range(NUM_CLASSES)],
        "coarse_label_names": [f"superclass_{i:02d}" for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root
