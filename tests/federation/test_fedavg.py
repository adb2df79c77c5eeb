"""FedAvg rounds through the strategy: the round index the strategy is given, across phases and a resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from fedtalos.strategies.fedopt import FedAdam
from tests.support.fakegrid import run_server

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _final_weights(run_dir: Path) -> dict:
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt-*.safetensors"))
    return {k: v for k, v in load_file(checkpoints[-1]).items() if k.startswith("weights/")}


def test_fedadam_counts_the_rounds_of_its_phase_and_resumes_exactly(
    tiny_run_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Two linear-probing rounds (on the head's keys), then fine-tuning (the backbone's): FedAdam's bias correction
    # of the first fine-tuning round must be that of a first round (as in Flower's FedAdam, which only ever serves
    # one phase), not of global step 3.
    given: list[int] = []
    apply = FedAdam.apply

    def recording(self: FedAdam, weights: Any, average: Any, phase_round: int) -> None:
        given.append(phase_round)
        apply(self, weights, average, phase_round)

    monkeypatch.setattr(FedAdam, "apply", recording)
    config = dict(
        tiny_run_config,
        **{"strategy": "fedadam", "head": "probe", "probe-rounds": 2, "num-server-rounds": 2},
        **{"lr-schedule": "constant", "eval-every": 5},
    )
    straight, _ = run_server(dict(config, **{"output-root": str(tmp_path / "a")}))
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["round"], r["step"]) for r in rows] == [
        ("head", 1, 1),
        ("head", 2, 2),
        ("train", 1, 3),
        ("train", 2, 4),
    ]
    assert given == [1, 2, 1, 2]

    # stopped after the first fine-tuning round, then continued: the same rounds, the same weights, bit for bit
    given.clear()
    resumed, _ = run_server(dict(config, **{"output-root": str(tmp_path / "b"), "num-server-rounds": 1}))
    resumed, _ = run_server(dict(config, **{"output-root": str(tmp_path / "b")}))
    assert given == [1, 2, 1, 2]
    a, b = _final_weights(straight), _final_weights(resumed)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
