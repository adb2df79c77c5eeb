"""``fedtalos summarize``: prints the table, the notes and the paths of what it wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtalos.cli.main import main
from tests.support.fakeruns import write_study


def test_the_summarize_command_prints_the_table_and_the_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    study = write_study(tmp_path / "runs")
    out = tmp_path / "summary"
    assert main(["summarize", str(study), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| noniid | noniid-iid-J4 |" in printed and f"figure: {out / 'figures' / 'heatmap-noniid.png'}" in printed


def test_several_output_roots_make_one_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import shutil

    whole = write_study(tmp_path / "whole")
    assert main(["summarize", str(whole), "--out", str(tmp_path / "a"), "--no-figures"]) == 0
    # the same runs over two output roots, as two machines with a --shard each leave them
    first, second = tmp_path / "m1", tmp_path / "m2"
    shutil.copytree(whole, first)
    second.mkdir()
    runs = sorted(p for p in first.iterdir() if (p / "config.json").is_file())
    for run in runs[1::2]:
        shutil.move(run, second / run.name)
    assert main(["summarize", str(first), str(second), "--out", str(tmp_path / "b"), "--no-figures"]) == 0
    assert (tmp_path / "b" / "summary.csv").read_text() == (tmp_path / "a" / "summary.csv").read_text()
    # a run copied into both roots counts once
    shutil.copytree(second / runs[1].name, first / runs[1].name)
    capsys.readouterr()
    assert main(["summarize", str(first), str(second), "--out", str(tmp_path / "c"), "--no-figures"]) == 0
    assert f"note: {runs[1].name}: also in {second}, counted once (from {first})" in capsys.readouterr().out
    assert (tmp_path / "c" / "summary.csv").read_text() == (tmp_path / "a" / "summary.csv").read_text()
    assert main(["summarize", str(first), str(tmp_path / "missing")]) == 2
