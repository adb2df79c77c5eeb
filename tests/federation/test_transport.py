"""Shared-memory transport: the same results as messages, bit for bit; files cleaned up; clear errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedtalos.federation import transport
from fedtalos.federation.transport import choose
from fedtalos.federation.wire import RoundFailed
from tests.support.fakegrid import run_server

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _final(run_dir: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt-*.safetensors"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return load_file(checkpoints[-1]), rows


def _results(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # drift is a reduction over the uploads: equal up to the last bit (see fedtalos/federation/transport.py)
    return [
        {
            k: (pytest.approx(v, rel=1e-12) if k == "drift" else v)
            for k, v in r.items()
            if not k.endswith("_s") and not k.startswith("bytes")
        }
        for r in rows
    ]


@pytest.mark.parametrize("editing", [False, True], ids=["dense", "editing"])
def test_shared_memory_equals_messages(tiny_run_config: dict[str, Any], tmp_path: Path, monkeypatch, editing: bool):
    monkeypatch.setenv("FEDTALOS_TRANSPORT_DIR", str(tmp_path / "shm"))
    extra = (
        {
            "head": "ridge",
            "mask-rule": "least-sensitive",
            "calibration-rounds": 2,
            "fisher-samples": 8,
            "calibration-fraction": 0.2,
        }
        if editing
        else {}
    )
    runs = {}
    for mode in ("message", "shared-memory"):
        config = dict(tiny_run_config, **extra, transport=mode, **{"output-root": str(tmp_path / mode)})
        run_dir, grid = run_server(config)
        runs[mode] = (*_final(run_dir), grid)
    (weights_m, rows_m, _), (weights_s, rows_s, grid_s) = runs["message"], runs["shared-memory"]
    assert weights_m.keys() == weights_s.keys() and all(torch.equal(weights_m[k], weights_s[k]) for k in weights_m)
    assert _results(rows_m) == _results(rows_s)
    # the payload is the same; only the headers differ (the tiny model's 150 small tensors make them ~2 %)
    for m, s in zip(rows_m, rows_s, strict=True):
        assert s["bytes_up"] == pytest.approx(m["bytes_up"], rel=0.05)
        assert s["bytes_down"] == pytest.approx(m["bytes_down"], rel=0.05)
    train = [msg for msg in grid_s.sent if msg.metadata.message_type == "train"]
    assert train and all("arrays" not in msg.content.array_records for msg in train), "no tensors in the messages"
    assert not list((tmp_path / "shm").rglob("*")), "the transport directory is removed at the end"


def test_a_client_that_cannot_reach_the_files_says_what_to_do(tiny_run_config, tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv("FEDTALOS_TRANSPORT_DIR", str(tmp_path / "shm"))
    from fedtalos.federation import transport

    def elsewhere(content, config):  # a client on another machine: the server's path does not exist there
        if config.get(transport.WEIGHTS_FILE):
            config = dict(config, **{transport.WEIGHTS_FILE: "/nonexistent/weights.slot"})
        return real_received(content, config)

    real_received = transport.received
    monkeypatch.setattr(transport, "received", elsewhere)
    config = dict(tiny_run_config, transport="shared-memory", **{"num-server-rounds": 1})
    with pytest.raises(RoundFailed, match='transport = "message"'):
        run_server(config)


def test_auto_uses_shared_memory_only_in_simulation():
    assert choose("auto", InMemoryGrid())[0] == "shared-memory"
    assert choose("auto", object()) == ("message", None)
    assert choose("message", InMemoryGrid()) == ("message", None)


class InMemoryGrid:  # the class name Flower's simulation grid has
    pass


@pytest.fixture
def small_shm(tmp_path, monkeypatch):
    """A 64 MB /dev/shm (Docker's default) and a temporary directory with ``free[tmp]`` bytes (default 10 GB)."""
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir()
    tmp.mkdir()
    free = {shm: 64_000_000, tmp: 10_000_000_000}
    monkeypatch.delenv("FEDTALOS_TRANSPORT_DIR", raising=False)
    monkeypatch.setattr(transport, "_base_dir", lambda: shm)
    monkeypatch.setattr(transport.tempfile, "gettempdir", lambda: str(tmp))
    monkeypatch.setattr(transport, "_free_bytes", lambda path: free[Path(path)])
    return free, shm, tmp


ROUND_BYTES = 4 * 86_500_000  # (cohort 3 + 1) × ViT-S/16


def test_a_small_dev_shm_moves_the_files_to_the_temporary_directory(small_shm, fedtalos_log):
    _, shm, tmp = small_shm
    assert choose("auto", InMemoryGrid(), ROUND_BYTES) == ("shared-memory", tmp)
    assert choose("shared-memory", InMemoryGrid(), ROUND_BYTES) == ("shared-memory", tmp)
    assert f"{shm} has 64 MB free, a round needs about 346 MB" in fedtalos_log.text
    assert choose("auto", InMemoryGrid(), 1_000_000) == ("shared-memory", shm)  # enough room: /dev/shm


def test_no_room_anywhere_falls_back_to_messages_or_refuses_an_explicit_setting(small_shm, fedtalos_log):
    free, _, tmp = small_shm
    free[tmp] = 100_000_000
    assert choose("auto", InMemoryGrid(), ROUND_BYTES) == ("message", None)
    assert "the weights travel in messages" in fedtalos_log.text
    with pytest.raises(transport.TransportUnavailable, match=r"--shm-size.*transport = \"message\""):
        choose("shared-memory", InMemoryGrid(), ROUND_BYTES)


def test_the_round_bytes_count_the_largest_cohort_and_the_model():
    from fedtalos.config import RunConfig
    from fedtalos.task.memory import model_bytes, shared_memory_bytes

    vit = RunConfig(
        num_clients=100, fraction_train=0.03, head="ridge", mask_rule="least-sensitive", calibration_fraction=0.05
    )
    assert 86e6 < model_bytes(vit) < 88e6  # ViT-S/16 with a 100-class head, fp32
    assert shared_memory_bytes(vit) == 6 * model_bytes(vit)  # 5 calibrating clients + the global weights


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_directories_left_by_killed_servers_are_removed(tmp_path: Path, monkeypatch):
    uid, dead, now = os.getuid(), _dead_pid(), time.time()

    def make(name: str, age_s: float = 0.0) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "train-3.safetensors").write_bytes(b"x" * 1000)
        os.utime(path, (now - age_s, now - age_s))
        return path

    this_run_killed = make(f"fedtalos-{uid}-runkey-{dead}")
    this_run_live = make(f"fedtalos-{uid}-runkey-{os.getppid()}")  # e.g. another server of it, still running
    other_run_recent = make(f"fedtalos-{uid}-other-{dead}")  # may be alive in another pid namespace
    other_run_old = make(f"fedtalos-{uid}-other2-{dead}", age_s=2 * transport.STALE_AFTER_S)
    other_user = make(f"fedtalos-{uid + 1}-runkey-{dead}")
    unrelated = make("fedtalos-notes")

    monkeypatch.setenv("FEDTALOS_TRANSPORT_DIR", str(tmp_path))
    server = transport.ServerTransport("shared-memory", run_key="runkey")
    try:
        assert not this_run_killed.exists() and not other_run_old.exists()
        assert this_run_live.exists() and other_run_recent.exists() and other_user.exists() and unrelated.exists()
        assert server.directory is not None and server.directory.is_dir()
    finally:
        server.close()
    assert not server.directory.exists()


