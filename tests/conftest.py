"""Shared fixtures: offline settings, generated CIFAR-format data, Flower's task identity for Message objects."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile

# Offline and quiet: set before anything imports timm, huggingface_hub or flwr.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
# Client mask caches go to a private directory, never the user's ~/.cache.
os.environ["FEDTALOS_CACHE"] = tempfile.mkdtemp(prefix="fedtalos-test-cache-")

import pytest
import torch

from fedtalos.testing.synthetic import write_fake_cifar100
from tests.support.tiny import task_identity

torch.set_num_threads(min(2, os.cpu_count() or 1))
pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(scope="session")
def fake_cifar_root(tmp_path_factory: pytest.TempPathFactory):
    """A generated CIFAR-100 folder in the real torchvision layout: 20 train / 5 test images per class."""
    return write_fake_cifar100(tmp_path_factory.mktemp("cifar"), train_per_class=20, test_per_class=5)


class _CurrentStderr(io.TextIOBase):
    """A stream that is whatever ``sys.stderr`` is when written to (cf. ``tracking.log_setup.CurrentStderrHandler``)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True, scope="session")
def flower_logs_to_the_current_stderr():
    """Flower's console handler keeps the ``sys.stderr`` of the moment flwr was imported: in a test session, a
    capture stream that pytest closes (after a test, or at the end), so every later record through it, Flower's or
    fedtalos's (``log_through_flower`` routes the ``fedtalos`` logger to the same handler), printed "ValueError: I/O
    operation on closed file". Point it at the current stderr instead."""
    import flwr.supercore.logger as flower_logger

    previous = flower_logger.console_handler.setStream(_CurrentStderr())
    yield
    flower_logger.console_handler.setStream(
        previous if previous is not None and not previous.closed else sys.__stderr__
    )


@pytest.fixture
def flower_task_identity():
    """Let tests build flwr ``Message`` objects outside a Flower process (internal API, isolated here)."""
    with task_identity():
        yield


@pytest.fixture
def fedtalos_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog for the package's records (INFO and up). The ServerApp routes the ``fedtalos`` logger to Flower's
    handlers and stops it propagating to the root logger, where caplog listens: attach caplog to it directly."""
    logger = logging.getLogger("fedtalos")
    caplog.set_level(logging.INFO, logger="fedtalos")
    propagate = logger.propagate
    logger.addHandler(caplog.handler)
    logger.propagate = False  # each record once
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate
