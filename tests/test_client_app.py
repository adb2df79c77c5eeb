"""The ClientApp on GPU machines, forced on the CPU: cached memory handed back after the model-editing queries,
and the Fisher chunk sized from the device's free memory."""

from __future__ import annotations

import pytest

from fedtalos import client_app
from fedtalos.editing import scoring
from tests.support.fakegrid import run_server
from tests.support.tiny import TINY_FEDERATION, offline_tiny

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def test_ridge_and_fisher_queries_empty_the_cache_and_size_the_chunk(fake_cifar_root, tmp_path, monkeypatch):
    emptied, chunks = [], []
    monkeypatch.setattr(client_app, "empty_cache", lambda device: emptied.append(device.type))
    real = scoring.fisher_scores

    def recording(*args, chunk_size=None, **kwargs):
        chunks.append(chunk_size)
        return real(*args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(scoring, "fisher_scores", recording)
    monkeypatch.setattr(scoring, "fitting_chunk_size", lambda device, per_sample, stable: 8)
    config = {
        **offline_tiny(fake_cifar_root, tmp_path, TINY_FEDERATION),
        "run-name": "edited",
        "num-clients": 4,
        "head": "ridge",
        "mask-rule": "least-sensitive",
        "calibration-rounds": 1,
        "num-server-rounds": 1,
        "eval-every": 100,
    }
    run_server(config)
    ridge_replies, fisher_replies = config["num-clients"], len(chunks)
    assert fisher_replies >= 1 and chunks == [8] * fisher_replies
    assert emptied == ["cpu"] * (ridge_replies + fisher_replies)
