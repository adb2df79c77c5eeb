"""bench/gpu.py's reading of bench/round_overhead.py's JSON and its GPU-hours estimate, on made-up reports."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from fedtalos.config import RunConfig
from fedtalos.study.compute import study_gpu_hours
from fedtalos.study.plan import plan_files
from fedtalos.task.memory import GIB, SERVER_BYTES, actor_peak_bytes
from tests.support.bench import ROOT


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _report(round_s: float, same_s: float) -> dict:
    """What round_overhead.py prints for a cohort of 10 (only the keys gpu.py reads), with made-up figures."""
    return {
        "status": "finished:completed",
        "cohort": 10,
        "local_steps": 4,
        "flower_round_s": round_s,
        "pure_same_parallelism_round_s": same_s,
        "per_client_breakdown_ms": {
            "delivery_ms": 3.0,
            "setup_ms": 2.0,
            "reply_ms": 1.0,
            "accept_ms": 4.0,
            "steps_ms": 190.0,
            "accumulate_ms": 1.5,
        },
        "server_ms_per_round": 120.0,
        "server_target_ms_per_round": 100,
        "startup_s": 20.0,
        "gpu_peak_gb_by_process": [
            {"pid": 11, "role": "actor", "gb": 3.5},
            {"pid": 12, "role": "actor", "gb": 3.0},
            {"pid": 13, "role": "simulation", "gb": 4.0},
        ],
    }


def test_a_round_splits_into_the_apps_share_and_flowers(gpu):
    summary = gpu.summarize_rounds(2, _report(2.05, 2.0))
    assert summary["app_ms"] == 2.0 + 4.0 + 1.5 and summary["app_parts"] == ["accept_ms", "accumulate_ms", "setup_ms"]
    assert summary["flower_ms"] == 3.0 + 1.0 and summary["steps_ms"] == 190.0
    assert summary["ratio_same_parallelism"] == pytest.approx(1.025) and summary["ratio_target_met"] is True
    assert summary["server_target_met"] is False, "120 ms against 5 × 10 + 50"
    assert summary["client_update_s"] == pytest.approx(0.205) and summary["gpu_peak_gb_per_actor"] == 3.5
    assert gpu.summarize_rounds(2, _report(2.2, 2.0))["ratio_target_met"] is False


def test_an_actor_count_that_did_not_run_has_the_same_keys_with_nothing_measured(gpu):
    measured = gpu.summarize_rounds(4, _report(2.0, 2.0))
    for status in ("out_of_memory", "timeout", "skipped: estimated memory does not fit"):
        failed = gpu.summarize_rounds(8, {"status": status, "stderr_tail": "CUDA out of memory"})
        assert set(failed) == set(measured) and failed["status"] == status
        assert failed["round_s"] is None and failed["app_ms"] is None and failed["ratio_target_met"] is None
    summaries = {"1": gpu.summarize_rounds(1, _report(4.0, 3.9)), "4": measured, "8": failed}
    assert gpu.best_actors(summaries) == "4", "the fastest steady round among those that ran"
    assert gpu.best_actors({"8": failed}) is None


def test_the_study_is_priced_from_the_best_rounds_step_and_overhead(gpu, tmp_path):
    summary = gpu.summarize_rounds(4, _report(2.5, 2.0))
    estimate = gpu.study_estimate(0.02, "bf16", summary)
    rounds = estimate["from_rounds"]
    assert rounds["actors"] == 4 and rounds["client_step_s"] == pytest.approx(2.0 / 40), "pure round ÷ 10 × 4 steps"
    assert rounds["client_round_overhead_s"] == pytest.approx(0.05) and rounds["run_startup_s"] == 20.0
    runs = plan_files(sorted(ROOT.glob("configs/*.toml")), output_root=tmp_path)
    expected = study_gpu_hours(runs, 0.05, client_round_overhead_s=0.05, run_startup_s=20.0)
    assert rounds["gpu_hours_by_family"] == pytest.approx(expected) and rounds["gpu_hours"] > 0
    assert estimate["from_train_step"]["gpu_hours"] == pytest.approx(study_gpu_hours(runs, 0.02)["total"])
    assert gpu.study_estimate(0.02, "bf16", None)["from_rounds"] is None


def test_gpu_processes_are_named_by_role(gpu):
    assert gpu.process_role("ray::ClientAppActor.run") == "actor"
    assert gpu.process_role("/venv/bin/python /venv/bin/flwr-simulation --app ...") == "simulation"
    assert gpu.process_role("python bench/round_overhead.py --rounds=5") == "bench"
    assert gpu.process_role("python -c from multiprocessing.spawn import spawn_main; spawn_main()") == "pure_worker"
    assert gpu.process_role("ray::IDLE") == "other"


def test_an_actor_count_whose_estimated_memory_does_not_fit_is_skipped(gpu, monkeypatch):
    model, size = "vit_small_patch16_224.dino", 224
    need = 9 * actor_peak_bytes(RunConfig(model=model, image_size=size)) + SERVER_BYTES  # 8 actors and the pure side
    free = int(need) - GIB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    cuda = torch.device("cuda", 0)
    skipped = gpu.memory_shortfall(8, model, size, cuda)
    assert skipped["status"].startswith("skipped") and skipped["need_gb"] == pytest.approx(need / GIB)
    assert skipped["free_gb"] == pytest.approx(free / GIB)
    assert gpu.memory_shortfall(4, model, size, cuda) is None, "5 estimated peaks and the ServerApp fit"
    assert gpu.memory_shortfall(8, model, size, torch.device("cpu")) is None, "nothing to check on the CPU"