def test_staged_weights_equal_the_plain_load(tiny_run_config: dict[str, Any], tmp_path: Path, monkeypatch):
    """The CUDA path (weights in one copy to the device: packed through the staging buffer from a message, straight
    from the slot's region with shared memory; device masks cached per mask id), forced on the CPU: the same
    weights and metrics as load_state_dict; train rows carry the per-client timing."""
    from fedtalos import client_app
    from fedtalos.task.staging import WeightStaging

    monkeypatch.setenv("FEDTALOS_TRANSPORT_DIR", str(tmp_path / "shm"))
    extra = {"head": "ridge", "mask-rule": "least-sensitive", "fisher-samples": 8, "calibration-fraction": 0.2}
    runs, stagers = {}, {}
    for staged, mode in ((False, "message"), (True, "message"), (True, "shared-memory")):
        stagers[mode, staged] = WeightStaging(staged=staged)
        monkeypatch.setattr(client_app, "staging", stagers[mode, staged])
        config = dict(tiny_run_config, **extra, transport=mode, **{"output-root": str(tmp_path / f"{mode}{staged}")})
        run_dir, _ = run_server(config)
        runs[mode, staged] = _final(run_dir)
    assert stagers["message", True]._host, "the staged run went through the buffers"
    assert stagers["shared-memory", True]._global_buffer is not None, "the slot's region went in one copy"
    (weights_r, rows_r) = runs["shared-memory", True]
    assert all(torch.equal(weights_r[k], v) for k, v in runs["message", False][0].items())
    assert _results(rows_r) == _results(runs["message", False][1])
    (weights_p, rows_p), (weights_s, rows_s) = runs["message", False], runs["message", True]
    assert weights_p.keys() == weights_s.keys() and all(torch.equal(weights_p[k], weights_s[k]) for k in weights_p)
    assert _results(rows_p) == _results(rows_s)
    train = [r for r in rows_s if r["phase"] == "train"]
    assert train and all(r["client_overhead_s"] > 0 and r["client_steps_s"] > 0 for r in train)


def test_only_the_wire_calls_the_transports_outbound_inbound_and_done():
    package = Path(transport.__file__).parents[1]
    calls = re.compile(r"\.(outbound|inbound|done)\(")
    callers = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if calls.search(p.read_text())}
    assert callers == {"federation/wire.py"}


def test_the_server_reads_uploads_in_place_and_a_late_upload_cannot_change_one_it_holds(tmp_path: Path):
    from flwr.app import RecordDict

    from fedtalos.federation import protocol as P
    from fedtalos.federation.transport import ServerTransport

    server = ServerTransport("shared-memory", run_key="k", base=tmp_path)
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    _, config = server.outbound(weights, "train-1", cohort=[4, 9])
    with transport.received(RecordDict(), config) as delivered:
        assert torch.equal(delivered.tensors["w"], weights["w"]) and delivered.key[1] == config[transport.SEQUENCE]
    assert transport.send({"w": weights["w"] + 1}, config, pid=9) is None
    upload, _ = server.inbound(RecordDict(), "train-1", 9)
    with pytest.raises(RuntimeError, match="late"):  # the same client again (a duplicate or late message)
        transport.send({"w": weights["w"] * 100}, config, pid=9)
    assert torch.equal(upload["w"], weights["w"] + 1), "what the server holds did not change"
    with pytest.raises(P.ReplyRejected, match=r"empty slot|another payload"):
        server.inbound(RecordDict(), "train-1", 4)  # pid 4 has not written this payload
    server.reject(9)  # a rejected reply: its slot is free for the retry
    transport.send({"w": weights["w"] + 2}, config, pid=9)
    assert torch.equal(server.inbound(RecordDict(), "train-1", 9)[0]["w"], weights["w"] + 2)
    server.done("train-1")
    with pytest.raises(P.ReplyRejected, match="no upload slot"):
        server.inbound(RecordDict(), "train-1", 9)  # the exchange is over
    server.close()
    assert not list(tmp_path.iterdir())
