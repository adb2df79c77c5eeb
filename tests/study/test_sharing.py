"""No run twice: runs of the same identity planned by two grid files run once and both families read them
(planning and a stand-in runner only)."""

from __future__ import annotations

import io
from pathlib import Path

from fedtalos.study.plan import plan_files, planned_as, read_manifests
from fedtalos.study.sweep import Sweep
from tests.study.test_sweep_driver import StandIn
from tests.support.fakeruns import train_rows, write_run

BASE = 'num-clients = 4\nfraction-train = 0.5\nnum-server-rounds = 3\nlr-schedule = "constant"\n'


def _grids(tmp_path: Path) -> list[Path]:
    """Two families; both plan J = 2 at lr 0.01 (``wide-J2`` and ``lrs-lr0.01``), each has a run of its own."""
    wide = tmp_path / "wide.toml"
    wide.write_text(f'[sweep]\nfamily = "wide"\nseeds = [0]\n[base]\n{BASE}[grid]\nlocal-steps = [1, 2]\n')
    lrs = tmp_path / "lrs.toml"
    lrs.write_text(f'[sweep]\nfamily = "lrs"\nseeds = [0]\n[base]\n{BASE}local-steps = 2\n[grid]\nlr = [0.01, 0.1]\n')
    return [wide, lrs]


def test_two_grid_files_that_plan_the_same_run_run_it_once_and_both_read_it(tmp_path: Path):
    root = tmp_path / "runs"
    runs = plan_files(_grids(tmp_path), output_root=root)
    assert [(r.name, r.shares) for r in runs] == [
        ("wide-J1-seed0", ""),
        ("wide-J2-seed0", ""),
        ("lrs-lr0.01-seed0", "wide-J2-seed0"),
        ("lrs-lr0.1-seed0", ""),
    ]
    shared = runs[2]
    assert shared.run_dir == root / "wide-J2-seed0" and shared.family == "lrs" and shared.label == "lrs-lr0.01"
    assert "shares wide-J2-seed0" in shared.settings()
    runner = StandIn()
    out = io.StringIO()
    report = Sweep(runs, {"federated": runner}, out=out, poll_s=0.05).run()
    assert runner.calls == ["wide-J1-seed0", "wide-J2-seed0", "lrs-lr0.1-seed0"], "the shared run ran once"
    assert report.ok and "lrs-lr0.01-seed0 → wide-J2-seed0" in out.getvalue()
    assert sorted(p.name for p in root.iterdir() if p.name != "_sweeps") == [
        "lrs-lr0.1-seed0",
        "wide-J1-seed0",
        "wide-J2-seed0",
    ]
    assert read_manifests(root)["lrs-lr0.01-seed0"]["run"] == "wide-J2-seed0"
    families = {e["family"]: e["label"] for e in planned_as(root)["wide-J2-seed0"]}
    assert families == {"wide": "wide-J2", "lrs": "lrs-lr0.01"}, "both families plan the shared directory"
    assert planned_as(root)["wide-J2-seed0"][0]["family"] == "wide", "its own entry first"


def test_a_run_already_on_disk_under_another_name_is_shared(tmp_path: Path):
    root = tmp_path / "runs"
    wide, lrs = _grids(tmp_path)
    for run in plan_files([wide], output_root=root):
        write_run(run.overrides, train_rows(3, 0.5))
    runs = plan_files([lrs], output_root=root)  # a later sweep of the other family alone
    assert [(r.name, r.shares) for r in runs] == [("lrs-lr0.01-seed0", "wide-J2-seed0"), ("lrs-lr0.1-seed0", "")]
    runner = StandIn()
    report = Sweep(runs, {"federated": runner}, out=io.StringIO()).run()
    assert runner.calls == ["lrs-lr0.1-seed0"] and report.skipped == ["lrs-lr0.01-seed0"]


def test_runs_that_differ_in_length_or_evaluations_are_not_shared(tmp_path: Path):
    wide, lrs = _grids(tmp_path)
    lrs.write_text(lrs.read_text().replace("[grid]", "eval-every = 2\n[grid]"))
    assert all(not r.shares for r in plan_files([wide, lrs], output_root=tmp_path / "runs"))
