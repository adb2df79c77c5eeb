"""Claims: which sweep worker runs which run, so that sweeps on one output root (this machine or others sharing the
file system) split the runs and never run one twice at once.

A claim is ``<output-root>/_sweeps/<family>/<run>.claim`` (worker, host, pid and its start time, heartbeat, slot,
GPU), created atomically (a hard link, else ``O_EXCL``). The holder beats it every ``heartbeat_s`` and deletes it
when the run ends; a claim whose holder is gone (a dead pid on this host, a heartbeat older than ``stale_after``
elsewhere) is taken over under the lock directory ``<run>.claim.lock``. ``<run>.claims.jsonl`` journals them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from fedtalos.fsutil import atomic_write_bytes
from fedtalos.study.plan import PlannedRun

CLAIM_SUFFIX = ".claim"
JOURNAL_SUFFIX = ".claims.jsonl"


def process_start_time(pid: int) -> str | None:
    """When process ``pid`` started (seconds since the epoch, as text), None where unknown or dead.

    Tells a pid from a later process that reuses its number."""
    try:
        return repr(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def pid_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host (not a zombie; the same process if ``start_time`` is given)."""
    try:
        if psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists, but cannot be inspected (another user's)
    return start_time is None or process_start_time(pid) in (None, start_time)


class Claims:
    """This worker's view of the claims: claim, beat, release; see the module docstring.

    ``clock`` gives wall-clock seconds (heartbeats are compared across hosts).
    """

    def __init__(
        self,
        stale_after: float = 600.0,
        heartbeat_s: float = 30.0,
        host: str | None = None,
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if stale_after <= heartbeat_s:
            raise ValueError(f"stale_after ({stale_after} s) must exceed heartbeat_s ({heartbeat_s} s)")
        self.stale_after = stale_after
        self.heartbeat_s = heartbeat_s
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.pid_start = process_start_time(self.pid)
        self.worker = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.clock = clock

    # -- paths and records ---------------------------------------------------------------------------------------

    @staticmethod
    def path(run: PlannedRun) -> Path:
        return run.sweep_dir / f"{run.name}{CLAIM_SUFFIX}"

    @staticmethod
    def read(run: PlannedRun) -> dict[str, Any] | None:
        """The claim on ``run`` (None when unclaimed; ``{}`` when the file is unreadable, e.g. half-written)."""
        try:
            return json.loads(Claims.path(run).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _record(self, **info: Any) -> dict[str, Any]:
        now = self.clock()
        record = {"worker": self.worker, "host": self.host, "pid": self.pid, "pid_start": self.pid_start}
        return {**record, "since": now, "heartbeat": now, **info}

    def journal(self, run: PlannedRun, event: str, **info: Any) -> None:
        line = json.dumps({"event": event, "time": self.clock(), "worker": self.worker, **info})
        with open(run.sweep_dir / f"{run.name}{JOURNAL_SUFFIX}", "a") as f:
            f.write(line + "\n")

    def gone(self, holder: dict[str, Any]) -> str | None:
        """Why the holder of a claim is gone (None when it may still run)."""
        if holder.get("host") == self.host and isinstance(holder.get("pid"), int):
            if not pid_alive(holder["pid"], holder.get("pid_start")):
                return f"pid {holder['pid']} on this host is dead"
            return None
        age = self.clock() - float(holder.get("heartbeat", 0.0))
        if age > self.stale_after:
            return f"no heartbeat from {holder.get('host', '?')} for {age:.0f} s (> {self.stale_after:.0f} s)"
        return None

    # -- claiming ------------------------------------------------------------------------------------------------

    def acquire(self, run: PlannedRun, **info: Any) -> tuple[bool, str]:
        """Claim ``run`` (``info``: e.g. slot and gpu, stored in the claim). (True, how) or (False, who holds it)."""
        run.sweep_dir.mkdir(parents=True, exist_ok=True)
        record = self._record(**info)
        if _create_exclusive(self.path(run), json.dumps(record)):
            self.journal(run, "claim", **info)
            return True, "claimed"
        holder = self.read(run)
        if holder is None:  # released between our attempt and the read: try again
            return self.acquire(run, **info)
        if holder == {}:
            return False, "claim being written"
        if holder.get("worker") == self.worker:
            return True, "already ours"
        reason = self.gone(holder)
        if reason is None:
            return False, f"held by {holder.get('worker')} since {_when(holder.get('since'))}"
        with self._locked(run) as locked:
            if not locked or self.read(run) != holder:  # someone else is taking it over, or did
                return False, "being taken over by another worker"
            atomic_write_bytes(self.path(run), json.dumps(record).encode(), durable=False)
        self.journal(run, "takeover", previous=holder.get("worker"), reason=reason, **info)
        return True, f"took over from {holder.get('worker')} ({reason})"

    def beat(self, run: PlannedRun) -> bool:
        """Refresh the heartbeat of our claim on ``run``; False when the claim is no longer ours."""
        with self._locked(run) as locked:
            holder = self.read(run)
            if not holder or holder.get("worker") != self.worker:
                return False
            if locked:  # else a takeover is looking at it right now: it will find us alive next time
                atomic_write_bytes(
                    self.path(run), json.dumps({**holder, "heartbeat": self.clock()}).encode(), durable=False
                )
            return True

    def release(self, run: PlannedRun, outcome: str = "") -> None:
        """Delete our claim on ``run`` (a claim of another worker is left alone)."""
        with self._locked(run):
            holder = self.read(run)
            if holder and holder.get("worker") == self.worker:
                with contextlib.suppress(FileNotFoundError):
                    self.path(run).unlink()
                self.journal(run, "release", outcome=outcome)

    @contextlib.contextmanager
    def _locked(self, run: PlannedRun) -> Iterator[bool]:
        """Hold ``<claim>.lock`` (True) or not (False: another worker holds it; one left by a dead worker longer
        than ``stale_after`` ago is removed first)."""
        lock = self.path(run).with_name(self.path(run).name + ".lock")
        try:
            lock.mkdir()
        except FileExistsError:
            try:
                stale = self.clock() - lock.stat().st_mtime > self.stale_after
            except FileNotFoundError:
                stale = False
            if not stale:
                yield False
                return
            with contextlib.suppress(OSError):
                lock.rmdir()
            try:
                lock.mkdir()
            except FileExistsError:
                yield False
                return
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                lock.rmdir()


def _create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` if it does not exist, atomically; False if it exists."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # a complete file appears under the name, or nothing does
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some FUSE mounts): O_EXCL, then the content
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        tmp.unlink()


def _when(seconds: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(seconds)))
    except (TypeError, ValueError):
        return "?"
