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
