"""configs/robust.toml: the heterogeneity axis (Nc ∈ {1, 5}, iid; J = 4) under FedMedian and FedTrimmedAvg, planned
with ``fedtalos sweep --dry-run`` as a user would, and its runs checked against FedAvg's of configs/noniid.toml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedtalos.cli.main import main
from fedtalos.config import RunConfig
from fedtalos.study.plan import plan_files

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_robust_grid_plans_every_rule_at_every_heterogeneity(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["sweep", str(CONFIGS / "robust.toml"), "--output-root", str(tmp_path / "runs"), "--dry-run"]
    assert main(args) == 0
    names = re.findall(r"^ +\d+ +(robust-\S+)", capsys.readouterr().out, re.M)
    expected = {
        f"robust-{rule}-{shards}-seed{seed}"
        for rule in ("fedmedian", "fedtrimmedavg")
        for shards in ("nc1", "nc5", "iid")
        for seed in (0, 1, 2)
    }
    assert len(names) == len(expected) and set(names) == expected
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"


def test_the_robust_runs_differ_from_fedavgs_only_in_the_strategy(tmp_path: Path):
    # the FedAvg side of the comparison is configs/noniid.toml at J = 4 (random head): same rounds, evaluations, K, C
    robust = plan_files([CONFIGS / "robust.toml"], output_root=tmp_path)
    fedavg = plan_files([CONFIGS / "noniid.toml"], output_root=tmp_path)
    # the main arm: random head, the default local momentum and lr (not the local-momentum control)
    defaults = RunConfig.defaults()
    main_arm = [
        r
        for r in fedavg
        if r.config.local_steps == 4
        and r.config.head == "train"
        and (r.config.momentum, r.config.lr) == (defaults["momentum"], defaults["lr"])
    ]
    by_point = {
        (r.seed, r.config.partitioning, r.config.classes_per_client if r.config.partitioning == "noniid" else 0): r
        for r in main_arm
    }
    assert len(by_point) == len(main_arm), "one FedAvg twin per point"
    for run in robust:
        c = run.config
        twin = by_point[(run.seed, c.partitioning, c.classes_per_client if c.partitioning == "noniid" else 0)].config
        assert c.strategy in ("fedmedian", "fedtrimmedavg") and twin.strategy == "fedavg"
        assert c.replace(strategy="fedavg").result_dict() == twin.result_dict()
        assert (c.num_server_rounds, c.eval_every) == (twin.num_server_rounds, twin.eval_every)
