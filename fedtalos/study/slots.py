"""Sweep slots: where the runs of ``fedtalos sweep --parallel N [--gpus 0,1,...]`` run, and ``--shard k/N``.

Slot ``i`` (0-based) runs on GPU ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``; several slots may share one)
and on a private simulation SuperLink of its own (:mod:`fedtalos.launch.superlink`: a free port, its own
``FLWR_HOME`` in a temporary directory on local disk), started when the slot's first federated run starts. Its
runs' simulations start their own local Ray (``RAY_ADDRESS=local``) with ``init-args-num-cpus`` = the slot's share
of this machine's cores (at least 1), unless ``--federation-config`` sets it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_GPU = re.compile(r"^(\d+|(GPU|MIG)-[A-Za-z0-9-]+)$")


def available_cpus() -> int:
    """CPU cores this process may use (its affinity where the OS tells, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def parse_gpus(text: str, visible: int | None = None) -> list[str]:
    """``"0,1,3"`` → ``["0", "1", "3"]``: CUDA device indices (or ``GPU-``/``MIG-`` UUIDs), no repeats.

    ``visible``: how many CUDA devices this machine shows (an index must be below it); None = do not check.

    Raises:
        ValueError: an empty list, a value that is no GPU index or UUID, a repeat, an index not on this machine.
    """
    gpus = [g.strip() for g in text.split(",")]
    if not text.strip() or any(not g for g in gpus):
        raise ValueError(f"--gpus {text!r}: give GPU indices separated by commas, e.g. --gpus 0,1")
    bad = [g for g in gpus if not _GPU.match(g)]
    if bad:
        raise ValueError(f"--gpus {text!r}: {', '.join(bad)} is not a GPU index (0, 1, ...) or a GPU-/MIG- UUID")
    if len(set(gpus)) != len(gpus):
        raise ValueError(
            f"--gpus {text!r}: a GPU is listed twice (slots share GPUs by themselves: slot i uses gpus[i % n])"
        )
    if visible is not None:
        missing = [g for g in gpus if g.isdigit() and int(g) >= visible]
        if missing:
            raise ValueError(f"--gpus {text!r}: this machine shows {visible} CUDA GPU(s); no GPU {', '.join(missing)}")
    return gpus


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` → ``(2, 4)``: this machine's shard k of N (1 <= k <= N).

    Raises:
        ValueError: not of the form k/N with 1 <= k <= N.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"--shard {text!r}: use k/N with 1 <= k <= N, e.g. --shard 1/2")
    return int(m.group(1)), int(m.group(2))


def shard(runs: Sequence, k: int, n: int) -> list:
    """Shard ``k`` of ``n`` (1-based) of the planned runs: every ``n``-th run of the plan's order, from the ``k``-th.

    The split depends only on the planned list, so every machine given the same grid files, seeds and ``--only``
    gets a disjoint part and the ``n`` shards together are the plan, each run once; the seed-major order spreads
    every configuration over the shards.
    """
    return list(runs)[k - 1 :: n]


@dataclass
class Slot:
    """One place a run can run: its index, GPU (None = whatever this process sees) and CPU share."""

    index: int
    gpu: str | None
    cpus: int
    _env: dict[str, str] | None = field(default=None, repr=False)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def label(self) -> str:
        return f"slot {self.index + 1}" + (f" (GPU {self.gpu})" if self.gpu is not None else "")

    def process_env(self) -> dict[str, str]:
        """Variables for every process of this slot's runs (the SuperLink, a centralized run)."""
        env = {"RAY_ADDRESS": "local"}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    def federation_extra(self, extra: str) -> str:
        """``extra`` plus ``init-args-num-cpus`` = this slot's share of the cores (unless ``extra`` sets it)."""
        if "init-args-num-cpus" in extra:
            return extra
        return f"{extra} init-args-num-cpus={self.cpus}".strip()

    def flwr_env(self) -> dict[str, str]:
        """The environment for ``flwr`` commands on this slot's SuperLink, starting it on first use."""
        with self._lock:
            if self._env is None:
                from fedtalos.launch.superlink import private_superlink

                home = Path(tempfile.mkdtemp(prefix=f"fedtalos-slot{self.index + 1}-"))
                self._stack.callback(shutil.rmtree, home, True)
                link = private_superlink(home / "flwr-home", self.process_env(), timeout=180.0)  # a loaded machine
                self._env = self._stack.enter_context(link)
            return self._env

    def close(self) -> None:
        """Stop the slot's SuperLink (with whatever still runs on it) and delete its FLWR_HOME."""
        with self._lock:
            self._stack.close()
            self._env = None


def make_slots(parallel: int, gpus: Sequence[str] | None = None, cpus: int | None = None) -> list[Slot]:
    """``parallel`` slots, slot i on ``gpus[i % len(gpus)]``, each with ``cpus // parallel`` cores (at least 1).

    Raises:
        ValueError: ``parallel`` < 1.
    """
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"--parallel {parallel!r}: must be a whole number >= 1")
    share = max(1, (cpus or available_cpus()) // parallel)
    return [Slot(i, gpus[i % len(gpus)] if gpus else None, share) for i in range(parallel)]
