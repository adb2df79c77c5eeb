"""``bench/flower_share.py``'s logic without a run: the summary of metric rows, and the Flower patch it installs
(written to a temporary directory, applied in a fresh interpreter, never to this one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import flower_patch
from bench.flower_share import summarize

ROOT = Path(__file__).resolve().parents[2]


def _row(round_: int, delivery: float, reply: float, **extra: float) -> dict:
    return {"phase": "train", "round": round_, "client_delivery_s": delivery, "client_reply_s": reply} | extra


def test_summarize_takes_the_median_of_the_steady_train_rounds():
    rows = [
        _row(1, 9.0, 9.0, wall_s=9.0),  # warm-up: left out
        _row(2, 0.010, 0.002, client_setup_s=0.005, wall_s=1.0),
        _row(3, 0.030, 0.004, client_setup_s=0.007, wall_s=2.0),
        _row(4, 0.050, 0.006, client_setup_s=0.009, wall_s=3.0),
        {"phase": "calibrate", "round": 3, "client_delivery_s": 5.0, "client_reply_s": 5.0},
        _row(5, 9.0, 9.0, wall_s=9.0),  # last round: left out
    ]
    out = summarize(rows, [2, 3, 4])
    assert out["rounds"] == 3
    assert out["per_client_ms"] == pytest.approx({"delivery_ms": 30.0, "reply_ms": 4.0, "setup_ms": 7.0})
    assert out["flower_ms"] == pytest.approx(34.0)
    assert out["round_wall_s"] == 2.0 and out["clients_s"] is None


def test_install_none_writes_nothing(tmp_path):
    assert flower_patch.install(tmp_path / "p", "none") == {}
    assert not (tmp_path / "p").exists()
    with pytest.raises(ValueError, match="unknown patch variant"):
        flower_patch.install(tmp_path / "p", "faster")


_PROBE = """
import json, sys
import flwr.server.superlink.fleet.vce.vce_api as vce
import flwr.server.superlink.linkstate.in_memory_linkstate as ls
import flwr.superlink.grid.inmemory_grid as grid
print(json.dumps({
    "vce": hasattr(vce.add_messages_to_queue, "fedtalos_bench_patch"),
    "store_ins": hasattr(ls.InMemoryLinkState.store_message_ins, "fedtalos_bench_patch"),
    "store_res": hasattr(ls.InMemoryLinkState.store_message_res, "fedtalos_bench_patch"),
    "pull": hasattr(grid.InMemoryGrid.pull_messages, "fedtalos_bench_patch"),
}))
"""


def _probe(env: dict[str, str]) -> dict[str, bool]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FEDTALOS_FLOWER_PATCH")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=base | env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout)


def test_the_patch_applies_its_variant_in_a_fresh_interpreter_and_says_so(tmp_path):
    mark = tmp_path / "mark.txt"
    env = flower_patch.install(tmp_path / "patch", "wake-reply", mark)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "patch")
    assert _probe(env) == {"vce": True, "store_ins": True, "store_res": True, "pull": True}
    assert flower_patch.patched_modules(mark) == [
        "flwr.server.superlink.fleet.vce.vce_api",
        "flwr.server.superlink.linkstate.in_memory_linkstate",
        "flwr.superlink.grid.inmemory_grid",
    ]
    # with the variable unset the same file patches nothing
    assert not any(_probe({"PYTHONPATH": env["PYTHONPATH"]}).values())
