"""Where a client update's time goes outside its J optimizer steps, and the laps of a round on the server.

A train reply carries stamps (``client_stamps``: handler start and end, seconds in the steps, the actor's pid, and
the seconds it took to load the global weights and to hand over its upload); the server adds when it handed the
messages over, when each reply arrived and how long its check took. :func:`overhead` splits the per-client cost into
``delivery`` (hand-over, or the actor's previous reply, to the handler's start), ``setup`` (the handler outside the
steps; of it, ``weights`` in and ``upload`` out), ``reply`` (handler end to the server seeing it) and ``accept`` (the
server's check). ``delivery`` and ``reply`` need one clock: only in simulation.
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
TIME_WEIGHTS = "time-weights"  # reply metric: seconds loading the global weights into the model (part of setup)
TIME_UPLOAD = "time-upload"  # reply metric: seconds handing the upload to the transport (part of setup)
KEYS = (TIME_START, TIME_END, TIME_STEPS, ACTOR)
PARTS = {TIME_WEIGHTS: "weights_s", TIME_UPLOAD: "upload_s"}  # optional parts of setup → row key (client_…)


def client_stamps(
    started: float, steps_s: float, weights_s: float = 0.0, upload_s: float = 0.0
) -> dict[str, float | int]:
    """The reply metrics of a handler that started at ``started`` (``time.time()``), stepped ``steps_s`` and spent
    ``weights_s`` loading the weights and ``upload_s`` handing over its upload."""
    return {
        TIME_START: started,
        TIME_END: time.time(),
        TIME_STEPS: steps_s,
        ACTOR: os.getpid(),
        TIME_WEIGHTS: weights_s,
        TIME_UPLOAD: upload_s,
    }


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
    for stamp, key in PARTS.items():  # parts of setup, not added to the overhead again
        if all(_number(d.stamps.get(stamp)) for d in stamped.values()):
            means[key] = sum(float(d.stamps[stamp]) for d in stamped.values()) / len(stamped)
    return {f"client_{k}": v for k, v in means.items()}


class Stopwatch:
    """Seconds between laps (``time.perf_counter``): a round's ``configure_s``, ``clients_s``, ``aggregate_s``."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the previous lap (or the start)."""
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
