"""``fedtalos summarize``: the table's rows and mean ± std values against numbers computed here."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from fedtalos.config import RunConfig
from fedtalos.editing import mask_file as mf
from fedtalos.study.results import mean_std
from fedtalos.study.tables import format_mean_std, summarize
from fedtalos.tracking.mask_artifact import record_mask_source
from tests.support.fakeruns import study_mask, train_rows, write_run, write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake study of :func:`write_study`: four families, two seeds each, one unfinished run."""
    return write_study(tmp_path_factory.mktemp("study") / "runs")


def test_mean_std_and_format():
    assert mean_std([0.5, 0.7, None]) == pytest.approx((0.6, math.sqrt(0.02), 2))
    assert mean_std([0.3]) == (0.3, None, 1) and mean_std([None]) == (None, None, 0)
    assert format_mean_std(0.6, math.sqrt(0.02), 100, 2) == "60.00 ± 14.14"
    assert format_mean_std(0.6, None, 100, 1) == "60.0" and format_mean_std(None, None) == "—"


def test_table_has_one_row_per_configuration_with_mean_and_std(study: Path, tmp_path: Path):
    result = summarize(study, tmp_path / "summary", figures=False)
    with open(result["csv"]) as f:
        rows = list(csv.DictReader(f))
    labels = [r["configuration"] for r in rows]
    assert len(labels) == 8 + 2 + 4 + 6 == len(set(labels)), (
        "noniid 6 + 2 ridge-head arms, central 2, sparse 4, rules 6"
    )
    assert [r.name for r in result["unfinished"]] == ["noniid-nc1-J2-seed2"]
    by_label = {r["configuration"]: r for r in rows}
    nc1 = by_label["noniid-nc1-J2"]
    assert (nc1["family"], nc1["seeds"], nc1["n_seeds"]) == ("noniid", "0 1", "2")
    # seeds 0 and 1: 0.10 and 0.12 → mean 0.11, sample std 0.0141421
    assert float(nc1["final_test_acc_mean"]) == pytest.approx(0.11)
    assert float(nc1["final_test_acc_std"]) == pytest.approx(0.02 / math.sqrt(2))
    assert float(nc1["final_test_acc_n"]) == 2
    # 4 rounds × 4 MB uploaded
    assert float(nc1["uploaded_gb_mean"]) == pytest.approx(0.016)
    drift = [0.01 * 2 * 4.0 * s / r for s in (1.0, 1.1) for r in range(1, 5)]
    assert float(nc1["mean_drift_mean"]) == pytest.approx(sum(drift[:4]) / 8 + sum(drift[4:]) / 8)
    sparse = by_label["sparse-s0.9-R2"]
    mask = study_mask("least-sensitive", 0.9)
    density = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert float(sparse["mask_density_mean"]) == pytest.approx(density), "the density of the run's mask"
    # head + 2 calibration rounds + 4 sparse rounds (10 % of 4 MB each)
    assert float(sparse["uploaded_gb_mean"]) == pytest.approx(0.010 + 0.040 + 4 * 0.0004)
    central = by_label["central-cosine"]
    assert central["kind"] == "centralized" and float(central["final_test_acc_mean"]) == pytest.approx(0.805)
    assert central["uploaded_gb_mean"] == ""
    md = result["markdown"].read_text()
    assert "| noniid | noniid-nc1-J2 | Nc=1, J=2, rounds=4, head=train | 2 | 11.00 ± 1.41 |" in md
    assert "| central | central-cosine | cosine | 2 | 80.50 ± 0.71 |" in md
    assert "noniid-nc1-J2-seed2" in md, "the unfinished run is named under the table"


