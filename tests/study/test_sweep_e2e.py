"""A tiny sweep through the real commands: 2 configurations × 2 seeds, one run interrupted before the sweep starts,
`fedtalos sweep` (4 real `flwr run`s: 3 new, 1 resumed), the same sweep again (nothing to do), `fedtalos summarize`.

The interrupted run is made by the real ServerApp code killed with SIGKILL right after its first checkpoint (the
in-process grid of tests/reliability, which writes exactly what a killed `flwr run` leaves), so that the test needs
four Flower runs rather than five.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedtalos.cli.main import main
from fedtalos.study.grid import load_grid
from fedtalos.study.plan import plan
from fedtalos.study.results import mean_std
from fedtalos.study.tables import format_mean_std
from tests.support.flower import isolated_flower

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

GRID = """
[sweep]
kind = "federated"
family = "tiny"
seeds = [0, 1]

[base]
dataset-root = "{cifar}"
dataset-verify = false
dataset-download = false
model = "vit-tiny-test"
image-size = 32
device = "cpu"
num-clients = 4
fraction-train = 0.5
batch-size = 16
eval-every = 1
lr-schedule = "constant"

[grid]
local-steps = [1, 2]

[scale]
num-server-rounds = {{ per = "local-steps", product = 2 }}
"""


def _interrupt(overrides: dict, tmp_path: Path) -> int:
    """Run the server on the in-process grid and SIGKILL it right after its first checkpoint."""
    config_file = tmp_path / "killed.json"
    config_file.write_text(json.dumps(overrides))
    zygote = subprocess.Popen(
        [sys.executable, "-m", "tests.support.killrun"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = zygote.communicate(json.dumps({"config": str(config_file), "kill_at": "after-checkpoint@1"}) + "\n")
    return json.loads(out.splitlines()[-1])["returncode"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_sweep_end_to_end(
    fake_cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    grid = tmp_path / "tiny.toml"
    grid.write_text(GRID.format(cifar=fake_cifar_root))
    root = tmp_path / "runs"
    runs = plan(load_grid(grid), output_root=root)
    assert [r.name for r in runs] == ["tiny-J1-seed0", "tiny-J2-seed0", "tiny-J1-seed1", "tiny-J2-seed1"]
    assert [r.config.num_server_rounds for r in runs] == [2, 1, 2, 1], "J × rounds = 2"

    # An interrupted run: one of its two rounds checkpointed, no summary.
    killed = runs[2]
    assert _interrupt(killed.overrides, tmp_path) == -signal.SIGKILL
    created = json.loads((killed.run_dir / "config.json").read_text())["created"]
    assert [r["step"] for r in _rows(killed.run_dir)] == [1] and not (killed.run_dir / "summary.json").exists()

    args = ["sweep", str(grid), "--output-root", str(root), "--federation-config", "client-resources-num-cpus=1"]
    assert main([*args, "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert re.search(r"tiny-J1-seed1 +resume \(1/2 rounds\)", planned)
    assert planned.count(" new ") == 3 and "4 runs planned" in planned

    with isolated_flower(tmp_path) as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert main([*args, "--progress-every", "1"]) == 0
        first = capsys.readouterr().out
        # The same command again: everything is finished, nothing runs.
        assert main(args) == 0
        second = capsys.readouterr().out

    assert first.startswith(f"sweep: 4 runs under {root}: 0 finished, 1 to resume, 3 new")
    assert "[2/4] start tiny-J1-seed1 (resuming at 1/2 rounds)" in first
    for i, run in enumerate(runs, 1):
        assert f"[{i}/4] done {run.name} in " in first
    assert "sweep finished: 4/4 runs complete (4 run now, 0 were already finished)" in first
    assert "sweep: 4 runs under" in second and "4 finished, 0 to resume, 0 new" in second
    assert "start" not in second and "(0 run now, 4 were already finished)" in second

    for run in runs:
        rows = _rows(run.run_dir)
        assert [r["step"] for r in rows] == list(range(1, run.config.num_server_rounds + 1)), run.name
        assert rows[-1]["test_acc"] is not None and (run.run_dir / "summary.json").is_file()
        assert run.toml_path.is_file() and "flwr run" in run.log_path.read_text()
    assert json.loads((killed.run_dir / "config.json").read_text())["created"] == created, "resumed, not restarted"
    assert "(resuming)" in killed.log_path.read_text()
    assert not list(root.glob("*.old-*")), "nothing was set aside"

    # The summary: one row per configuration, mean ± std over the two seeds of each.
    assert main(["summarize", str(root)]) == 0
    capsys.readouterr()
    with open(root / "summary" / "summary.csv") as f:
        table = {r["configuration"]: r for r in csv.DictReader(f)}
    assert set(table) == {"tiny-J1", "tiny-J2"}
    markdown = (root / "summary" / "summary.md").read_text()
    for label in table:
        finals = [
            json.loads((root / f"{label}-seed{s}" / "summary.json").read_text())["final"]["test_acc"] for s in (0, 1)
        ]
        mean, std, n = mean_std(finals)
        assert n == 2
        assert table[label]["n_seeds"] == "2" and table[label]["seeds"] == "0 1"
        assert float(table[label]["final_test_acc_mean"]) == pytest.approx(mean)
        assert float(table[label]["final_test_acc_std"]) == pytest.approx(std)
        assert f"| {format_mean_std(mean, std, 100, 2)} |" in markdown
    assert (root / "summary" / "figures" / "curves-tiny.png").is_file()
    assert (root / "summary" / "figures" / "drift-tiny.png").is_file()
