"""The per-run figures (``fedtalos plot``) read as a paper figure: integer ticks on integer axes, short legend labels
from the settings that differ, a colour per series, a readable title, no offset notation, a legend outside the axes,
an honest x axis for centralized runs, and PNG, PDF or SVG by the file's suffix. Checked on the matplotlib objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest

from fedtalos.tracking import plots
from fedtalos.tracking.plots import plot_run, plot_runs, run_labels, x_label
from tests.support.fakeruns import train_rows, write_run

BASE = {"model": "vit-tiny-test", "num-clients": 20, "lr-schedule": "constant"}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[plt.Figure]:
    """The figures plot_runs draws, kept open for the test to read."""
    kept: list[plt.Figure] = []

    def keep(fig: plt.Figure, path: Path) -> Path:
        kept.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return kept


def central_rows(epochs: int, acc: float) -> list[dict[str, Any]]:
    return [
        {"phase": "train", "epoch": e, "train_loss": 4.6, "train_acc": 0.0067, "val_loss": 4.6}
        | {"val_acc": acc, "test_loss": 4.6, "test_acc": acc}
        for e in range(1, epochs + 1)
    ]


def fed_run(root: Path, **values: Any) -> Path:
    return write_run({**BASE, "output-root": str(root), **values}, train_rows(3, 0.4))


def test_one_centralized_epoch_has_integer_ticks_a_colour_per_split_a_readable_title_and_a_visible_train_point(
    tmp_path: Path, figures: list[plt.Figure]
):
    run = write_run({**BASE, "output-root": str(tmp_path), "epochs": 1}, central_rows(1, 0.01), kind="centralized")
    plot_run(run)
    (fig,) = figures
    ax_loss, ax_acc = fig.axes
    fig.canvas.draw()
    for ax in (ax_loss, ax_acc):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_xlabel() == "epoch"
        assert ax.get_legend() is None, "the legend is the figure's, below the axes: it hides no point"
    lines = {line.get_label(): line for line in ax_acc.get_lines()}
    assert set(lines) == {"train", "validation", "test"}
    assert len({line.get_color() for line in lines.values()}) == 3, "a colour per series"
    assert list(lines["train"].get_ydata()) == pytest.approx([0.67])
    assert all(not line.get_clip_on() for line in lines.values()), "a point on the axes' edge is drawn whole"
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["train", "validation", "test"]
    title = fig._suptitle.get_text()
    assert title == "centralized, fine-tuning, tiny test ViT, seed 0"
    assert run.name.rsplit("-", 1)[-1] not in title, "no hash in the title"


def test_a_comparison_labels_runs_by_the_settings_that_differ_and_has_no_offset(
    tmp_path: Path, figures: list[plt.Figure]
):
    a = write_run({**BASE, "output-root": str(tmp_path), "local-steps": 2}, train_rows(3, 0.4, val=[0.9, 0.9, 0.9]))
    b = write_run(
        {**BASE, "output-root": str(tmp_path), "local-steps": 8},
        train_rows(3, 0.4, val=[0.90001, 0.90003, 0.90002]),
    )
    assert run_labels([a, b]) == ["J=2", "J=8"]
    plot_runs([a, b], tmp_path / "c.png")
    (fig,) = figures
    ax_acc = fig.axes[1]
    fig.canvas.draw()
    assert ax_acc.yaxis.get_major_formatter().get_offset() == "", "no '1e-5+90' offset above the axis"
    val = [line for line in ax_acc.get_lines() if line.get_label().endswith("(validation)")]
    assert [line.get_label() for line in val] == ["J=2 (validation)", "J=8 (validation)"]
    assert val[0].get_color() != val[1].get_color(), "a colour per run"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["J=2", "J=8", "validation", "test"]
    assert not any("train" in line.get_label() for line in ax_acc.get_lines()), "no train curves in comparisons"
    assert fig._suptitle.get_text() == "fedavg, iid, tiny test ViT, seed 0", "what the runs share"


def test_labels_name_the_partition_once_and_fall_back_on_run_names(tmp_path: Path):
    iid = fed_run(tmp_path)
    nc5 = fed_run(tmp_path, partitioning="noniid", **{"classes-per-client": 5, "lr": 0.05})
    assert run_labels([iid, nc5]) == ["iid, lr=0.01", "Nc=5, lr=0.05"]
    # epochs is left out of a constant schedule's result config, yet both ran 3 epochs: only the schedule differs
    cosine, constant = (
        write_run({**BASE, "output-root": str(tmp_path), "epochs": 3, "lr-schedule": s}, [], kind="centralized")
        for s in ("cosine", "constant")
    )
    assert run_labels([cosine, constant]) == ["cosine", "constant"]
    central = write_run({**BASE, "output-root": str(tmp_path)}, [], kind="centralized")
    assert run_labels([iid, central]) == ["federated", "centralized"], "no J=4 for the run without local steps"
    same = fed_run(tmp_path / "elsewhere")
    assert run_labels([iid, same]) == [iid.name, same.name], "nothing tells them apart: the names do"


def test_the_x_axis_says_what_it_counts():
    assert x_label("epoch", {"centralized"}) == "epoch"
    assert x_label("round", {"federated"}) == "communication round"
    assert x_label("epoch", {"federated"}) == "communication round", "a federated run has rounds, not epochs"
    assert x_label("round", {"federated", "centralized"}) == "communication round (federated) / epoch (centralized)"
    with pytest.raises(ValueError, match=r"centralized run counts epochs.*--x epoch"):
        x_label("round", {"centralized"})
    with pytest.raises(ValueError, match="client-steps"):
        x_label("client-steps", {"federated", "centralized"})


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_the_format_follows_the_suffix(tmp_path: Path, suffix: str):
    out = plot_runs([fed_run(tmp_path)], tmp_path / f"fig.{suffix}")
    head = out.read_bytes()[:64]
    assert {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}[suffix] in head
