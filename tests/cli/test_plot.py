"""``fedtalos plot``: the format from --format or the suffix, a clear refusal of an axis a run lacks, and a hint for
an output root passed instead of run directories."""

from __future__ import annotations

from pathlib import Path

from fedtalos.cli import plot
from tests.support.fakeruns import train_rows, write_run

BASE = {"model": "vit-tiny-test", "num-clients": 20, "lr-schedule": "constant"}


def central_run(root: Path) -> Path:
    rows = [{"phase": "train", "epoch": 1, "val_loss": 4.6, "val_acc": 0.01}]
    return write_run({**BASE, "output-root": str(root)}, rows, kind="centralized")


def test_format_and_suffix_pick_a_vector_format(tmp_path: Path, capsys):
    run = write_run({**BASE, "output-root": str(tmp_path)}, train_rows(3, 0.4))
    assert plot.main([str(run), "--format", "pdf"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "plots" / "curves-round.pdf")
    assert (run / "plots" / "curves-round.pdf").read_bytes().startswith(b"%PDF")
    assert plot.main([str(run), "--out", str(tmp_path / "fig.svg")]) == 0
    assert plot.main([str(run), "--out", str(tmp_path / "fig.txt")]) == 2
    assert "use one of .png, .pdf, .svg" in capsys.readouterr().err


def test_a_centralized_run_has_no_rounds(tmp_path: Path, capsys):
    run = central_run(tmp_path)
    assert plot.main([str(run), "--x", "round", "--out", str(tmp_path / "x.png")]) == 2
    assert "counts epochs, not communication rounds: use --x epoch" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_an_output_root_gets_a_hint(tmp_path: Path, capsys):
    run = central_run(tmp_path)
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no metrics.jsonl in {tmp_path}" in err and f"holds 1 run directories: pass them, e.g. {run}" in err