def test_sparse_configurations_report_the_paired_difference_to_their_dense_control(study: Path, tmp_path: Path):
    result = summarize(study, tmp_path / "summary", figures=False)
    rows = {r["configuration"]: r for r in csv.DictReader(result["csv"].read_text().splitlines())}
    random = rows["rules-nc5-random"]
    assert random["reference"] == "noniid-nc5-J2-head-ridge", "the same head, partition, J and rounds"
    # per seed: rules 0.55 − 0.18 − 0.05 − 0.2 + 0.01 s + 0.02 (R' = 2) vs dense 0.4 + 0.03 + 0.02 s
    diffs = [(0.14 + 0.01 * s) - (0.43 + 0.02 * s) for s in (0, 1)]
    assert float(random["final_test_acc_paired_diff_mean"]) == pytest.approx(sum(diffs) / 2)
    assert float(random["final_test_acc_paired_diff_std"]) == pytest.approx(0.01 / math.sqrt(2))
    assert random["final_test_acc_paired_diff_n"] == "2"
    assert rows["noniid-nc5-J2"]["reference"] == "" and rows["noniid-nc5-J2"]["final_test_acc_paired_diff_n"] == ""
    md = result["markdown"].read_text()
    assert "| -29.50 ± 0.71 (n = 2) vs noniid-nc5-J2-head-ridge |" in md


def test_the_mask_source_of_mask_path_runs_tells_their_configurations_apart(tmp_path: Path):
    hashes = {}
    for where in ("centralized", "federated"):
        path = tmp_path / f"{where}-s0.9.safetensors"
        found = mf.write(
            path,
            mf.MaskFile(
                {"w": torch.arange(10) < 1},
                {"head.weight": torch.ones(2, 3), "head.bias": torch.zeros(2)},
                "vit-tiny-test",
                "0" * 64,
                "least-sensitive",
                0.9,
                "global",
                4,
                64,
                0,
                "ridge",
                where,
            ),
        )
        hashes[where] = found.content_hash
        for seed in (0, 1):
            values = {"output-root": str(tmp_path / "runs"), "run-name": f"masks-mask-{where}-seed{seed}"}
            run_dir = write_run({**values, "mask-path": str(path), "seed": seed}, train_rows(2, 0.5))
            record_mask_source(run_dir, RunConfig.from_mapping({"mask-path": str(path)}), found)
    result = summarize(tmp_path / "runs", tmp_path / "summary", figures=False)
    with open(result["csv"]) as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    assert rows["masks-mask-federated"]["mask_source"] == f"federated mask federated-s0.9 ({hashes['federated'][:8]})"
    md = result["markdown"].read_text()
    assert f"mask=centralized mask centralized-s0.9 ({hashes['centralized'][:8]}) | 2 |" in md
    assert f"mask=federated mask federated-s0.9 ({hashes['federated'][:8]}) | 2 |" in md


def test_run_time_with_start_up_stands_beside_time_in_rounds(tmp_path: Path):
    import json
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(write_study(tmp_path / "src"), root)
    timed = []
    for summary_file in sorted(root.glob("noniid-nc1-J2-seed*/summary.json")):
        summary = json.loads(summary_file.read_text())
        summary["run_wall_s"] = 90.0 + 30.0 * len(timed)  # 4 rounds of 6 s: 24 s in rounds
        summary_file.write_text(json.dumps(summary))
        timed.append(summary["run_wall_s"])
    result = summarize(root, tmp_path / "summary", figures=False)
    rows = list(csv.DictReader(result["csv"].read_text().splitlines()))
    row = next(r for r in rows if r["configuration"] == "noniid-nc1-J2")
    assert float(row["run_min_mean"]) == pytest.approx(sum(timed) / len(timed) / 60)
    assert float(row["wall_min_mean"]) == pytest.approx(24 / 60)
    header = result["markdown"].read_text().splitlines()[2]
    assert header.index("time in rounds") < header.index("run time (min)")


def test_a_run_whose_stored_config_does_not_validate_is_skipped_with_a_note(tmp_path: Path):
    import json

    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run({"output-root": str(root), "run-name": f"fam-a-seed{seed}", "seed": seed}, train_rows(2, 0.5))
    stored = json.loads((root / "fam-a-seed1" / "config.json").read_text())
    stored["config"]["sparsity"] = 2.0
    (root / "fam-a-seed1" / "config.json").write_text(json.dumps(stored))
    result = summarize(root, tmp_path / "summary", figures=False)
    assert [r.name for g in result["groups"] for r in g.runs] == ["fam-a-seed0"]
    assert any("fam-a-seed1" in w and "sparsity = 2.0" in w for w in result["warnings"])
