"""The control arms are drawn apart from the arms they control, read from the CSV beside each figure: the
local-momentum control of the Nc × J family (momentum 0 at its own lr) has a heat-map panel and drift lines of its
own, and the per-tensor and calibration-coverage arms of the rules family have bars of their own. The root puts each
control at the same partition and J (rule) as its main arm, with another accuracy, so a pooled cell shows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from fedtalos.cli.summarize import main as summarize_main
from fedtalos.study.grid import parse_grid
from fedtalos.study.plan import plan, write_manifest
from tests.support.fakeruns import train_rows, write_run

COMMON = {"num-clients": 100, "fraction-train": 0.1, "model": "vit-tiny-test"}
PARTS: list[dict[str, Any]] = [{"partitioning": ["iid"]}, {"partitioning": "noniid", "classes-per-client": [5]}]
CONTROL = {"momentum": [0.0], "lr": [0.0226]}


def noniid_acc(c: Any) -> float:
    """Main arm 0.6, the momentum control 0.3 (a pooled cell would read 0.45), −0.1 at Nc = 5, −0.05 at J = 4."""
    acc = (0.3 if c.momentum == 0 else 0.6) - (0.1 if c.partitioning == "noniid" else 0.0)
    return acc - (0.05 if c.local_steps == 4 else 0.0) + (0.02 if c.head == "ridge" else 0.0)


def rules_acc(c: Any) -> float:
    """Each arm its own accuracy: per-tensor random 0.25 vs global 0.40, calibration on every client 0.55 vs 0.50."""
    if c.mask_rule == "random":
        return 0.25 if c.mask_scope == "local" else 0.40
    return 0.55 if c.calibration_fraction == 1.0 else 0.50


def _family(root: Path, spec: dict[str, Any], acc: Any) -> None:
    runs = plan(parse_grid(spec), output_root=root)
    write_manifest(runs)
    for run in runs:
        c = run.config
        drift = 0.5 if c.momentum == 0 else 0.1  # the control drifts more: a pooled point would average them
        write_run(run.overrides, train_rows(c.num_server_rounds, acc(c) + 0.01 * c.seed, drift=drift))


def write_root(root: Path) -> Path:
    _family(
        root,
        {
            "sweep": {"family": "noniid", "seeds": [0, 1]},
            "base": COMMON,
            "grid": [
                *({**p, "local-steps": [2, 4]} for p in PARTS),
                *({**p, "local-steps": [2], "head": ["ridge"]} for p in PARTS),
                *({**p, "local-steps": [2, 4], **CONTROL} for p in PARTS),
            ],
            "scale": {"num-server-rounds": {"per": "local-steps", "product": 8}},
        },
        noniid_acc,
    )
    sensitive = ["least-sensitive"]
    _family(
        root,
        {
            "sweep": {"family": "rules", "seeds": [0, 1]},
            "base": {
                **COMMON,
                "head": "ridge",
                "local-steps": 2,
                "num-server-rounds": 4,
                "sparsity": 0.9,
                "calibration-rounds": 2,
            },
            "grid": [
                *({**p, "mask-rule": ["least-sensitive", "random"]} for p in PARTS),
                *({**p, "mask-rule": ["random"], "mask-scope": ["local"]} for p in PARTS),
                {**PARTS[1], "mask-rule": sensitive, "calibration-fraction": [1.0], "fisher-samples": [6]},
            ],
        },
        rules_acc,
    )
    return root


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("controls")
    root = write_root(base / "runs")
    assert summarize_main([str(root), "--out", str(base / "summary")]) == 0
    return base / "summary" / "figures"


def read(figures: Path, name: str) -> list[dict[str, str]]:
    with open(figures / f"{name}.csv") as f:
        return list(csv.DictReader(f))


def control(run: str) -> bool:
    return "-m0-" in run


def test_the_momentum_control_has_a_heatmap_panel_of_its_own(figures: Path):
    rows = read(figures, "heatmap-noniid")
    panels = {row["panel"] for row in rows}
    assert len(panels) == 2 and any("momentum 0)" in p for p in panels), panels
    cells = [(row["panel"], row["series"], row["x"]) for row in rows]
    assert len(cells) == len(set(cells)) == 6 + 4, "per arm: (J, head) × partition once; the ridge head in the main"
    for row in rows:
        runs = row["runs"].split()
        arm = {control(r) for r in runs}
        assert len(arm) == 1 and row["also"] == "", f"one configuration per cell: {row}"
        assert ("momentum 0)" in row["panel"]) == arm.pop(), row
    at = {(control(r["runs"].split()[0]), r["series"], r["x"]): float(r["value"]) for r in rows}
    assert at[(False, "J = 2", "iid")] == pytest.approx(60.5) and at[(True, "J = 2", "iid")] == pytest.approx(30.5)
    assert at[(True, "J = 4", "Nc=5")] == pytest.approx(100 * (0.3 - 0.1 - 0.05 + 0.005))


def test_the_momentum_control_has_drift_lines_of_its_own(figures: Path):
    rows = [r for r in read(figures, "drift-noniid") if r["panel"] == "mean drift vs heterogeneity"]
    for row in rows:
        arm = {control(r) for r in row["runs"].split()}
        assert len(arm) == 1 and row["also"] == "", row
        assert float(row["value"]) == pytest.approx(0.5 if arm.pop() else 0.1), row
    series = {r["series"] for r in rows}
    assert len(series) == 2 + 1 + 2, f"J = 2, 4 per arm and the ridge head: {series}"


def test_the_rules_figure_has_a_bar_per_arm(figures: Path):
    bars = {(row["panel"], row["series"]): row for row in read(figures, "rules")}
    assert all(row["also"] == "" for row in bars.values())
    nc5 = {series: row for (panel, series), row in bars.items() if panel == "Nc=5"}
    assert set(nc5) == {
        "least-sensitive (global)",
        "least-sensitive (global), calibrated on 100 % of clients × 6 samples",
        "random (global)",
        "random (per tensor)",
        "dense FedAvg (no mask), ridge head",
    }
    assert nc5["random (per tensor)"]["runs"] == "rules-nc5-random-local-seed0 rules-nc5-random-local-seed1"
    assert float(nc5["random (per tensor)"]["value"]) == pytest.approx(100 * (0.25 - 0.0 + 0.005))
    assert float(nc5["random (global)"]["value"]) == pytest.approx(100 * (0.40 + 0.005))
    coverage = nc5["least-sensitive (global), calibrated on 100 % of clients × 6 samples"]
    assert all("cf1" in r for r in coverage["runs"].split()) and float(coverage["value"]) == pytest.approx(55.5)
    assert not any("cf1" in r for r in nc5["least-sensitive (global)"]["runs"].split())
    assert coverage["reference"] == "noniid-nc5-J2-head-ridge"
