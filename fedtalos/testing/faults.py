"""Deterministic fault injection for the kill-anywhere tests: ``FEDTALOS_KILL_AT="<point>@<step>"``.

Production code calls :func:`point` at named moments (``round-start``, ``after-aggregate``, ``checkpoint:after-
tensors``, ...). When the environment variable names that point and step, the process SIGKILLs itself there,
exactly like a machine dying: no cleanup, no flush. Unset (always, outside tests), a call costs a dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "FEDTALOS_KILL_AT"


def point(name: str, step: int) -> None:
    """Die here if ``FEDTALOS_KILL_AT`` is ``f"{name}@{step}"``."""
    target = os.environ.get(ENV)
    if target and target == f"{name}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
