"""The study's compute per family (``fedtalos sweep --dry-run``): counted by hand on small grids, planning only."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtalos.cli.main import main
from fedtalos.study.compute import CARDS, family_costs, run_cost, study_gpu_hours
from fedtalos.study.grid import parse_grid
from fedtalos.study.plan import plan, plan_files

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _one(tmp_path: Path, base: dict, kind: str = "federated"):
    return plan(parse_grid({"sweep": {"kind": kind, "family": "one"}, "base": base}), output_root=tmp_path)[0]


def test_a_federated_editing_run_by_hand(tmp_path: Path):
    base = {"num-clients": 100, "fraction-train": 0.1, "local-steps": 4, "num-server-rounds": 400, "eval-every": 20}
    edit = {"head": "ridge", "mask-rule": "least-sensitive", "calibration-rounds": 4, "fisher-samples": 64}
    cost = run_cost(_one(tmp_path, {**base, **edit}))
    assert cost.client_steps == 400 * 10 * 4 and cost.train_images == 400 * 10 * 4 * 32
    assert cost.fisher_samples == 4 * 10 * 64, "R' rounds × the 10-client cohort × 64 samples"
    assert cost.forwards == 45_000 + 20 * 5_000 + 10_000, "ridge features, 20 validations, the final test"
    assert cost.client_rounds == 400 * 10 + 4 * 10 + 100, "training, calibration, the ridge head's one query each"
    hours = cost.gpu_hours(CARDS[0])
    units = 400 * 10 * 4 * 32 + 4 * 10 * 64 + (45_000 + 110_000) / 3
    assert hours == pytest.approx((units / CARDS[0].images_per_s + 0.04 * cost.client_rounds + 30) / 3600)


def test_a_centralized_run_by_hand(tmp_path: Path):
    cost = run_cost(_one(tmp_path, {"epochs": 20, "test-every-eval": True}, kind="centralized"))
    assert cost.client_steps == 20 * 1407, "⌈45,000 / 32⌉ steps per epoch"
    assert cost.forwards == 20 * (5_000 + 10_000) + 10_000 and cost.fisher_samples == 0


def test_the_dry_run_prints_the_compute_per_family_and_a_shared_run_counts_once(tmp_path: Path, capsys):
    files = [CONFIGS / "sparse.toml", CONFIGS / "rules.toml"]
    runs = plan_files(files, output_root=tmp_path)
    costs = family_costs(runs)
    sparse_alone = family_costs(plan_files(files[:1], output_root=tmp_path))["sparse"]
    assert costs["sparse"].client_steps == sparse_alone.client_steps == 48 * 400 * 10 * 4
    assert costs["rules"].runs == sum(r.family == "rules" for r in runs) - 3, "rules-iid-least-sensitive is shared"
    assert main(["sweep", *map(str, files), "--dry-run", "--output-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "compute (an estimate" in out and "GPU-h A100/H100" in out and "GPU-h Colab T4" in out
    total = costs["sparse"].client_steps + costs["rules"].client_steps
    assert any(line.split()[:1] == ["total"] and f"{total:,}" in line for line in out.splitlines())
    assert "(129 to run: 3 share the directory of an identical run)" in out


def test_gpu_hours_at_a_measured_step_time_scale_with_it_and_match_the_assumed_card(tmp_path: Path):
    base = {"num-clients": 100, "fraction-train": 0.1, "local-steps": 4, "num-server-rounds": 400, "eval-every": 20}
    runs = [_one(tmp_path, base)]
    cost = run_cost(runs[0])
    units = 400 * 10 * 4 * 32 + (20 * 5_000 + 10_000) / 3  # training images, 20 validations and the test
    bare = {"client_round_overhead_s": 0.0, "run_startup_s": 0.0}
    fast, slow = study_gpu_hours(runs, 0.02, **bare), study_gpu_hours(runs, 0.05, **bare)
    assert fast["one"] == fast["total"] == pytest.approx(units * 0.02 / 32 / 3600)
    assert slow["total"] == pytest.approx(2.5 * fast["total"]), "linear in the step time"
    framework = study_gpu_hours(runs, 0.02, client_round_overhead_s=0.1, run_startup_s=20.0)["total"]
    assert framework - fast["total"] == pytest.approx((0.1 * 400 * 10 + 20.0) / 3600)
    assert study_gpu_hours(runs, 32 / CARDS[0].images_per_s)["total"] == pytest.approx(cost.gpu_hours(CARDS[0]))
    with pytest.raises(ValueError, match="positive"):
        study_gpu_hours(runs, 0.0)


def test_gpu_hours_of_the_grid_files_sum_over_families(tmp_path: Path):
    runs = plan_files([CONFIGS / "sparse.toml", CONFIGS / "rules.toml"], output_root=tmp_path)
    hours = study_gpu_hours(runs, 0.03)
    assert set(hours) == {"sparse", "rules", "total"}
    assert hours["total"] == pytest.approx(hours["sparse"] + hours["rules"]) and hours["sparse"] > 0
