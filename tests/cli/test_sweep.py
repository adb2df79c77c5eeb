"""``fedtalos sweep`` scaling options: bad --parallel / --gpus / --shard values are refused before anything is planned
or written, and --shard 1/2 + --shard 2/2 plan every run exactly once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedtalos.cli.main import main

GRID = """
[sweep]
kind = "federated"
family = "shd"
seeds = [0, 1, 2]

[base]
num-server-rounds = 1

[grid]
local-steps = [1, 2]
"""


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--parallel", "0"], "--parallel 0: must be a whole number >= 1"),
        (["--parallel", "-3"], "--parallel -3"),
        (["--gpus", "0,x"], "x is not a GPU index"),
        (["--gpus", "1,1"], "a GPU is listed twice"),
        (["--gpus", "99"], "CUDA GPU(s); no GPU 99"),
        (["--shard", "3/2"], "--shard '3/2': use k/N"),
    ],
)
def test_bad_scaling_options_are_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
):
    grid = tmp_path / "shd.toml"
    grid.write_text(GRID)
    root = tmp_path / "runs"
    assert main(["sweep", str(grid), "--output-root", str(root), *option]) == 2
    assert message in capsys.readouterr().err
    assert not root.exists(), "nothing was written"


def test_two_shards_plan_every_run_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    grid = tmp_path / "shd.toml"
    grid.write_text(GRID)
    args = ["sweep", str(grid), "--output-root", str(tmp_path / "runs"), "--dry-run"]
    planned = {}
    for part in ("", "1/2", "2/2"):
        assert main([*args, *(["--shard", part] if part else [])]) == 0
        planned[part] = re.findall(r"^ +\d+ +(shd-\S+)", capsys.readouterr().out, re.M)
    assert len(planned[""]) == 6
    assert planned["1/2"] == planned[""][0::2] and planned["2/2"] == planned[""][1::2]
    assert sorted(planned["1/2"] + planned["2/2"]) == sorted(planned[""])
