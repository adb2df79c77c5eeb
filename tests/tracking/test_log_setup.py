"""Where the ``fedtalos`` logger writes: the current stderr (command line) or Flower's handlers (ServerApp)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from fedtalos.tracking import log_setup
from fedtalos.tracking.log_setup import log_through_flower, log_to_stderr


@pytest.fixture
def bare_logger(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> logging.Logger:
    """A logger as fresh as ``fedtalos`` in a new process, set up in its place: the real one is shared by the
    whole test session (and pytest attaches its capture handlers to every logger that does not propagate)."""
    name = f"{log_setup.LOGGER}-test.{request.node.name}"
    monkeypatch.setattr(log_setup, "LOGGER", name)
    return logging.getLogger(name)


def test_log_to_stderr_writes_to_the_stderr_of_the_moment_not_a_closed_one(bare_logger, monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    log_to_stderr()
    bare_logger.info("while the first stderr is open")
    assert first.getvalue() == "while the first stderr is open\n"
    first.close()  # what pytest does with a test's captured stderr once the test is over
    monkeypatch.setattr(sys, "stderr", second)
    bare_logger.info("after it was closed")
    # A handler bound to the first stream would print "--- Logging error --- ... I/O operation on closed file".
    assert second.getvalue() == "after it was closed\n"


def test_log_to_stderr_sets_up_once_info_and_up_not_propagated(bare_logger, monkeypatch, capsys):
    log_to_stderr()
    log_to_stderr()
    assert len(bare_logger.handlers) == 1 and not bare_logger.propagate
    bare_logger.debug("not shown")
    bare_logger.info("shown")
    assert capsys.readouterr().err == "shown\n"


def test_a_logger_already_set_up_is_left_as_it_is(bare_logger):
    kept = logging.NullHandler()
    bare_logger.addHandler(kept)
    log_to_stderr()
    log_through_flower()
    assert bare_logger.handlers == [kept]


def test_log_through_flower_uses_flowers_handlers(bare_logger):
    import flwr.common.logger  # noqa: F401  (sets up the flwr logger's console handler)

    flower = logging.getLogger("flwr")
    assert flower.handlers, "Flower has handlers to route through"
    log_through_flower()
    assert bare_logger.handlers == flower.handlers and not bare_logger.propagate
    assert bare_logger.getEffectiveLevel() == logging.INFO


def test_records_through_flowers_handler_reach_the_current_stderr_after_the_old_one_closed(monkeypatch):
    # The suite's fixture (tests/conftest.py) keeps Flower's console handler off any closed capture stream; without
    # it this printed "--- Logging error --- ... ValueError: I/O operation on closed file" instead of the record.
    import flwr.supercore.logger as flower_logger

    flower = logging.getLogger("flwr")
    assert flower_logger.console_handler in flower.handlers
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    flower.info("while the first stderr is open")
    assert "while the first stderr is open" in first.getvalue()
    first.close()  # pytest closes a test's capture stream when the test is over
    monkeypatch.setattr(sys, "stderr", second)
    flower.info("after it was closed")
    assert "after it was closed" in second.getvalue() and "Logging error" not in second.getvalue()
