"""Which runs the study figures draw, read from the CSV beside each figure: one-round analysis runs never stand in
for trained runs, the dense reference is the matched dense control (same head, no mask file), and each point is
paired with it seed by seed.

The output root is built so that the wrong choice is easy: the analysis family ``maskagree`` sorts first and has
the most runs at the grid points of ``rules`` and ``sparse``; the mask-file family ``masks`` stores mask-rule 'none'
and sorts before ``noniid``, whose dense run with a trained head sorts before the one with the frozen ridge head.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from fedtalos.cli.summarize import main as summarize_main
from fedtalos.study.grid import parse_grid
from fedtalos.study.plan import plan, write_manifest
from fedtalos.tracking.mask_artifact import MASK_SOURCE_FILE
from tests.support.fakeruns import train_rows, write_run

COMMON = {"num-clients": 100, "fraction-train": 0.1, "model": "vit-tiny-test", "local-steps": 2}
EDITING = {**COMMON, "head": "ridge", "sparsity": 0.9, "calibration-rounds": 2}
# final test accuracy per seed: the paired differences against the dense control are known exactly
SEED_SHIFT = {0: 0.0, 1: 0.04, 2: -0.02}
DENSE_RIDGE = 0.60
RULE_ACC = {"least-sensitive": 0.50, "random": 0.40}


def _family(root: Path, spec: dict[str, Any], acc: Any, extra: Any = None) -> None:
    runs = plan(parse_grid(spec), output_root=root)
    write_manifest(runs)
    for run in runs:
        c = run.config
        rows = train_rows(c.num_server_rounds, acc(c) + SEED_SHIFT[c.seed], bytes_up=1_000_000)
        path = write_run(run.overrides, rows)
        if extra:
            extra(path, c)


def _analysis(path: Path, c: Any) -> None:
    (path / "analysis").mkdir()
    # the keys study/agreement.py writes: clients outside the calibration cohort, its members apart, the floor
    record = {
        "mean_jaccard": 0.5,
        "cohort_mean_jaccard": 0.9,
        "pairwise_jaccard": 0.4,
        "noise_floor_jaccard": 0.3,
        "chance_jaccard": 0.05,
    }
    (path / "analysis" / "mask_agreement.json").write_text(json.dumps(record))


def _mask_source(path: Path, c: Any) -> None:
    source = {"path": c.mask_path, "hash": "ab" * 32, "calibrated": "federated", "rule": "least-sensitive"}
    (path / MASK_SOURCE_FILE).write_text(json.dumps({**source, "sparsity": 0.9, "head": "ridge"}))


def write_root(root: Path, mask_file: Path) -> Path:
    seeds = [0, 1, 2]
    mask_file.write_bytes(b"")  # the plan checks that a mask-path exists; the runs are fakes and never read it
    rules = ["least-sensitive", "most-sensitive", "random"]
    # one fine-tuning round at the grid points of rules and sparse, three seeds and three rules: the most runs
    _family(
        root,
        {
            "sweep": {"family": "maskagree", "seeds": seeds},
            "base": {**EDITING, "num-server-rounds": 1, "eval-every": 1},
            "grid": [
                {"partitioning": ["iid"], "mask-rule": rules},
                {"partitioning": "noniid", "classes-per-client": [1], "mask-rule": rules},
            ],
        },
        lambda c: 0.02,
        _analysis,
    )
    _family(
        root,
        {
            "sweep": {"family": "masks", "seeds": seeds},
            "base": {**COMMON, "num-server-rounds": 4, "partitioning": "iid"},
            "grid": {"mask-path": [str(mask_file)]},
        },
        lambda c: 0.90,
        _mask_source,
    )
    _family(
        root,
        {
            "sweep": {"family": "noniid", "seeds": seeds},
            "base": {**COMMON, "num-server-rounds": 4, "partitioning": "iid"},
            "grid": {"head": ["train", "ridge"]},
        },
        lambda c: 0.80 if c.head == "train" else DENSE_RIDGE,
    )
    _family(
        root,
        {
            "sweep": {"family": "rules", "seeds": seeds[:2]},
            "base": {**EDITING, "num-server-rounds": 4, "partitioning": "iid"},
            "grid": {"mask-rule": ["least-sensitive", "random"]},
        },
        lambda c: RULE_ACC[c.mask_rule],
    )
    _family(
        root,
        {
            "sweep": {"family": "sparse", "seeds": seeds[:2]},
            "base": {**EDITING, "num-server-rounds": 4, "partitioning": "iid", "mask-rule": "least-sensitive"},
            "grid": {"sparsity": [0.5, 0.9], "calibration-rounds": [1, 2]},
        },
        lambda c: RULE_ACC["least-sensitive"] + (0.1 if c.sparsity == 0.5 else 0.0),
    )
    return root


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fedtalos summarize`` over the root; the figures folder."""
    base = tmp_path_factory.mktemp("selection")
    root = write_root(base / "runs", base / "federated-s0.9.safetensors")
    assert summarize_main([str(root), "--out", str(base / "summary")]) == 0
    return base / "summary" / "figures"


def read(figures: Path, name: str) -> list[dict[str, str]]:
    with open(figures / f"{name}.csv") as f:
        return list(csv.DictReader(f))


def runs_of(rows: list[dict[str, str]]) -> set[str]:
    return {name for row in rows for name in row["runs"].split()}


ACCURACY_FIGURES = ("rules", "accuracy-vs-sparsity", "accuracy-vs-calibration-rounds", "communication")


