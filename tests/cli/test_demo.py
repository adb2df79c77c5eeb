"""``fedtalos demo``: the whole tour on generated data (one real `flwr run`, e2e: also the suite's check that a
completed `flwr run` writes its run), and what it refuses to touch."""

from __future__ import annotations

import json

import pytest

from fedtalos.cli import demo
from fedtalos.cli.main import main
from tests.support.flower import isolated_flower


def test_a_directory_the_demo_did_not_make_is_refused_and_left_alone(tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("keep me")
    assert main(["demo", "--out", str(mine)]) == 2
    assert "not made by `fedtalos demo`" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["chapter1.tex"]

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert main(["demo", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "keep me"
    assert main(["demo", "--out", str(a_file / "demo")]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_an_earlier_demo_is_replaced_and_a_new_directory_is_made(tmp_path):
    earlier = demo.prepare_out(tmp_path / "demo")
    (earlier / "runs").mkdir()
    (earlier / "runs" / "stale.txt").write_text("from the earlier demo")
    again = demo.prepare_out(tmp_path / "demo")
    assert again == earlier and sorted(p.name for p in again.iterdir()) == [demo.MARKER]
    assert demo.prepare_out(tmp_path / "new" / "deeper").is_dir()


def test_a_directory_that_is_not_a_flower_app_is_refused(tmp_path, capsys):
    assert main(["demo", "--app", str(tmp_path), "--out", str(tmp_path / "demo")]) == 2
    assert "no Flower app" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists(), "refused before anything is written"


@pytest.mark.e2e
def test_the_demo_runs_every_step_and_labels_its_data_and_numbers(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    with isolated_flower(tmp_path) as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    data = out / demo.DATA_FOLDER
    assert "NOT CIFAR-100" in (data / "NOT-CIFAR-100.txt").read_text()
    assert (data / "cifar-100-python" / "train").is_file(), "CIFAR-100's on-disk format"
    for command in ("fedtalos run", "fedtalos central --config", "fedtalos sweep", "fedtalos summarize"):
        assert f"$ {command}" in printed, command

    runs = out / "runs"
    finished = sorted(p.parent.name for p in runs.glob("*/summary.json"))
    assert len(finished) == 4, finished  # federated, editing, two sweep configurations
    assert [n for n in finished if n.startswith("demo-")] == ["demo-constant-seed0", "demo-cosine-seed0"]
    federated = next(runs.glob("fedavg-*"))  # a completed `flwr run` and what it writes
    rows = [json.loads(line) for line in (federated / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["clients_ok"] == 2 for r in rows)
    summary = json.loads((federated / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["final"]["test_acc"] is not None
    editing = next(runs.glob("central-least-sensitive-*"))
    assert (editing / "mask.safetensors").is_file()

    # The numbers are followed by the note that they are not results, then the figures' path.
    table_end = printed.index("table: ")
    assert printed.index(demo.CHANCE_NOTE) > table_end
    figures = runs / "summary" / "figures"
    assert f"figures: {figures}" in printed and list(figures.glob("*.png"))
