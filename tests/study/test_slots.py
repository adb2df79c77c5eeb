"""Slots and shards (fedtalos/study/slots.py), and two sweeps with stand-in runners on one output root: the runs are
split between them, none twice, and a sweep's slots really overlap."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from fedtalos.study.claims import Claims
from fedtalos.study.grid import parse_grid
from fedtalos.study.plan import plan
from fedtalos.study.runners import RunOutcome
from fedtalos.study.slots import make_slots, parse_gpus, parse_shard, shard
from fedtalos.study.sweep import Sweep
from tests.support.fakeruns import train_rows, write_run

GRID = {
    "sweep": {"family": "par", "seeds": [0, 1, 2]},
    "base": {"num-clients": 4, "fraction-train": 0.5, "num-server-rounds": 3, "lr-schedule": "constant"},
    "grid": {"local-steps": [1, 2]},
}


def test_gpus_and_slots():
    assert parse_gpus("0, 1,3", visible=4) == ["0", "1", "3"]
    assert parse_gpus("GPU-8f2a-11") == ["GPU-8f2a-11"]
    for bad, why in [
        ("", "GPU indices"),
        ("0,,1", "GPU indices"),
        ("a", "not a GPU index"),
        ("-1", "not a GPU"),
        ("0,0", "listed twice"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_gpus(bad)
    with pytest.raises(ValueError, match="shows 2 CUDA GPU"):
        parse_gpus("1,2", visible=2)
    slots = make_slots(5, ["0", "1"], cpus=16)
    assert [s.gpu for s in slots] == ["0", "1", "0", "1", "0"], "slot i on gpus[i % len(gpus)]"
    assert {s.cpus for s in slots} == {3} and slots[0].label == "slot 1 (GPU 0)"
    assert slots[1].process_env() == {"RAY_ADDRESS": "local", "CUDA_VISIBLE_DEVICES": "1"}
    assert (
        slots[0].federation_extra("client-resources-num-cpus=1") == "client-resources-num-cpus=1 init-args-num-cpus=3"
    )
    assert slots[0].federation_extra("init-args-num-cpus=8") == "init-args-num-cpus=8", "an explicit value wins"
    assert [s.cpus for s in make_slots(4, cpus=2)] == [1] * 4, "at least one core each"
    assert make_slots(1)[0].gpu is None and "CUDA_VISIBLE_DEVICES" not in make_slots(1)[0].process_env()
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="--parallel"):
            make_slots(bad)


def test_shards_cover_the_plan_exactly_once(tmp_path: Path):
    runs = plan(parse_grid(GRID), output_root=tmp_path)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    for n in (1, 2, 4, 7):
        parts = [shard(runs, k, n) for k in range(1, n + 1)]
        names = [r.name for part in parts for r in part]
        assert sorted(names) == sorted(r.name for r in runs) and len(set(names)) == len(runs), n
    assert [r.name for r in shard(runs, 1, 2)] == ["par-J1-seed0", "par-J1-seed1", "par-J1-seed2"]


class Recorder:
    """A stand-in runner that writes a finished run directory slowly and records who ran what, when."""

    def __init__(self, worker: str, log: list, delay: float = 0.3) -> None:
        self.worker, self.log, self.delay = worker, log, delay

    def command(self, run) -> list[str]:
        return ["stand-in", run.name]

    def __call__(self, run, log: IO[str]) -> RunOutcome:
        start = time.monotonic()
        write_run(run.overrides, train_rows(1, 0.5), finished=False)
        time.sleep(self.delay)
        write_run(run.overrides, train_rows(3, 0.5))
        self.log.append((run.name, self.worker, start, time.monotonic()))
        return RunOutcome(True, "ok")


def test_two_sweeps_on_one_root_split_the_runs_and_slots_overlap(tmp_path: Path):
    runs = plan(parse_grid(GRID), output_root=tmp_path)
    ran: list = []
    outs = {w: io.StringIO() for w in ("a", "b")}

    def worker(name: str) -> None:
        runners = [{"federated": Recorder(f"{name}{i}", ran)} for i in range(2)]
        Sweep(runs, runners, out=outs[name], poll_s=0.05, claims=Claims(), slots=make_slots(2)).run()

    threads = [threading.Thread(target=worker, args=(w,)) for w in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [r[0] for r in ran]
    assert sorted(names) == sorted(r.name for r in runs), "every run ran exactly once"
    assert {r[1][0] for r in ran} == {"a", "b"}, "both sweeps ran some"
    for run in runs:
        assert not Claims.path(run).exists(), "claims are released"
        events = [json.loads(line) for line in (run.sweep_dir / f"{run.name}.claims.jsonl").open()]
        assert [e.get("outcome") for e in events if e["event"] == "release"].count("done") == 1
        assert "takeover" not in {e["event"] for e in events}
    by_slot = {}
    for _name, who, start, end in ran:
        by_slot.setdefault(who, []).append((start, end))
    a0, a1 = by_slot.get("a0", []), by_slot.get("a1", [])
    assert any(s0 < e1 and s1 < e0 for s0, e0 in a0 for s1, e1 in a1), "sweep a's two slots ran at the same time"
    text = outs["a"].getvalue() + outs["b"].getvalue()
    assert "on slot 2" in text and "held by" not in text
    assert all(f"done {n} " in text for n in names)


class Blocking:
    """A stand-in runner whose run goes on until ``stop()`` is called (as ``flwr stop`` ends a Flower run)."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.started = threading.Event()

    def command(self, run) -> list[str]:
        return ["stand-in", run.name]

    def stop(self) -> None:
        self.stopped.set()

    def __call__(self, run, log: IO[str]) -> RunOutcome:
        write_run(run.overrides, train_rows(1, 0.5), finished=False)
        self.started.set()
        self.stopped.wait(30)
        return RunOutcome(False, "Flower run 1 ended as 'finished:stopped'")


def test_ctrl_c_stops_every_slots_run_releases_the_claims_and_the_same_sweep_resumes(tmp_path: Path):
    import _thread

    runs = plan(parse_grid(GRID), output_root=tmp_path)[:2]
    runners = [Blocking(), Blocking()]
    sweep = Sweep(runs, [{"federated": r} for r in runners], out=io.StringIO(), claims=Claims(), slots=make_slots(2))

    def interrupt() -> None:
        for r in runners:
            r.started.wait(30)
        _thread.interrupt_main()  # what Ctrl-C does to the sweep's main thread

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sweep.run()
    assert all(r.stopped.is_set() for r in runners), "every slot's run was stopped"
    assert "interrupted: stopping 2 run(s)" in sweep.out.getvalue()
    for run in runs:
        assert not Claims.path(run).exists()
        events = [json.loads(line) for line in (run.sweep_dir / f"{run.name}.claims.jsonl").open()]
        assert events[-1]["event"] == "release" and events[-1]["outcome"] == "interrupted"
    out = io.StringIO()
    again = Sweep(runs, [{"federated": Recorder(f"s{i}", [], 0.0)} for i in range(2)], out=out, claims=Claims())
    assert sorted(again.run().ran) == sorted(r.name for r in runs)
    assert "2 to resume" in out.getvalue()
