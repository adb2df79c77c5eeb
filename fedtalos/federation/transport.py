"""How model-sized tensors travel: inside Flower messages, or through shared memory on one machine.

In simulation every message would carry the model's weights through pickling, Ray and Flower's encoding, about
200 ms of CPU per client and round (``bench/round_overhead.py``). With ``transport = "shared-memory"`` (the default
in simulation, ``"auto"``) the server writes the global weights into one file in ``/dev/shm`` and each client of a
cohort writes its upload into the file of its place in the cohort: slots (:mod:`fedtalos.federation.slots`) that
live for the whole run, are overwritten in place and carry the payload's sequence number, which the message names.
The weights are the same bit for bit (the drift, a reduction over an upload, may differ in its last bit: alignment
changes its vector lanes), and a resumed run keeps its transport. The Deployment Engine always uses messages.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict

from fedtalos.federation import protocol as P
from fedtalos.federation import slots

WEIGHTS_FILE = "weights-file"  # config key: path of the slot with the round's global weights
UPLOAD_FILE = "upload-file"  # config key: the upload slots' path, with {slot} for the client's place in the cohort
UPLOAD_PIDS = "upload-pids"  # config key: the cohort in slot order
SEQUENCE = "slot-sequence"  # config key: the payload's sequence number, in its weights and in every upload

log = logging.getLogger(__name__)


class TransportUnavailable(RuntimeError):
    """A client cannot read or write the shared-memory files (it does not share the server's machine)."""


def _base_dir() -> Path:
    chosen = os.environ.get("FEDTALOS_TRANSPORT_DIR")
    if chosen:
        return Path(chosen)
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def in_simulation(grid: Any) -> bool:
    """True for Flower's in-memory grid: the simulation engine, whose nodes share the server's machine."""
    return type(grid).__name__ == "InMemoryGrid"


def _free_bytes(path: Path) -> int:
    """Free bytes of the file system that holds ``path``, or that will hold it (its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return 0
    return 0


def choose(setting: str, grid: Any, need_bytes: int = 0) -> tuple[str, Path | None]:
    """(mode, directory) for the run-config value ``transport``, the server's grid and a round's file bytes.

    'message' → ('message', None). 'auto' → messages outside the simulation; in it, and for 'shared-memory', the
    files go to ``/dev/shm`` (or ``$FEDTALOS_TRANSPORT_DIR``) when it has ``need_bytes`` free. Docker and
    Kubernetes give containers a 64 MB ``/dev/shm``, less than one ViT-S/16 round: then the files go to the
    temporary directory if it has the space (logged), else 'auto' falls back to messages (logged) and
    'shared-memory' raises :class:`TransportUnavailable`, before the first round, saying what to change.
    """
    if setting == "message" or (setting == "auto" and not in_simulation(grid)):
        return "message", None
    base = _base_dir()
    free = _free_bytes(base)
    if free >= need_bytes:
        return "shared-memory", base
    mb = 1e6
    short = f"{base} has {free / mb:.0f} MB free, a round needs about {need_bytes / mb:.0f} MB ((cohort + 1) × model)"
    fallback = Path(tempfile.gettempdir())
    if not os.environ.get("FEDTALOS_TRANSPORT_DIR") and fallback != base and _free_bytes(fallback) >= need_bytes:
        log.warning("%s: the shared-memory transport writes its files to %s instead", short, fallback)
        return "shared-memory", fallback
    if setting == "shared-memory":
        raise TransportUnavailable(
            f"transport = 'shared-memory': {short}. Enlarge it (docker run --shm-size=2g), set "
            'FEDTALOS_TRANSPORT_DIR to a directory with the space, or set transport = "message"'
        )
    log.warning("%s, and so has no other directory: the weights travel in messages (transport = 'message')", short)
    return "message", None


STALE_AFTER_S = 3600.0  # a directory of another run, untouched this long and with its server gone, is litter


def _alive(process_id: int) -> bool:
    try:
        os.kill(process_id, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        pass
    return True


def remove_stale_directories(base: Path, run_key: str) -> list[Path]:
    """Remove what killed servers left in ``base``; returns the directories removed.

    A server killed with SIGKILL (or a machine that lost power in a container that kept ``/dev/shm``) cannot
    clean up, and its directory holds up to (cohort + 1) × model size of memory. The directory names carry the
    owner's uid, run key and process id. Removed: those of this run whose server is gone (this server resumes that
    run), and those of other runs whose server is gone and which nobody touched for ``STALE_AFTER_S`` (a process
    that looks dead may live in another pid namespace that shares ``/dev/shm``; its run would touch its directory
    every round).
    """
    now = time.time()
    removed = []
    prefix = f"fedtalos-{os.getuid()}-"
    for path in base.glob(f"{prefix}*-*"):
        key, _, server = path.name[len(prefix) :].rpartition("-")  # the owning server's process id
        if not server.isdigit() or int(server) == os.getpid() or _alive(int(server)):
            continue
        try:
            idle = now - path.stat().st_mtime
        except OSError:
            continue
        if key == run_key or idle > STALE_AFTER_S:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class ServerTransport:
    """The server's side: what to put into a message instead of (or as) the tensors, and how to read uploads."""

    def __init__(self, mode: str, run_key: str, base: Path | None = None) -> None:
        self.mode = mode
        self.sizes: dict[str, int] = {}  # file → bytes of its current payload, for the byte metrics
        self.directory: Path | None = None
        self._reader = slots.Reader(reuse=False)  # an update is kept until the round is aggregated
        self._payload: tuple[str, int] | None = None  # (name, sequence) of the payload being exchanged
        self._slot_of: dict[int, int] = {}  # partition id → its upload slot in the current payload
        if mode == "shared-memory":
            base = base or _base_dir()
            for path in remove_stale_directories(base, run_key):
                log.info("removed %s, left behind by a server that was killed", path)
            self.directory = base / f"fedtalos-{os.getuid()}-{run_key}-{os.getpid()}"
            self.directory.mkdir(parents=True, exist_ok=True)

    def outbound(
        self, tensors: Mapping[str, torch.Tensor], name: str, cohort: Sequence[int]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(record entries, config entries) that deliver ``tensors`` to the clients of ``cohort`` (see
        :meth:`payload_bytes`).

        ``name`` names this payload (e.g. ``train-12``). With shared memory the weights overwrite the run's weights
        slot under a new sequence number, and the client at place i of ``cohort`` uploads into slot ``up-<i>``.
        """
        if self.directory is None:
            return {P.ARRAYS: P.encode_tensors(tensors)}, {}
        sequence = slots.new_sequence()
        path = self.directory / "weights.slot"
        self.sizes[str(path)] = slots.write(path, tensors, sequence)
        self._payload = (name, sequence)
        self._slot_of = {pid: place for place, pid in enumerate(cohort)}
        return {}, {
            WEIGHTS_FILE: str(path),
            SEQUENCE: sequence,
            UPLOAD_FILE: str(self.directory / "up-{slot}.slot"),
            UPLOAD_PIDS: list(cohort),
        }

    def payload_bytes(self, content: RecordDict) -> int:
        """Bytes a message delivers: its records, plus the shared-memory payload it names."""
        config = content.config_records.get(P.CONFIG, {})
        return P.message_bytes(content) + self.sizes.get(str(config.get(WEIGHTS_FILE, "")), 0)

    def inbound(self, reply: RecordDict, name: str, pid: int) -> tuple[dict[str, torch.Tensor], int]:
        """The tensors a client uploaded for payload ``name``, and their size in bytes.

        With messages: decoded from the reply (``protocol.decode_upload``). With shared memory: read from the slot
        the server gave ``pid`` (never a path the client chose), if it holds this payload's sequence number and
        ``pid``'s upload.
        """
        if self.directory is None:
            return P.decode_upload(reply), P.message_bytes(reply)
        if reply.array_records:
            raise P.ReplyRejected("arrays in the message, but this run exchanges tensors through shared memory")
        if self._payload is None or self._payload[0] != name or pid not in self._slot_of:
            raise P.ReplyRejected(f"no upload slot for client {pid} in payload {name}")
        path = self.directory / f"up-{self._slot_of[pid]}.slot"
        try:
            return self._reader.read(path, self._payload[1], pid)
        except (OSError, slots.SlotError) as e:  # missing, torn, stale or garbled: a bad reply, not a server crash
            raise P.ReplyRejected(f"no readable upload in {path.name}: {type(e).__name__}: {e}") from None

    def done(self, name: str) -> None:
        """Payload ``name`` is aggregated: its slots are free for the next one (late uploads cannot be read)."""
        if self._payload is not None and self._payload[0] == name:
            self._payload, self._slot_of = None, {}

    def close(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# The client's side.

_reader = slots.Reader()  # this process's copy of the latest global weights it read


def receive(content: RecordDict, config: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """The tensors a message delivers (from its arrays or from the shared-memory slot it names), or None.

    From shared memory the tensors are views of this process's buffer, valid until the next call: load them into
    the model, do not keep them.
    """
    path = config.get(WEIGHTS_FILE)
    if path:
        try:
            return _reader.read(Path(str(path)), int(config[SEQUENCE]))[0]
        except OSError as e:
            raise TransportUnavailable(
                f"cannot read {path} ({e.strerror or e}): this client does not share the server's machine; "
                'set the run-config key transport = "message"'
            ) from None
        except slots.SlotError as e:
            raise RuntimeError(f"{path} does not hold this message's global weights ({e}): a late message") from None
    if P.ARRAYS in content.array_records:
        return P.decode_tensors(content[P.ARRAYS])
    return None


def send(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], pid: int) -> ArrayRecord | None:
    """Deliver an upload: into the slot the server gave this partition (returns None), or as the reply's
    ArrayRecord."""
    target = config.get(UPLOAD_FILE)
    if target:
        cohort = [int(p) for p in config[UPLOAD_PIDS]]
        if pid not in cohort:
            raise ValueError(f"partition {pid} has no upload slot: the message's cohort is {cohort}")
        try:
            slots.write(Path(str(target).format(slot=cohort.index(pid))), tensors, int(config[SEQUENCE]), pid)
        except OSError as e:
            raise TransportUnavailable(
                f'cannot write {target} ({e.strerror or e}); set the run-config key transport = "message"'
            ) from None
        return None
    return P.encode_tensors(tensors)
