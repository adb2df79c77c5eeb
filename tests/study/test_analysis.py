"""The analyses' numbers against hand-computed values: client drift, Jaccard overlaps, and the mask agreement of
real (in-process) editing runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedtalos.cli.main import main
from fedtalos.config import RunConfig
from fedtalos.federation.aggregate import ClientUpdate, aggregate
from fedtalos.federation.cohort import calibration_cohort
from fedtalos.study.agreement import (
    chance_jaccard,
    client_summary,
    cohort_members,
    floor_row,
    jaccard,
    mask_agreement,
    mean_pairwise_jaccard,
    split_pool,
)
from fedtalos.tracking.mask_report import read_run_mask
from tests.support.fakegrid import run_server
from tests.support.tiny import offline_tiny

T = torch.tensor


# ---------------------------------------------------------------------------------------------------------------
# Client drift = sqrt(Σ p_i ‖u_i − ū‖² / D), u_i = x_i − reference, p_i = n_i / Σ n, ū = Σ p_i u_i, D = the
# number of weights the drift is per (the whole model in a run).


def test_drift_of_two_clients_by_hand():
    # n = 1 and 3 → p = 1/4, 3/4; u1 = (1, 0), u2 = (0, 2); ū = (1/4, 3/2)
    # Σ p‖u − ū‖² = 1/4 · (0.75² + 1.5²) + 3/4 · (0.25² + 0.5²) = 0.703125 + 0.234375 = 0.9375
    reference = {"w": T([0.0, 0.0])}
    updates = [ClientUpdate(7, 1, {"w": T([1.0, 0.0])}), ClientUpdate(3, 3, {"w": T([0.0, 2.0])})]
    result = aggregate(updates, reference, coordinates=2)
    assert result.drift == pytest.approx(math.sqrt(0.9375 / 2), rel=1e-6)
    assert torch.allclose(result.average["w"], T([0.25, 1.5]))


def test_drift_over_several_tensors_from_a_nonzero_reference():
    # three equal clients; tensors a (2 entries) and b (1 entry) count as one vector of 3 entries
    reference = {"a": T([1.0, 1.0]), "b": T([5.0])}
    uploads = [({"a": T([2.0, 1.0]), "b": T([5.0])}), ({"a": T([1.0, 1.0]), "b": T([8.0])}), (dict(reference))]
    updates = [ClientUpdate(i, 10, u) for i, u in enumerate(uploads)]
    # u = (1,0,0), (0,0,3), (0,0,0); ū = (1/3, 0, 1); Σ p‖u − ū‖² = (1/3)[(4/9 + 1) + (1/9 + 4) + (1/9 + 1)] = 20/9
    assert aggregate(updates, reference, coordinates=3).drift == pytest.approx(math.sqrt(20 / 9 / 3), rel=1e-6)


def test_identical_clients_have_no_drift():
    reference = {"w": T([0.5, -1.0, 2.0])}
    same = {"w": T([1.5, 0.0, 0.0])}
    updates = [ClientUpdate(i, n, dict(same)) for i, n in enumerate((3, 5, 11))]
    assert aggregate(updates, reference, coordinates=3).drift == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Jaccard.


def test_jaccard_by_hand():
    a = {"x": T([[1, 0, 1], [0, 0, 1]], dtype=torch.bool), "y": T([1, 1], dtype=torch.bool)}
    b = {"x": T([[1, 1, 0], [0, 0, 1]], dtype=torch.bool), "y": T([0, 1], dtype=torch.bool)}
    # both: x(0,0), x(1,2), y1 = 3; either: x(0,0), x(0,1), x(0,2), x(1,2), y0, y1 = 6
    assert jaccard(a, b) == pytest.approx(0.5)
    assert jaccard(a, a) == 1.0
    empty = {k: torch.zeros_like(v) for k, v in a.items()}
    assert jaccard(empty, empty) == 1.0 and jaccard(a, empty) == 0.0
    c = {"x": T([[0, 0, 0], [0, 0, 1]], dtype=torch.bool), "y": T([0, 0], dtype=torch.bool)}
    # pairs: J(a,b) = 1/2, J(a,c) = 1/5, J(b,c) = 1/4
    assert mean_pairwise_jaccard([a, b, c]) == pytest.approx((0.5 + 0.2 + 0.25) / 3)
    with pytest.raises(KeyError):
        jaccard(a, {"x": a["x"]})


def test_chance_jaccard_matches_random_masks():
    assert chance_jaccard(0.5, 0.5) == pytest.approx(1 / 3)
    assert chance_jaccard(0.1, 0.1) == pytest.approx(0.01 / 0.19)
    generator = torch.Generator().manual_seed(0)
    n = 400_000
    a = {"w": torch.rand(n, generator=generator) < 0.1}
    b = {"w": torch.rand(n, generator=generator) < 0.3}
    assert jaccard(a, b) == pytest.approx(chance_jaccard(0.1, 0.3), abs=0.003)


# ---------------------------------------------------------------------------------------------------------------
# Mask agreement of editing runs (the whole server in-process, against the real ClientApp).


def _editing_run(root: Path, cifar: Path, **overrides: Any) -> Path:
    config = {
        **offline_tiny(cifar, root),
        "batch-size": 16,
        "eval-batch-size": 250,
        "local-steps": 1,
        "num-server-rounds": 2,
        "eval-every": 2,
        "head": "ridge",
        "mask-rule": "least-sensitive",
        "sparsity": 0.8,
        "calibration-rounds": 2,
        "fisher-samples": 8,
        **overrides,
    }
    run_dir, _ = run_server(config)
    return run_dir


@pytest.mark.usefixtures("flower_task_identity")
def test_a_single_client_federation_agrees_with_itself(fake_cifar_root: Path, tmp_path: Path):
    run_dir = _editing_run(
        tmp_path,
        fake_cifar_root,
        **{
            "run-name": "alone",
            "num-clients": 1,
            "fraction-train": 1.0,
            "calibration-fraction": 1.0,
            "checkpoint-keep": 50,
        },
    )
    record = mask_agreement(run_dir, clients=None)
    assert record["weights"].startswith("checkpoint of step 3"), "the last calibration checkpoint was kept"
    assert record["reproduced_exactly"] and record["reproduced_jaccard"] == 1.0
    assert [c["jaccard"] for c in record["clients"]] == [1.0], "the only client's mask is the aggregated one"
    assert record["mean_jaccard"] is None and record["cohort_mean_jaccard"] == 1.0, "its only client is in the cohort"
    assert record["noise_floor"] == [] and record["noise_floor_jaccard"] is None, "nothing left out of the pool"
    assert record["pairwise_jaccard"] is None


@pytest.mark.usefixtures("flower_task_identity")
def test_mask_agreement_of_a_federated_run(fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run_dir = _editing_run(
        tmp_path,
        fake_cifar_root,
        **{
            "run-name": "four",
            "num-clients": 4,
            "fraction-train": 0.5,
            "calibration-fraction": 0.5,
            "partitioning": "noniid",
            "classes-per-client": 25,
            "checkpoint-keep": 1,
        },
    )
    assert main(["analyze", "mask-agreement", str(run_dir), "--clients", "3"]) == 0
    assert "federated calibration reproduced the run's mask exactly" in capsys.readouterr().out
    record = json.loads((run_dir / "analysis" / "mask_agreement.json").read_text())
    assert record["weights"].startswith("initial backbone + frozen head"), "calibration checkpoints were pruned"
    assert record["reproduced_exactly"], "rebuilt weights + the clients' scoring = the run's calibration"
    aggregated = read_run_mask(run_dir)
    total = sum(m.numel() for m in aggregated.values())
    assert record["aggregated_density"] == pytest.approx(sum(int(m.sum()) for m in aggregated.values()) / total)
    assert [c["client"] for c in record["clients"]] == [0, 1, 2]
    for client in record["clients"]:
        assert client["density"] == pytest.approx(0.2, abs=0.002), "each client keeps (1 − s) of the entries"
        assert client["classes"] == 25
        assert record["chance_jaccard"] < client["jaccard"] < 1.0
    config = RunConfig.from_mapping(json.loads((run_dir / "config.json").read_text())["config"])
    assert config.calibration_rounds == 2
    cohort = {pid for r in (1, 2) for pid in calibration_cohort(config, r)}
    assert [c["in_cohort"] for c in record["clients"]] == [pid in cohort for pid in (0, 1, 2)]
    outside = [c["jaccard"] for c in record["clients"] if not c["in_cohort"]]
    inside = [c["jaccard"] for c in record["clients"] if c["in_cohort"]]
    assert record["clients_outside_cohort"] == len(outside) and record["clients_in_cohort"] == len(inside)
    assert record["mean_jaccard"] == (pytest.approx(sum(outside) / len(outside)) if outside else None)
    assert record["cohort_mean_jaccard"] == (pytest.approx(sum(inside) / len(inside)) if inside else None)
    assert record["chance_jaccard"] == pytest.approx(chance_jaccard(0.2, 0.2), abs=1e-3)
    assert (run_dir / "analysis" / "mask_agreement.csv").read_text().startswith("client,examples,classes")
    assert (run_dir / "plots" / "mask_agreement.png").stat().st_size > 10_000


@pytest.mark.usefixtures("flower_task_identity")
def test_the_noise_floor_calibrates_iid_subsets_of_the_pooled_samples(
    fake_cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    # 4 noniid clients, a calibration cohort of 2 × 8 samples (the same in both rounds): each subset scores 8 of
    # those 16 pooled samples, the size of one client's, in both rounds, and calibrates a mask on them alone
    from fedtalos.editing import scoring
    from fedtalos.editing.scoring import calibration_samples
    from fedtalos.task.resources import get_resources

    run_dir = _editing_run(
        tmp_path,
        fake_cifar_root,
        **{
            "run-name": "floor",
            "num-clients": 4,
            "fraction-train": 0.5,
            "calibration-fraction": 0.5,
            "partitioning": "noniid",
            "classes-per-client": 25,
        },
    )
    scored: list[torch.Tensor] = []
    score = scoring.sample_scores

    def recording(config, resources, images, label_seed, soft_mask=None):
        scored.append(images.clone())
        return score(config, resources, images, label_seed, soft_mask)

    monkeypatch.setattr(scoring, "sample_scores", recording)
    assert main(["analyze", "mask-agreement", str(run_dir), "--clients", "1", "--subsets", "3", "--no-check"]) == 0
    assert "noise floor: iid subsets of 8 pooled calibration samples" in capsys.readouterr().out
    record = json.loads((run_dir / "analysis" / "mask_agreement.json").read_text())
    config = RunConfig.from_mapping(json.loads((run_dir / "config.json").read_text())["config"])
    resources = get_resources(config)
    pool = []
    for pid in calibration_cohort(config, 1):
        images, labels = resources.client_data(pid)
        pool.append(images[calibration_samples(config, len(labels), 1, pid)])
    pool_rows = {tuple(x.flatten().tolist()) for x in torch.cat(pool)}
    assert len(pool_rows) == 16
    # after the client's 2 rounds, per subset: 2 rounds alone, then 2 rounds of the pooled samples it left out
    calls = scored[-3 * 4 :]
    subsets = [calls[4 * i + r] for i in range(3) for r in (0, 1)]
    left_out = [calls[4 * i + 2 + r] for i in range(3) for r in (0, 1)]
    assert [len(x) for x in subsets] == [8] * 6 and [len(x) for x in left_out] == [8] * 6
    as_rows = lambda x: [tuple(r.flatten().tolist()) for r in x]  # noqa: E731
    for x, rest in zip(subsets, left_out, strict=True):
        rows_ = as_rows(x)
        assert len(set(rows_)) == 8 and set(rows_) <= pool_rows, "8 distinct samples of the pooled calibration data"
        assert set(rows_).isdisjoint(as_rows(rest)) and set(rows_) | set(as_rows(rest)) == pool_rows, "the rest"
    assert all(torch.equal(subsets[2 * i], subsets[2 * i + 1]) for i in range(3)), "fixed calibration: same samples"
    assert not torch.equal(subsets[0], subsets[2]), "subsets are different draws"
    floor = record["noise_floor"]
    assert [r["subset"] for r in floor] == [0, 1, 2] and all(r["samples"] == 8 for r in floor)
    for r in floor:
        assert r["density"] == pytest.approx(0.2, abs=0.002)
        assert record["chance_jaccard"] < r["jaccard"] <= 1.0
    values = [r["jaccard"] for r in floor]
    assert record["noise_floor_jaccard"] == pytest.approx(sum(values) / 3)
    lines = (run_dir / "analysis" / "mask_agreement_noise_floor.csv").read_text().splitlines()
    assert lines[0] == "subset,samples,density,jaccard,jaccard_in_sample" and len(lines) == 4


def _mask(*bits: int) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([bool(b) for b in bits])}


def test_the_noise_floor_compares_a_subset_with_the_aggregate_that_left_it_out():
    alone = _mask(1, 1, 0, 0)
    aggregated = _mask(1, 1, 0, 0)  # the subset's samples helped build it: in-sample, it agrees perfectly
    left_out = _mask(1, 0, 1, 0)
    row = floor_row(3, 64, alone, left_out, aggregated)
    assert row == {"subset": 3, "samples": 64, "density": 0.5, "jaccard": 1 / 3, "jaccard_in_sample": 1.0}


def test_a_floor_subset_and_the_rest_of_the_pool_split_it():
    pick, rest = split_pool(10, 3, torch.Generator().manual_seed(0))
    assert len(pick) == 3 and sorted(pick.tolist() + rest.tolist()) == list(range(10))
    again, _ = split_pool(10, 3, torch.Generator().manual_seed(0))
    assert torch.equal(pick, again), "the same positions in every round"


def test_calibration_cohort_members_are_averaged_apart():
    rows = [
        {"client": 0, "jaccard": 0.2, "in_cohort": False},
        {"client": 1, "jaccard": 0.9, "in_cohort": True},
        {"client": 2, "jaccard": 0.4, "in_cohort": False},
    ]
    summary = client_summary(rows)
    assert summary["mean_jaccard"] == pytest.approx(0.3) and summary["clients_outside_cohort"] == 2
    assert summary["cohort_mean_jaccard"] == pytest.approx(0.9) and summary["clients_in_cohort"] == 1
    assert summary["std_jaccard"] == pytest.approx(math.sqrt(0.02))
    config = RunConfig.from_mapping({"calibration-rounds": 4, "calibration-redraw": True})
    members = cohort_members(config)
    assert members == {pid for r in range(1, 5) for pid in calibration_cohort(config, r)} and len(members) > 10
