"""One ``key=value`` form for ``run -c``, ``central -c`` and ``sweep --set``: typed by key, relative paths made
absolute, every bad pair named, a grid file answered with ``fedtalos sweep``; ``run APP --check`` reads APP's run
config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedtalos.cli import run as run_command
from fedtalos.cli.main import main
from fedtalos.cli.settings import parse_settings
from fedtalos.config import ConfigError, RunConfig
from tests.support.tiny import offline_tiny

REPO = Path(__file__).resolve().parents[2]
GRID = '[sweep]\nkind = "federated"\nfamily = "g"\nseeds = [0]\n\n[grid]\nlocal-steps = [1, 2]\n'


def test_values_are_read_as_their_keys_type_and_strings_need_no_quotes():
    settings = parse_settings(
        ['weights-path=/abs/x partitioning=noniid lr=0.05 seed=3 progress=false run-name="my run"', "eval-every=2"],
        "--run-config",
    )
    assert settings == {
        "weights-path": "/abs/x",
        "partitioning": "noniid",
        "lr": 0.05,
        "seed": 3,
        "progress": False,
        "run-name": "my run",
        "eval-every": 2,
    }
    assert type(parse_settings(["lr=1"], "-c")["lr"]) is float, "an integer is a valid number"
    assert parse_settings(["partitioning='noniid'"], "-c") == {"partitioning": "noniid"}, "quotes are allowed"


def test_every_bad_pair_is_named_at_once():
    with pytest.raises(ConfigError) as e:
        parse_settings(['lr="0.1" seed=1.5 local-step=8 progress=yes stray lr-min=x'], "--set")
    assert e.value.problems == [
        "--set 'lr=\"0.1\"': must be a number, got a string (write it without quotes: lr=0.1)",
        "--set 'seed=1.5': must be an integer, got 1.5",
        "--set 'local-step=8': unknown key 'local-step' (did you mean 'local-steps'?)",
        "--set 'progress=yes': must be true/false",
        "--set 'stray': not a key=value pair (write key=value; quote a value with spaces: key=\"a b\")",
        "--set 'lr-min=x': must be a number",
    ]


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    settings = parse_settings(["output-root=runs dataset-root=~/data weights-path=/w/m.safetensors"], "-c")
    assert settings == {
        "output-root": str(tmp_path / "runs"),
        "dataset-root": "~/data",
        "weights-path": "/w/m.safetensors",
    }
    RunConfig.from_mapping(settings)  # what Flower's SuperLink receives passes the absolute-path check


def test_a_grid_file_is_answered_with_the_sweep_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    assert main(["run", str(REPO), "-c", str(grid), "--check"]) == 2
    assert f"this is a sweep grid: `fedtalos sweep {grid}`" in capsys.readouterr().err
    assert main(["central", "--config", str(grid), "--output-root", str(tmp_path / "runs")]) == 2
    assert f"this is a sweep grid: `fedtalos sweep {grid}`" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", str(REPO), "--check", "-c", "partitioning=noniid lr=fast output-root=ROOT"],
        ["central", "-c", "partitioning=noniid lr=fast", "--output-root", "ROOT"],
        ["sweep", "GRID", "--dry-run", "--set", "partitioning=noniid lr=fast", "--output-root", "ROOT"],
    ],
)
def test_the_same_pairs_everywhere(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    argv = [a.replace("GRID", str(grid)).replace("ROOT", str(tmp_path / "runs")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'lr=fast': must be a number" in err and "partitioning" not in err, "the unquoted string is accepted"
    assert not (tmp_path / "runs").exists()


def _app_copy(tmp_path: Path, changes: dict[str, str]) -> Path:
    """The repository's Flower app's pyproject.toml with some run-config lines rewritten."""
    app = tmp_path / "app"
    app.mkdir()
    text = (REPO / "pyproject.toml").read_text()
    for key, literal in changes.items():
        text, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {literal}", text)
        assert count == 1, key
    (app / "pyproject.toml").write_text(text)
    return app


def test_check_reads_the_apps_run_config_under_the_settings(
    fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    app = _app_copy(
        tmp_path,
        {
            "model": '"vit-tiny-test"',
            "image-size": "32",
            "local-steps": "8",
            "num-server-rounds": "7",
            "num-clients": "12",
        },
    )
    tiny = offline_tiny(fake_cifar_root, tmp_path / "runs", {"seed": 5})
    settings = " ".join(f"{k}={v}".lower() if isinstance(v, bool) else f"{k}={v}" for k, v in tiny.items())
    assert run_command.main([str(app), "--check", "-c", settings, "-c", "num-clients=10"]) == 0
    out = capsys.readouterr().out
    expected = RunConfig.from_mapping({**tiny, "local-steps": 8, "num-server-rounds": 7, "num-clients": 10}).run_dir()
    assert f"run directory: {expected}\n" in out and "-J8-" in expected.name
    assert "num-supernodes: 10 (num-clients)" in out, "from the settings, over the app's 12"


def test_a_directory_that_is_not_a_flower_app_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run_command.main(["/no/such/app", "--check"]) == 2
    assert "APP '/no/such/app': no such directory" in capsys.readouterr().err
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert run_command.main([str(tmp_path), "--check"]) == 2
    assert "not a Flower app (its pyproject.toml has no [tool.flwr.app.components])" in capsys.readouterr().err
