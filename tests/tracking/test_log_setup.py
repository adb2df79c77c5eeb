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


def test_progress_is_a_bar_on_a_terminal_and_periodic_lines_in_a_log_file(bare_logger, monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: not a terminal
    clock = iter([0.0, 10.0, 31.0, 40.0, 70.0]).__next__
    lines = log_setup.ProgressLines(total=100, initial=20, desc="train epoch 1/3", clock=clock)
    assert isinstance(log_setup.progress(100, 0, "x"), log_setup.ProgressLines)
    caplog.set_level(logging.INFO, logger=bare_logger.name)
    bare_logger.propagate = True
    lines.set_postfix(loss="4.6000")
    for _ in range(4):  # at 10, 31, 40 and 70 s: a line at 31 s and at 70 s (30 s apart at least)
        lines.update(10)
    assert [r.getMessage() for r in caplog.records] == [
        "train epoch 1/3: step 40/100 (40 %), 0.6 steps/s, loss=4.6000",
        "train epoch 1/3: step 60/100 (60 %), 0.5 steps/s, loss=4.6000",
    ]
    assert sys.stderr.getvalue() == "", "no carriage-return bar states in the log file"
    caplog.clear()
    quiet = log_setup.progress(100, 0, "x", enabled=False)  # progress = false
    quiet.update(100)
    assert caplog.records == [] and sys.stderr.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    from tqdm import tqdm

    bar = log_setup.progress(100, 0, "x")
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()


def test_run_log_copies_the_lines_with_times_into_the_run_directory(bare_logger, tmp_path):
    bare_logger.info("before")
    with log_setup.run_log(tmp_path) as path:
        bare_logger.info("during %d", 1)
        bare_logger.getChild("central").info("from a module")
    bare_logger.info("after")
    lines = path.read_text().splitlines()
    assert path == tmp_path / "log.txt" and [line.split(" ", 2)[2] for line in lines] == ["during 1", "from a module"]
    assert bare_logger.level == logging.NOTSET and not bare_logger.handlers, "left as it was"
