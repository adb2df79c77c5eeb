"""``fedtalos search``: the command around :func:`fedtalos.study.search.search` (tested in tests/study)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
import torch

from fedtalos.cli import central, search
from tests.support.central import tiny_values

SPACE = """
epochs = 1

[lr]
type = "categorical"
choices = [0.1]
"""


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The runs here set one torch thread (num-threads = 1, fast on a shared machine); later tests get theirs back."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def base_file(tmp_path: Path, fake_cifar_root: Path) -> Path:
    """The tiny centralized config as a --config file (relative output root: resolved against the cwd)."""
    values = {**tiny_values(fake_cifar_root, Path("runs")), "output-root": "runs", "num-threads": 1}
    path = tmp_path / "base.toml"
    path.write_text(tomli_w.dumps(values))
    return path


def test_a_bad_space_is_one_error_before_a_study_exists(tmp_path, monkeypatch, capsys, fake_cifar_root):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text('[lr]\ntype = "gaussian"\n[run-name]\ntype = "categorical"\nchoices = ["a"]\n')
    code = search.main(["bad.toml", "--trials", "1", "--config", str(base_file(tmp_path, fake_cifar_root))])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fedtalos search: ") and "2 problem(s)" in err
    assert not (tmp_path / "runs").exists(), "no study directory for a space that cannot run"


def test_a_search_prints_the_ranking_and_a_best_toml_that_central_reruns(
    tmp_path, monkeypatch, capsys, fake_cifar_root
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.toml").write_text(SPACE)
    assert search.main(["space.toml", "--trials", "1", "--config", str(base_file(tmp_path, fake_cifar_root))]) == 0
    out = capsys.readouterr().out.splitlines()
    study = tmp_path / "runs" / "search-space"
    assert out[0] == f"study: {study}  (1 trials; ranking in trials.csv)"
    assert out[1].startswith("  #1 trial 0 complete val_acc ") and out[1].endswith("  lr=0.1")
    assert out[2] == f"best config: {study / 'best.toml'}  (re-run: fedtalos central --config {study / 'best.toml'})"
    assert central.main(["--config", str(study / "best.toml")]) == 0
    assert "test_acc" in capsys.readouterr().out, "the re-run evaluates on the test split"
