"""``fedtalos run``: bad run-config strings get one clear error first; the local preflight runs on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w
import torch

from fedtalos.cli import run as run_command
from fedtalos.cli.settings import parse_settings
from fedtalos.run.phases import total_units
from fedtalos.task import resources
from fedtalos.tracking.rundir import SUMMARY_FILE
from tests.support.fakeruns import train_rows, write_run
from tests.support.tiny import offline_tiny

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def nothing_may_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory, and a ``flwr run`` / preflight that fail the test if they are reached."""

    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(run_command, "flwr_run", reached)
    monkeypatch.setattr(run_command.RunConfig, "from_mapping", reached)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lr=0.1 lr=0.2", "--run-config 'lr=0.2': lr is given twice (lr=0.1 and lr=0.2); give each key once"),
        ('seed=1 run-name="a" seed=1', "seed is given twice"),
        ("lr=[", "--run-config 'lr=[': must be a number"),
    ],
)
def test_a_bad_run_config_string_is_one_clear_error_before_anything_starts(
    value: str, message: str, nothing_may_start: Path, capsys: pytest.CaptureFixture[str]
):
    assert run_command.main([str(REPO), "-c", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedtalos run: invalid run configuration (1 problem(s))") and message in err, err
    assert "Traceback" not in err and list(nothing_may_start.iterdir()) == []


def test_a_later_string_may_override_an_earlier_ones_key():
    # as flwr run merges several --run-config strings
    assert parse_settings(["lr=0.1 seed=3", "lr=0.2"], "--run-config") == {"lr": 0.2, "seed": 3}


def test_preflight_builds_the_model_on_the_cpu_and_keeps_nothing(fake_cifar_root, tmp_path, monkeypatch):
    """On a CUDA machine the preflight used to build the model on cuda:0 and keep it cached for the whole run."""
    built = []
    real = resources.resolve_device

    def recording(name):
        built.append(str(real(name)))
        return real(name) if built[-1] == "cpu" else torch.device("meta")  # a model on "cuda" would fail here

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve_device('auto') → cuda
    monkeypatch.setattr(resources, "resolve_device", recording)
    resources.get_resources.cache_clear()
    toml = tmp_path / "overrides.toml"
    values = offline_tiny(fake_cifar_root, tmp_path / "runs", {"device": "auto", "seed": 92})
    toml.write_bytes(tomli_w.dumps(values).encode())
    assert run_command.main([".", "--run-config", str(toml), "--check"]) == 0
    assert built == ["cpu"]
    assert resources.get_resources.cache_info().currsize == 0


def test_preflight_refuses_cuda_n(fake_cifar_root, tmp_path, capsys: pytest.CaptureFixture):
    toml = tmp_path / "overrides.toml"
    toml.write_bytes(tomli_w.dumps(offline_tiny(fake_cifar_root, tmp_path / "runs", {"device": "cuda:1"})).encode())
    assert run_command.main([".", "--run-config", str(toml), "--check"]) == 2
    assert "in Flower's simulation every client actor sees only the GPU" in capsys.readouterr().err


def test_paths_from_the_environment_go_to_flower_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A SuperLink started with another environment must not put the run elsewhere than this command said."""
    sent = []

    def fake_flwr_run(app, settings, federation, **kwargs):
        sent.append(settings)
        return SimpleNamespace(ok=True)

    monkeypatch.setattr(run_command, "flwr_run", fake_flwr_run)
    monkeypatch.setattr(run_command, "preflight_locally", lambda config: None)
    monkeypatch.setattr(run_command, "default_federation_config", lambda config, extra: "num-supernodes=4")
    monkeypatch.setenv("FEDTALOS_OUTPUT_ROOT", str(tmp_path / "env-runs"))
    monkeypatch.delenv("FEDTALOS_DATA", raising=False)
    assert run_command.main([str(REPO), "-c", "seed=2"]) == 0
    assert run_command.main([str(REPO), "-c", f"seed=2 output-root={tmp_path / 'mine'}"]) == 0
    assert sent == [
        {"seed": 2, "output-root": str(tmp_path / "env-runs")},
        {"seed": 2, "output-root": str(tmp_path / "mine")},
    ], "the data root stays unset: no $FEDTALOS_DATA"


def test_a_finished_run_is_not_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(run_command, "flwr_run", reached)
    monkeypatch.setattr(run_command, "preflight_locally", reached)
    settings = f"output-root={tmp_path} model=vit-tiny-test num-server-rounds=3 lr-schedule=constant"
    _, config = run_command.settings_and_config(REPO, [settings])
    run_dir = write_run(config.to_dict(), train_rows(3, 0.4), finished=False)
    (run_dir / SUMMARY_FILE).write_text(json.dumps({"rounds": total_units(config, "federated")}))
    assert run_command.main([str(REPO), "-c", settings]) == 0
    assert f"already finished: {run_dir}" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="the run started"):  # a longer run continues the same directory
        run_command.main([str(REPO), "-c", settings.replace("num-server-rounds=3", "num-server-rounds=5")])