@pytest.mark.parametrize("name", ACCURACY_FIGURES)
def test_accuracy_figures_draw_no_analysis_run_and_no_mask_file_run(figures: Path, name: str):
    drawn = runs_of(read(figures, name))
    assert drawn, f"{name}: draws runs"
    assert not {r for r in drawn if r.startswith(("maskagree-", "masks-"))}, f"{name}: {sorted(drawn)}"
    assert {r.split("-")[0] for r in drawn} <= {"rules", "sparse", "noniid"}
    assert {row["panel"] for row in read(figures, name)} == {"iid"}, "no facet of the analysis runs alone (Nc=1)"


def test_the_rule_bars_are_the_trained_runs_and_the_dense_bar_the_ridge_head_control(figures: Path):
    bars = {row["series"]: row for row in read(figures, "rules")}
    assert set(bars) == {"least-sensitive", "random", "dense FedAvg (no mask), ridge head"}
    assert bars["least-sensitive"]["runs"] == "rules-least-sensitive-seed0 rules-least-sensitive-seed1"
    assert bars["least-sensitive"]["also"] == "sparse-s0.9-R2", "the same configuration, planned by sparse too"
    assert float(bars["least-sensitive"]["value"]) == pytest.approx(100 * (0.50 + 0.02))
    dense = bars["dense FedAvg (no mask), ridge head"]
    assert dense["runs"].split() == [f"noniid-head-ridge-seed{s}" for s in (0, 1, 2)]
    assert int(dense["n"]) == 3


def test_the_sparsity_point_at_90_percent_is_a_trained_run(figures: Path):
    rows = [r for r in read(figures, "accuracy-vs-sparsity") if r["x"] == "90.0"]
    assert {r["series"] for r in rows} == {"least-sensitive, R' = 1", "least-sensitive, R' = 2", "random"}
    at_r2 = next(r for r in rows if r["series"] == "least-sensitive, R' = 2")
    assert at_r2["runs"] == "sparse-s0.9-R2-seed0 sparse-s0.9-R2-seed1", "from the family with most points"
    assert at_r2["also"] == "rules-least-sensitive"
    dense = [r for r in read(figures, "accuracy-vs-sparsity") if r["series"].startswith("dense")]
    assert [r["runs"].split()[0] for r in dense] == ["noniid-head-ridge-seed0"]


def test_calibration_rounds_have_one_point_each(figures: Path):
    rows = [r for r in read(figures, "accuracy-vs-calibration-rounds") if not r["series"].startswith("dense")]
    points = [(r["series"], r["x"]) for r in rows]
    assert len(points) == len(set(points)) == 4, "R' ∈ {1, 2} at sparsity 0.5 and 0.9, once each"


def test_points_are_paired_with_the_dense_control_seed_by_seed(figures: Path):
    bars = {row["series"]: row for row in read(figures, "rules")}
    random = bars["random"]
    assert random["reference"] == "noniid-head-ridge"
    # seeds 0 and 1 pair; the control's seed 2 has no partner: the per-seed shifts cancel, the std is 0
    assert float(random["paired_diff"]) == pytest.approx(100 * (0.40 - DENSE_RIDGE))
    assert float(random["paired_diff_std"]) == pytest.approx(0.0, abs=1e-9)
    assert int(random["paired_n"]) == 2
    assert float(random["std"]) == pytest.approx(100 * 0.04 / 2**0.5), "unpaired: the seeds' spread"


def test_the_mask_file_family_is_an_editing_run_with_its_files_head(figures: Path):
    from fedtalos.study.results import collect

    groups, _, _ = collect(figures.parent.parent / "runs")
    by_label = {g.label: g for g in groups}
    masks = by_label["masks-mask-federated-s0.9"]
    assert masks.sparse and masks.head == "ridge"
    assert not by_label["noniid-head-ridge"].sparse and by_label["noniid-head-train"].head == "train"
    rows = {r["configuration"]: r for r in csv.DictReader((figures.parent / "summary.csv").read_text().splitlines())}
    assert rows["masks-mask-federated-s0.9"]["reference"] == "noniid-head-ridge"
    assert float(rows["masks-mask-federated-s0.9"]["final_test_acc_paired_diff_mean"]) == pytest.approx(0.30)
    assert rows["noniid-head-train"]["reference"] == "", "a dense configuration has no dense reference"


def test_the_summary_names_what_the_accuracy_figures_leave_out(figures: Path):
    notes = (figures.parent / "summary.md").read_text().split("Left out of the accuracy figures")[1]
    assert "maskagree-iid-least-sensitive (J × rounds = 2)" in notes and "rules-" not in notes


def test_the_analysis_figure_draws_the_analysis_runs(figures: Path):
    assert {r.split("-")[0] for r in runs_of(read(figures, "mask-agreement"))} == {"maskagree"}


def test_the_agreement_figure_reads_the_out_of_sample_keys(figures: Path):
    rows = read(figures, "mask-agreement")
    expected = {
        "mean_jaccard": ("clients outside the calibration cohort vs aggregated mask", 0.5),
        "cohort_mean_jaccard": ("calibration-cohort members vs aggregated mask (in-sample)", 0.9),
        "pairwise_jaccard": ("client vs client", 0.4),
        "noise_floor_jaccard": ("iid subset vs the aggregate that left it out (noise floor)", 0.3),
    }
    assert {r["metric"] for r in rows} == set(expected)
    for row in rows:
        what, value = expected[row["metric"]]
        assert row["series"].startswith(f"{what} (") and float(row["value"]) == pytest.approx(value), row
    summary = {r["configuration"]: r for r in csv.DictReader((figures.parent / "summary.csv").read_text().splitlines())}
    analysed = summary["maskagree-iid-least-sensitive"]
    assert float(analysed["mask_jaccard_mean"]) == 0.5 and float(analysed["mask_jaccard_cohort_mean"]) == 0.9
    assert float(analysed["mask_jaccard_floor_mean"]) == 0.3
