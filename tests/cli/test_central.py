"""``fedtalos central``: options from the run config, errors before compute, resuming, a real kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from fedtalos.cli import central as centralized
from fedtalos.cli import main as cli
from fedtalos.testing.faults import ENV as KILL_ENV
from tests.support.runs import assert_same_tensors, final_weights, rows

REPO = Path(__file__).resolve().parents[2]


def tiny_args(fake_cifar_root: Path, *extra: str) -> list[str]:
    return [
        "--dataset-root",
        str(fake_cifar_root),
        "--no-dataset-verify",
        "--no-dataset-download",
        "--model",
        "vit-tiny-test",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--eval-batch-size",
        "250",
        "--no-progress",
        *extra,
    ]


def test_bad_input_is_one_error_before_any_compute(tmp_path: Path, monkeypatch, capsys, fake_cifar_root):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("learning-rate = 0.1\n")
    code = centralized.main(
        tiny_args(
            fake_cifar_root,
            "--config",
            "bad.toml",
            "--lr",
            "fast",
            "--epochs",
            "0",
            "--lr-schedule",
            "cosine-ish",
            "--output-root",
            "runs",
        )
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fedtalos central: ")
    assert "4 problem(s)" in err
    for fragment in ("--lr 'fast': must be a number", "epochs = 0", "'cosine-ish'", "unknown key 'learning-rate'"):
        assert fragment in err
    assert not (tmp_path / "runs").exists(), "no run directory for a config that cannot run"
    # missing data: also before a run directory exists, with the way out
    code = centralized.main(tiny_args(tmp_path / "nowhere", "--output-root", "runs"))
    assert code == 2 and "dataset-root" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_run_then_the_same_command_resumes_and_plot_compares_runs(tmp_path, monkeypatch, capsys, fake_cifar_root):
    monkeypatch.chdir(tmp_path)
    for schedule in ("cosine", "step"):
        args = tiny_args(fake_cifar_root, "--output-root", "runs", "--epochs", "1", "--lr-schedule", schedule)
        assert centralized.main(args) == 0
        assert "test_acc" in capsys.readouterr().out
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name.split("-")[2] for r in runs] == ["cosine", "step"]
    before = rows(runs[0])
    assert centralized.main(tiny_args(fake_cifar_root, "--output-root", "runs", "--epochs", "1")) == 0
    assert rows(runs[0]) == before and "already finished" in capsys.readouterr().out, "finished: nothing rewritten"
    assert cli.main(["plot", str(runs[0]), str(runs[1]), "--out", "schedules.png"]) == 0
    assert (tmp_path / "schedules.png").stat().st_size > 10_000
    assert cli.main(["plot", str(runs[0])]) == 0, "default x axis: epoch for centralized runs"
    assert (runs[0] / "plots" / "curves-epoch.png").is_file()


def test_sigkill_during_a_checkpoint_write_then_the_same_command(tmp_path, fake_cifar_root):
    args = tiny_args(fake_cifar_root, "--epochs", "1", "--checkpoint-every-steps", "20", "--num-threads", "1")
    straight = tmp_path / "straight"
    assert centralized.main([*args, "--output-root", str(straight)]) == 0
    command = [sys.executable, "-m", "fedtalos.cli", "central", *args, "--output-root", str(tmp_path / "killed")]
    env = dict(os.environ, PYTHONPATH=str(REPO), **{KILL_ENV: "checkpoint:after-tensors@2"})
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    env.pop(KILL_ENV)
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    (a,), (b,) = list(straight.iterdir()), list((tmp_path / "killed").iterdir())
    assert_same_tensors(final_weights(b), final_weights(a))
    assert rows(b) == rows(a)
    assert (
        json.loads((b / "summary.json").read_text())["final"] == json.loads((a / "summary.json").read_text())["final"]
    )


FEDERATED_ONLY = {"local-steps": 8, "strategy": "fedprox", "partitioning": "noniid", "classes-per-client": 5}


def test_federated_only_keys_do_not_name_a_centralized_run(tmp_path: Path, monkeypatch):
    """``--local-steps 8`` (and every other federated-only key) is the centralized run without it."""
    from fedtalos.central import trainer
    from fedtalos.config import RunConfig
    from fedtalos.config.kinds import for_kind
    from fedtalos.run import preflight

    started = []
    monkeypatch.setattr(preflight, "preflight", lambda config, kind: None)
    done = (SimpleNamespace(path=tmp_path), {"final": {}})
    monkeypatch.setattr(trainer, "run_centralized", lambda config: started.append(config) or done)
    root = ["--output-root", str(tmp_path)]
    for extra in ([], ["-c", " ".join(f"{k}={v}" for k, v in FEDERATED_ONLY.items())], ["--local-steps", "8"]):
        assert cli.main(["central", *root, *extra]) == 0
    assert len(started) == 3 and started[0] == started[1] == started[2]
    assert started[1].local_steps == 4 and started[1].strategy == "fedavg"
    plain = RunConfig.from_mapping({"output-root": str(tmp_path)})
    assert started[1].run_dir("centralized") == plain.run_dir("centralized"), "the name of the run without them"
    # a config with the federated keys at their defaults is unchanged: existing run directories keep their names
    assert for_kind(plain, "centralized") == plain
    federated = RunConfig.from_mapping(FEDERATED_ONLY)
    assert for_kind(federated, "federated") == federated, "a federated run reads them all"


def test_a_centralized_config_record_lists_only_the_keys_it_reads(tmp_path: Path):
    from fedtalos.config import RunConfig
    from fedtalos.tracking.rundir import open_run_dir

    config = RunConfig.from_mapping({"output-root": str(tmp_path), "run-name": "c"})
    for kind, has_federated in (("centralized", False), ("federated", True)):
        with open_run_dir(config.replace(run_name=kind), kind) as run_dir:
            record = json.loads((run_dir.path / "config.json").read_text())
        assert ("local-steps" in record["config"]) is has_federated and "lr" in record["config"]
        assert record["result_config"] == config.result_dict(), "the hash's settings are kept"
