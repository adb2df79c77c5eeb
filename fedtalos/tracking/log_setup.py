"""Where the ``fedtalos`` logger's lines go: stderr for the command line, Flower's handlers inside a ServerApp.

Both set the logger up once: a process that has already given it a handler keeps that handler.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER = "fedtalos"


class CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes each record to whatever ``sys.stderr`` is at that moment.

    A plain ``StreamHandler()`` keeps the ``sys.stderr`` of the moment it was made; when that stream is replaced
    and closed (pytest's captured stderr at the end of a test), every later record fails with "ValueError: I/O
    operation on closed file". Looking the stream up per record follows the replacement instead.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # not StreamHandler.__init__: it would store a stream

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def log_to_stderr() -> None:
    """Log fedtalos' INFO lines, message only, to the current ``sys.stderr`` (once per process)."""
    ours = logging.getLogger(LOGGER)
    if not ours.handlers:
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def log_through_flower() -> None:
    """Log fedtalos' INFO lines through the ``flwr`` logger's handlers (once per process)."""
    # Flower streams its own logger's output to `flwr run --stream` and `flwr log`: log through its handlers.
    ours, flower = logging.getLogger(LOGGER), logging.getLogger("flwr")
    if not ours.handlers:
        for handler in flower.handlers:
            ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False
