"""Named points of a run where cross-cutting concerns attach, after pfl-research's callbacks.

The loops call ``hooks(point, step)`` at the places the points name: ``round-start``, ``after-replies``,
``after-aggregate``, ``before-eval``, ``before-checkpoint``, ``after-checkpoint`` (at a unit's step) and ``step``
(a centralized optimizer step). Each listener decides for itself what to do there; fault injection (tests only,
``FEDTALOS_KILL_AT``) is the one the app knows of.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from fedtalos.tracking.checkpoint import CheckpointStore

Listener = Callable[[str, int], None]  # (point, step) → None
FAULT_INJECTION_ENV = "FEDTALOS_KILL_AT"  # "<point>@<step>": the kill-anywhere tests (fedtalos.testing.faults)


class Hooks:
    """The listeners of one run; calling it calls each of them in order."""

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self.listeners = list(listeners)

    def __call__(self, point: str, step: int) -> None:
        for listener in self.listeners:
            listener(point, step)


def run_hooks(store: CheckpointStore, prefix: str = "") -> Hooks:
    """The hooks of a run: fault injection when ``FEDTALOS_KILL_AT`` is set, else none.

    ``prefix`` names the run kind's points (the centralized trainer's are ``central:<point>``); the checkpoint
    store's own points (``checkpoint:<stage>``) are not prefixed. Only then is :mod:`fedtalos.testing` imported: the
    app never depends on test tooling.
    """
    if not os.environ.get(FAULT_INJECTION_ENV):
        return Hooks()
    from fedtalos.testing.faults import fault_injection

    return Hooks([fault_injection(store, prefix)])
