"""The per-process resources: what they log about the device and precision they chose."""

from __future__ import annotations

import logging
from pathlib import Path

from fedtalos.config import RunConfig
from fedtalos.task.resources import get_resources
from tests.support.tiny import offline_tiny


def test_the_log_says_which_precision_and_why(fake_cifar_root: Path, fedtalos_log):
    fedtalos_log.set_level(logging.DEBUG, logger="fedtalos")
    config = RunConfig.from_mapping(offline_tiny(fake_cifar_root, values={"precision": "auto", "seed": 17}))
    resources = get_resources(config)
    assert resources.dtype is None
    (record,) = [r for r in fedtalos_log.records if r.getMessage().startswith("precision: ")]
    assert record.getMessage() == "precision: fp32: precision = 'auto' on cpu"
    assert record.levelno == logging.DEBUG, "on the CPU there is no choice to report at INFO"
