"""Claims (fedtalos/study/claims.py): one winner of a race, takeover of a dead pid or a stale heartbeat only, a lost
claim is noticed, and every event is in the run's journal."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from fedtalos.study.claims import Claims
from fedtalos.study.grid import parse_grid
from fedtalos.study.plan import plan

GRID = {"sweep": {"family": "clm", "seeds": [0]}, "base": {"num-server-rounds": 1}}


def _run(tmp_path: Path):
    return plan(parse_grid(GRID), output_root=tmp_path)[0]


def _journal(run) -> list[dict]:
    path = run.sweep_dir / f"{run.name}.claims.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_of_many_workers_claiming_at_once_exactly_one_wins(tmp_path: Path):
    run = _run(tmp_path)
    workers = [Claims() for _ in range(8)]
    barrier = threading.Barrier(len(workers))
    won: list[Claims] = []

    def claim(worker: Claims) -> None:
        barrier.wait()
        if worker.acquire(run, slot=1)[0]:
            won.append(worker)

    threads = [threading.Thread(target=claim, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    holder = Claims.read(run)
    assert holder["worker"] == won[0].worker and holder["slot"] == 1 and holder["host"] == won[0].host
    loser = next(w for w in workers if w is not won[0])
    ok, why = loser.acquire(run)
    assert not ok and won[0].worker in why, "a live holder on this host keeps its claim"
    assert [e["event"] for e in _journal(run)] == ["claim"]
    assert not list(run.sweep_dir.glob(".*.tmp")), "no temporary files left behind"


def test_a_claim_of_a_dead_pid_on_this_host_is_taken_over(tmp_path: Path):
    run = _run(tmp_path)
    dead = Claims(pid=_dead_pid())
    assert dead.acquire(run)[0]
    alive = Claims()
    ok, how = alive.acquire(run)
    assert ok and how.startswith(f"took over from {dead.worker}") and "is dead" in how
    assert Claims.read(run)["worker"] == alive.worker
    assert [e["event"] for e in _journal(run)] == ["claim", "takeover"]
    assert _journal(run)[1]["previous"] == dead.worker


def test_a_claim_from_another_host_is_taken_over_only_after_its_heartbeat_is_stale(tmp_path: Path):
    run = _run(tmp_path)
    now = [1000.0]
    remote = Claims(host="node-b", stale_after=100.0, heartbeat_s=10.0, clock=lambda: now[0])
    local = Claims(stale_after=100.0, heartbeat_s=10.0, clock=lambda: now[0])
    assert remote.acquire(run)[0]
    now[0] = 1090.0
    assert not local.acquire(run)[0], "90 s without a heartbeat: still alive"
    assert remote.beat(run)  # the holder beats at 1090
    now[0] = 1180.0
    assert not local.acquire(run)[0], "90 s since the last beat: still alive"
    now[0] = 1191.0
    ok, how = local.acquire(run)
    assert ok and "no heartbeat from node-b for 101 s" in how
    # the old holder comes back: its claim is gone, it notices and leaves the new holder's claim alone
    assert not remote.beat(run)
    remote.release(run)
    assert Claims.read(run)["worker"] == local.worker


def test_release_frees_the_run_and_a_lock_left_by_a_dead_worker_does_not_block_forever(tmp_path: Path):
    run = _run(tmp_path)
    now = [5000.0]
    first, second = Claims(clock=lambda: now[0]), Claims(clock=lambda: now[0])
    assert first.acquire(run)[0] and not second.acquire(run)[0]
    first.release(run, "done")
    assert Claims.read(run) is None and second.acquire(run)[0]
    assert _journal(run)[-2]["event"] == "release" and _journal(run)[-2]["outcome"] == "done"
    # a takeover lock whose owner died mid-takeover: respected while fresh, broken once older than stale_after
    lock = Claims.path(run).with_name(Claims.path(run).name + ".lock")
    lock.mkdir()
    assert second.beat(run), "the claim is still ours while the lock is held (the beat is skipped)"
    held = Claims.read(run)["heartbeat"]
    now[0] += 1.0
    second.beat(run)
    assert Claims.read(run)["heartbeat"] == held
    now[0] = lock.stat().st_mtime + second.stale_after + 1
    assert second.beat(run) and Claims.read(run)["heartbeat"] == now[0] and not lock.exists()
