"""Smoke test of bench/fisher_scoring.py --quick: it runs and prints one JSON object with the expected keys."""

from __future__ import annotations

import math

from tests.support.bench import run_quick


def test_quick_benchmark_prints_one_json_object():
    report = run_quick("fisher_scoring.py", "--samples", "8", timeout=120)
    assert report["benchmark"] == "fisher_scoring" and report["quick"] is True and report["threads"] == 2
    (result,) = report["results"]
    expected = {"model", "scored_entries", "samples", "batch_size", "repeat", "loop_s", "loop_cpu_s"}
    for method in ("vmap", "hooks"):
        expected |= {f"{method}_{key}" for key in ("chunk_size", "s", "cpu_s", "speedup", "max_rel_diff")}
    assert expected <= set(result)
    assert result["model"] == "vit-tiny-test" and result["samples"] == 8
    assert result["loop_s"] > 0
    for method in ("vmap", "hooks"):
        assert result[f"{method}_s"] > 0 and math.isfinite(result[f"{method}_speedup"])
        assert 0 <= result[f"{method}_max_rel_diff"] < 1e-3  # the scorers agree with the loop
