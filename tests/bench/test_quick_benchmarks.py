"""Smoke tests: each benchmark runs in quick mode and prints one JSON object with its figures.

The figures themselves are never asserted against targets (they depend on the machine); only their consistency.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.support.bench import run_quick


def test_train_throughput_quick():
    report = run_quick("train_throughput.py", "--threads", "1")
    assert report["benchmark"] == "train_throughput" and report["threads"] == 1
    (result,) = report["results"]
    assert result["model"] == "vit-tiny-test"
    for key in ("bare_img_per_s", "fedtalos_loop_img_per_s", "fedtalos_img_per_s", "fedtalos_step_ms"):
        assert result[key] > 0 and math.isfinite(result[key]), key
    assert result["ratio"] == pytest.approx(result["fedtalos_img_per_s"] / result["bare_img_per_s"])


def test_communication_quick():
    report = run_quick("communication.py")
    assert report["benchmark"] == "communication" and report["sparsity"] == 0.9
    dense, sparse = report["dense_upload_bytes_per_client"], report["sparse_upload_bytes_per_client"]
    assert 0 < sparse < dense
    assert report["upload_ratio"] == pytest.approx(sparse / dense)
    assert report["target_met"] == (sparse <= report["target_bytes"])
    downloads = report["sparse_download_bytes_per_client_by_round"]
    assert len(downloads) == 3 and all(d > 0 for d in downloads)


@pytest.mark.e2e
def test_round_overhead_quick():
    report = run_quick("round_overhead.py", timeout=600)  # it starts its own private SuperLink
    assert report["benchmark"] == "round_overhead" and report["status"] == "finished:completed"
    assert report["clients"] == 10 and report["cohort"] == 1 and report["steady_rounds"] == [2, 3]
    assert len(report["flower_rounds_s"]) == 2 and len(report["pure_rounds_s"]) == 4  # before and after
    assert report["ratio"] == pytest.approx(report["flower_round_s"] / report["pure_round_s"])
    assert report["peak_rss_driver_gb"] > 0 and report["bytes_up_per_client"] > 0


def test_shm_transport_quick():
    report = run_quick("shm_transport.py")
    assert report["benchmark"] == "shm_transport" and report["model"] == "vit-tiny-test" and report["cohort"] == 3
    parts = report["client_ms"]
    assert set(parts) == {"load_ms", "send_ms", "inbound_ms", "check_ms", "fold_ms"}
    assert all(v >= 0 and math.isfinite(v) for v in parts.values())
    assert report["client_total_ms"] == pytest.approx(parts["load_ms"] + parts["send_ms"], abs=0.02)


def test_optimizer_step_quick():
    report = run_quick("optimizer_step.py")
    assert report["benchmark"] == "optimizer_step" and report["threads"] == 1
    (result,) = report["results"]
    assert result["model"] == "vit-tiny-test" and result["bitwise_equal_to_sgd"]
    ops = result["ops_per_step"]
    assert ops["sparse_dense"] == ops["sgd_foreach"] < ops["sgd_single"]  # foreach calls, not one op per tensor
    assert ops["sparse_dense"] < ops["sparse_masked"] < ops["sparse_dense"] + 2 * result["masked_tensors"]
    assert all(ms > 0 and math.isfinite(ms) for ms in result["ms_per_step"].values())


def test_gpu_benchmark_quick_runs_on_the_cpu():
    import subprocess

    from tests.support.bench import ROOT

    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # one JSON object
    assert report["benchmark"] == "gpu" and report["device"] == "cpu" and report["model"] == "vit-tiny-test"
    for dtype in ("fp32", "bf16"):
        assert report["train"][dtype]["images_per_s"] > 0 and math.isfinite(report["train"][dtype]["step_ms"])
    fisher = report["fisher"]
    assert fisher["hooks_s"] > 0 and fisher["loop_s"] > 0 and fisher["max_rel_diff"] < 1e-3, "the same scores"
    assert report["rounds"] == {} and report["best_actors"] is None, "no federated rounds in --quick"
    study = report["study_gpu_hours"]
    assert study["from_rounds"] is None, "nothing measured to price it from"
    assert study["grid_files"] == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.toml"))
    assert study["runs_to_run"] > 0 and study["client_steps"] > 0 and study["assumed"]["gpu_hours"] > 0
    measured = study["from_train_step"]
    assert measured["dtype"] == "fp32" and measured["client_step_s"] == report["train"]["fp32"]["step_ms"] / 1000
    by_family = measured["gpu_hours_by_family"]
    assert measured["gpu_hours"] == by_family["total"] > 0 and math.isfinite(measured["gpu_hours"])
    assert by_family["total"] == pytest.approx(sum(h for f, h in by_family.items() if f != "total"))


@pytest.mark.e2e
def test_client_cold_start_quick():
    report = run_quick("client_cold_start.py", timeout=300)  # fresh interpreters: torch, flwr and timm each time
    assert report["benchmark"] == "client_cold_start" and report["runs"] == 1
    for run in report["tiny"].values():
        parts = ("import_app", "import_timm", "setup", "data", "model", "weights")
        assert all(run[p] >= 0 for p in parts)
        assert run["app_s"] == pytest.approx(sum(run[p] for p in parts), abs=0.5)  # rounded to 0.1 ms each
