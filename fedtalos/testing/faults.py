"""Deterministic fault injection for the kill-anywhere tests: ``FEDTALOS_KILL_AT="<point>@<step>"``.

When that variable is set, a run's hooks (``tracking.hooks.run_hooks``) include :func:`fault_injection`; at the
named point and step the process SIGKILLs itself, exactly like a machine dying: no cleanup, no flush.
Points: ``round-start``, ``after-replies``, ``after-aggregate``, ``before-eval``, ``before-checkpoint``,
``after-checkpoint`` (at the step of the round or checkpoint), ``step`` (a centralized optimizer step), and
``checkpoint:before-tensors`` / ``checkpoint:after-tensors`` / ``checkpoint:after-json`` inside a checkpoint write.
The centralized trainer prefixes its points with ``central:`` (``central:step@25``), except the checkpoint-write
ones, which belong to the checkpoint store.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from fedtalos.tracking.checkpoint import CheckpointStore

ENV = "FEDTALOS_KILL_AT"  # tracking.hooks.FAULT_INJECTION_ENV (hooks imports this module, not the reverse)


def point(name: str, step: int) -> None:
    """Die here if ``FEDTALOS_KILL_AT`` is ``f"{name}@{step}"``."""
    target = os.environ.get(ENV)
    if target and target == f"{name}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def fault_injection(store: CheckpointStore, prefix: str = "") -> Callable[[str, int], None]:
    """A hook listener that calls :func:`point` (looked up at call time, so tests can replace it) at every named
    point, its name led by ``prefix``; the checkpoint store's write stages become ``checkpoint:<stage>`` points."""
    store.fault_hook = lambda stage, step: point(f"checkpoint:{stage}", step)
    return lambda name, step: point(prefix + name, step)
