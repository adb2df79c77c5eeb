"""Where a client update's time goes outside its J optimizer steps (the framework's cost per client).

A train reply carries four stamps (``client_stamps``): when the handler started and ended (``time.time()``,
seconds since the epoch: in simulation the server and the actors share one clock), the seconds spent in the
optimizer steps, and the actor's process id. The server adds when it handed the messages over and when each
reply arrived, and measures how long it took to check each reply (reading its upload). :func:`overhead` turns
that into the per-client cost, split into

- ``delivery``: from the message being handed over (or the actor's previous reply, whichever is later: an actor
  serves its messages one after another, and waiting for a busy actor is not overhead) to the handler starting;
- ``setup``: the handler's time outside the steps (weights in, model and optimizer set-up, weights out);
- ``reply``: from the handler's end to the server seeing the reply (includes up to one poll interval);
- ``accept``: the server reading and checking the upload.

Stamps from another machine's clock (the Deployment Engine) would make ``delivery`` and ``reply`` meaningless,
so the server reports them only in simulation.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

TIME_START = "time-start"  # reply metric: handler start, s since the epoch
TIME_END = "time-end"  # reply metric: handler end (just before the reply is built), s since the epoch
TIME_STEPS = "time-steps"  # reply metric: seconds in the J optimizer steps
ACTOR = "actor"  # reply metric: process id of the actor that served the message
KEYS = (TIME_START, TIME_END, TIME_STEPS, ACTOR)


def client_stamps(started: float, steps_s: float) -> dict[str, float | int]:
    """The reply metrics of a handler that started at ``started`` (``time.time()``) and stepped ``steps_s``."""
    return {TIME_START: started, TIME_END: time.time(), TIME_STEPS: steps_s, ACTOR: os.getpid()}


@dataclass(frozen=True)
class Delivery:
    """One accepted reply's timing: its stamps, when the server saw it, and how long accepting it took (s)."""

    stamps: Mapping[str, float]
    arrived: float
    accept_s: float


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def overhead(pushed_at: float, deliveries: Mapping[int, Delivery], clocks_shared: bool) -> dict[str, float]:
    """Per-client means (seconds) of ``delivery_s``, ``setup_s``, ``reply_s``, ``accept_s``, ``steps_s`` and their
    sum outside the steps ``overhead_s``; the row keys are prefixed ``client_``. Replies without stamps are left
    out; ``{}`` if none has them. Without ``clocks_shared`` only ``setup``, ``accept`` and ``steps`` are reported.
    """
    stamped = {p: d for p, d in deliveries.items() if all(_number(d.stamps.get(k)) for k in KEYS)}
    if not stamped:
        return {}
    sums = dict.fromkeys(("delivery_s", "setup_s", "reply_s", "accept_s", "steps_s"), 0.0)
    by_actor: dict[int, list[Delivery]] = {}
    for d in stamped.values():
        by_actor.setdefault(int(d.stamps[ACTOR]), []).append(d)
    for served in by_actor.values():
        free_at = pushed_at
        for d in sorted(served, key=lambda x: x.stamps[TIME_START]):
            start, end, steps = d.stamps[TIME_START], d.stamps[TIME_END], d.stamps[TIME_STEPS]
            sums["delivery_s"] += max(start - max(free_at, pushed_at), 0.0)
            sums["setup_s"] += max(end - start - steps, 0.0)
            sums["reply_s"] += max(d.arrived - end, 0.0)
            sums["accept_s"] += d.accept_s
            sums["steps_s"] += steps
            free_at = end
    if not clocks_shared:
        sums.pop("delivery_s"), sums.pop("reply_s")
    means = {k: v / len(stamped) for k, v in sums.items()}
    means["overhead_s"] = sum(v for k, v in means.items() if k != "steps_s")
    return {f"client_{k}": v for k, v in means.items()}
