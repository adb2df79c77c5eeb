"""The per-process resources: what they log about the device and precision they chose."""

from __future__ import annotations

from pathlib import Path

from fedtalos.config import RunConfig
from fedtalos.task.resources import get_resources
from tests.support.tiny import offline_tiny


def test_the_log_says_which_precision_and_why(fake_cifar_root: Path, fedtalos_log):
    config = RunConfig.from_mapping(offline_tiny(fake_cifar_root, values={"precision": "auto", "seed": 17}))
    resources = get_resources(config)
    assert resources.dtype is None
    assert "precision: fp32: precision = 'auto' on cpu" in fedtalos_log.text
