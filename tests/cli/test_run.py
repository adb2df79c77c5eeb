"""``fedtalos run``: run-config strings that Flower's parser answers with a traceback get one clear error first."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtalos.cli import run as run_command


@pytest.fixture
def nothing_may_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory, and a ``flwr run`` / preflight that fail the test if they are reached."""

    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(run_command, "flwr_run", reached)
    monkeypatch.setattr(run_command, "merged_config", reached)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lr=0.1 lr=0.2", "--run-config 'lr=0.1 lr=0.2': lr is given twice (lr=0.1 and lr=0.2); give each key once"),
        ('seed=1 run-name="a" seed=1', "seed is given twice"),
        ("lr=[", "is in an invalid format"),
    ],
)
def test_a_bad_run_config_string_is_one_clear_error_before_anything_starts(
    value: str, message: str, nothing_may_start: Path, capsys: pytest.CaptureFixture[str]
):
    assert run_command.main([".", "-c", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedtalos run: invalid run configuration (1 problem(s))") and message in err, err
    assert "Traceback" not in err and list(nothing_may_start.iterdir()) == []


def test_a_later_string_may_override_an_earlier_ones_key():
    # as flwr run merges several --run-config strings
    assert run_command.parse_run_config(["lr=0.1 seed=3", "lr=0.2"]) == {"lr": 0.2, "seed": 3}
