"""CIFAR-100 on disk: the parser matches torchvision's, checks and clear errors, no code runs on load."""

from __future__ import annotations

import pickle
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtalos.task.cifar import (
    CIFAR_ARCHIVE,
    CIFAR_FOLDER,
    DatasetIntegrityError,
    DatasetNotFoundError,
    ensure_cifar100,
    load_cifar100,
    read_cifar100_folder,
)


def test_reader_matches_torchvision_parser(fake_cifar_root: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets.cifar as tv_cifar

    # Generated files cannot have the official MD5 sums: switch torchvision's checks off for this comparison.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    Unchecked = tv_cifar.CIFAR100

    ours = read_cifar100_folder(fake_cifar_root / CIFAR_FOLDER)
    splits = ((True, ours.train_images, ours.train_labels), (False, ours.test_images, ours.test_labels))
    for train, images, labels in splits:
        tv = Unchecked(str(fake_cifar_root), train=train, download=False)
        assert torch.equal(images, torch.from_numpy(tv.data).permute(0, 3, 1, 2))  # tv keeps N×32×32×3
        assert labels.tolist() == tv.targets
    assert list(ours.classes) == tv.classes
    assert ours.train_images.dtype == torch.uint8 and ours.train_labels.dtype == torch.int64


def test_generated_files_fail_md5_check_with_a_clear_message(fake_cifar_root: Path):
    with pytest.raises(DatasetIntegrityError, match="dataset-verify=false"):
        ensure_cifar100(fake_cifar_root, download=False, verify=True)


def test_missing_dataset_names_directory_and_file(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_cifar100(tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "cifar-100-python.tar.gz" in msg and "dataset-root" in msg


def test_offline_download_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DatasetNotFoundError, match=r"could not be downloaded .*URLError"):
        load_cifar100(tmp_path, download=True, verify=True)


def test_archive_is_extracted(fake_cifar_root: Path, tmp_path: Path):
    with tarfile.open(tmp_path / CIFAR_ARCHIVE, "w:gz") as tar:
        tar.add(fake_cifar_root / CIFAR_FOLDER, arcname=CIFAR_FOLDER)
    ds = load_cifar100(tmp_path, download=False, verify=False)
    assert ds.train_images.shape == (2000, 3, 32, 32) and (tmp_path / CIFAR_FOLDER / "meta").is_file()


def test_archive_with_wrong_md5_is_refused(fake_cifar_root: Path, tmp_path: Path):
    with tarfile.open(tmp_path / CIFAR_ARCHIVE, "w:gz") as tar:
        tar.add(fake_cifar_root / CIFAR_FOLDER, arcname=CIFAR_FOLDER)
    with pytest.raises(DatasetIntegrityError, match="MD5"):
        ensure_cifar100(tmp_path, download=False, verify=True)


class _Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/definitely/not/here",))


def test_reader_refuses_pickles_that_would_run_code(fake_cifar_root: Path, tmp_path: Path):
    folder = tmp_path / CIFAR_FOLDER
    shutil.copytree(fake_cifar_root / CIFAR_FOLDER, folder)
    with open(folder / "train", "wb") as f:
        pickle.dump({"data": _Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar100_folder(folder)


def test_malformed_file_is_reported(fake_cifar_root: Path, tmp_path: Path):
    folder = tmp_path / CIFAR_FOLDER
    shutil.copytree(fake_cifar_root / CIFAR_FOLDER, folder)
    with open(folder / "test", "wb") as f:
        pickle.dump({"data": np.zeros((3, 10), np.uint8), "fine_labels": [0, 1, 2]}, f)
    with pytest.raises(DatasetIntegrityError, match="shape"):
        read_cifar100_folder(folder)
