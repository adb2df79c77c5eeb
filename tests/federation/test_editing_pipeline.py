"""Federated model editing: the head, calibration, sparse fine-tuning; each checked against a direct computation."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedtalos.config import RunConfig
from fedtalos.editing.calibration import sum_scores
from fedtalos.editing.fisher import fisher_scores
from fedtalos.editing.head import backbone_features, fit_logit_scale, ridge_statistics, solve_ridge
from fedtalos.editing.optim import SparseSGDM
from fedtalos.editing.scoring import calibration_samples
from fedtalos.federation import calibration as calibration_module
from fedtalos.federation.cohort import calibration_cohort, sample_cohort
from fedtalos.federation.server import FederatedServer
from fedtalos.seeds import FEDERATED_STREAMS, make_generator
from fedtalos.task.model import set_trainable
from fedtalos.task.resources import get_resources
from fedtalos.task.train import train_steps
from fedtalos.tracking.mask_report import read_run_mask
from fedtalos.tracking.rundir import open_run_dir
from tests.support.fakegrid import FakeGrid, run_server

pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture
def editing_config(tiny_run_config: dict[str, Any]) -> dict[str, Any]:
    return dict(
        tiny_run_config,
        **{
            "head": "ridge",
            "mask-rule": "least-sensitive",
            "sparsity": 0.9,
            "calibration-rounds": 2,
            "fisher-samples": 16,
            "calibration-fraction": 0.2,
            "checkpoint-keep": 50,
            "lr-schedule": "constant",
        },
    )


def checkpoint(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"ckpt-{step:09d}.safetensors")


def weights_at(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return {k[8:]: v for k, v in checkpoint(run_dir, step).items() if k.startswith("weights/")}


def test_pipeline_freezes_what_the_mask_says(editing_config: dict[str, Any]):
    run_dir, _ = run_server(editing_config)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["round"]) for r in rows] == [
        ("head", 1),
        ("calibration", 1),
        ("calibration", 2),
        ("train", 1),
        ("train", 2),
        ("train", 3),
    ]
    assert rows[2]["mask_density"] == pytest.approx(0.1, abs=1e-3)
    assert rows[1]["mask_density"] == pytest.approx(0.1**0.5, abs=1e-3), "(1-s)^((r+1)/R) schedule"
    mask = read_run_mask(run_dir)
    before, after = weights_at(run_dir, 3), weights_at(run_dir, 6)  # end of calibration, end of training
    assert set(mask) == {k for k in before if not k.startswith("head.")}
    for name, m in mask.items():
        assert torch.equal(before[name][~m], after[name][~m]), f"frozen entries of {name} moved"
    changed = sum(int((before[n][m] != after[n][m]).sum()) for n, m in mask.items())
    assert changed > 0.5 * sum(int(m.sum()) for m in mask.values()), "trainable entries do train"
    assert torch.equal(before["head.weight"], after["head.weight"]), "the head stays frozen"
    train_rows = [r for r in rows if r["phase"] == "train"]
    dense_bytes = 4 * sum(m.numel() for m in mask.values()) * 3  # 3 clients per round
    assert all(r["bytes_up"] <= 0.1 * dense_bytes * 1.01 + 3 * 256 for r in train_rows), "sparse uploads"
    assert (run_dir / "mask_density.csv").read_text().startswith("tensor,layer,shape,numel,trainable,density")
    assert (run_dir / "plots" / "mask_density.png").stat().st_size > 5000
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mask"]["density"] == pytest.approx(0.1, abs=1e-3)


def test_mask_is_downloaded_once_per_node(editing_config: dict[str, Any]):
    config = dict(editing_config, **{"num-server-rounds": 4, "fraction-train": 0.5})
    _, grid = run_server(config)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    with_mask = [m.metadata.dst_node_id for m in train if "mask" in m.content.array_records]
    assert len(with_mask) == len(set(with_mask)), "each node gets the mask bits once"
    assert len(with_mask) < len(train), "later messages name the mask by id only"


def test_sparse_round_equals_an_independent_dense_computation(editing_config: dict[str, Any]):
    config = dict(editing_config, **{"num-server-rounds": 1})
    run_dir, _ = run_server(config)
    mask = read_run_mask(run_dir)
    start, result = weights_at(run_dir, 3), weights_at(run_dir, 4)
    # Re-do the round by hand: each cohort client trains a copy of the model densely with SparseSGDM on the same
    # batches, the dense results are averaged with weights n_i (in partition-id order, as the server does).
    rc = RunConfig.from_mapping(config)
    res = get_resources(rc)
    cohort = sample_cohort(rc.seed, "train", 1, rc.num_clients, rc.cohort_size)
    sizes = [len(res.partitions[p]) for p in cohort]
    average: dict[str, torch.Tensor] = {}
    for pid, n in zip(cohort, sizes, strict=True):
        res.load_weights(start)
        set_trainable(res.model, "head")
        params = dict(res.model.named_parameters())
        opt = SparseSGDM([params[k] for k in mask], masks=list(mask.values()), lr=rc.lr, momentum=rc.momentum)
        images, labels = res.client_data(pid)
        batches = res.train_batches(
            images, labels, make_generator(rc.seed, FEDERATED_STREAMS["train"], 1, pid), rc.local_steps
        )
        train_steps(res.model, opt, batches)
        for k in mask:
            p = params[k].detach()[mask[k]] * (n / sum(sizes))
            average[k] = p if k not in average else average[k] + p
    for k, m in mask.items():
        assert torch.allclose(result[k][m], average[k], rtol=0, atol=1e-6), k
        assert torch.equal(result[k][~m], start[k][~m])


def test_federated_ridge_equals_ridge_on_the_union(editing_config: dict[str, Any]):
    config = dict(editing_config, **{"mask-rule": "none", "num-server-rounds": 1})
    run_dir, _ = run_server(config)
    head = weights_at(run_dir, 1)
    rc = RunConfig.from_mapping(config)
    res = get_resources(rc, pretrained=True)
    res.load_weights(weights_at(run_dir, 1))
    images, labels = res.split("train")  # the union of all client shards is the whole train split
    stats = ridge_statistics(res.model, res.eval_batches(images, labels), 100)
    weight, bias = solve_ridge(stats, rc.ridge_lambda)
    val_images, val_labels = res.split("val")
    with torch.no_grad():
        features = torch.cat(
            [backbone_features(res.model.eval(), x) for x, _ in res.eval_batches(val_images, val_labels)]
        )
    scale = fit_logit_scale((features.double() @ weight.T + bias).float(), val_labels)
    assert torch.allclose(head["head.weight"], (scale * weight).float(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(head["head.bias"], (scale * bias).float(), rtol=1e-4, atol=1e-5)
    assert sum(len(p) for p in res.partitions) == stats.count
    # the head row reports the loss the temperature was fitted to, on the server's validation split, and the
    # phase's val_loss is measured on that same split (docs/editing.md, the ridge-lambda help)
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert row["phase"] == "head" and row["ridge_scale"] == pytest.approx(scale, rel=1e-5)
    logits = scale * (features.double() @ weight.T + bias)
    fitted = float(torch.nn.functional.cross_entropy(logits, val_labels.long()))
    assert row["ridge_val_loss"] == pytest.approx(fitted, rel=1e-4)
    assert row["val_loss"] == pytest.approx(row["ridge_val_loss"], rel=1e-3)


def test_federated_scores_are_the_scores_of_the_union(
    editing_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # With a head that always predicts class 0, the sampled labels are certain, so the scores of the union of the
    # clients' samples are defined without reference to any generator.
    rc = RunConfig.from_mapping(editing_config)
    grid = FakeGrid(rc.num_clients, editing_config)
    server = FederatedServer(rc, grid, open_run_dir(rc, "federated"))
    server.wire.connect()
    weights = server.state.weights
    weights["head.weight"].copy_(torch.randn(weights["head.weight"].shape, generator=torch.Generator().manual_seed(0)))
    weights["head.bias"].copy_(torch.full((100,), -1e4))
    weights["head.bias"][0] = 1e4
    shapes = {k: v.shape for k, v in weights.items() if not k.startswith("head.")}
    summed: dict[str, Any] = {}  # what the calibration round adds up, and its sum

    def recording(score_sums: Iterable[dict], shapes: dict) -> dict[str, torch.Tensor]:
        summed["scores"] = sum_scores(list(score_sums), shapes)
        return summed["scores"]

    monkeypatch.setattr(calibration_module, "sum_scores", recording)
    row = server.phases["calibration"].run_round(server.state, 1, server.wire)
    federated = summed["scores"]
    cohort = calibration_cohort(rc, 1)
    assert len(cohort) == 2
    res = get_resources(rc)
    res.load_weights(weights)
    union = []
    for pid in cohort:
        images, labels = res.client_data(pid)
        union.append(images[calibration_samples(rc, len(labels), 1, pid)])
    x = torch.cat(union)
    batch = [res.eval_transform(x)]
    central = fisher_scores(res.model, batch, target=rc.fisher_target)
    assert row["fisher_samples"] == len(x) == 32
    for k in shapes:
        assert torch.allclose(federated[k], central[k], rtol=1e-4, atol=1e-8), k
    assert sum(float(v.sum()) for v in central.values()) > 0


@pytest.mark.parametrize("rule", ["lowest-magnitude", "highest-magnitude", "random"])
def test_rules_without_scores_need_no_clients(editing_config: dict[str, Any], rule: str):
    config = dict(editing_config, **{"mask-rule": rule, "num-server-rounds": 1})
    run_dir, grid = run_server(config)
    assert not [m for m in grid.sent if m.metadata.message_type == "query.fisher"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["head", "calibration", "train"], "one calibration step"
    mask = read_run_mask(run_dir)
    before = weights_at(run_dir, 1)
    kept = torch.cat([before[k][m].abs() for k, m in mask.items()])
    dropped = torch.cat([before[k][~m].abs() for k, m in mask.items()])
    if rule == "lowest-magnitude":
        assert kept.max() <= dropped.min()
    elif rule == "highest-magnitude":
        assert kept.min() >= dropped.max()


def test_linear_probing_trains_only_the_head(editing_config: dict[str, Any]):
    config = dict(editing_config, **{"head": "probe", "probe-rounds": 2, "mask-rule": "none", "num-server-rounds": 1})
    run_dir, _ = run_server(config)
    start, probed = weights_at(run_dir, 1), weights_at(run_dir, 2)
    assert not torch.equal(probed["head.weight"], start["head.weight"])
    for k, v in probed.items():
        if not k.startswith("head."):
            assert torch.equal(v, start[k]), f"{k} moved during probing"
