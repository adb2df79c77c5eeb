"""How model-sized tensors travel: inside Flower messages, or through shared memory on one machine.

In simulation every message would carry the model's weights through pickling, Ray and Flower's encoding, about
200 ms of CPU per client and round (``bench/round_overhead.py``). With ``transport = "shared-memory"`` (the default
in simulation, ``"auto"``) the server writes the global weights into one file in ``/dev/shm`` and each client of a
cohort writes its upload into the file of its place in the cohort: slots (:mod:`fedtalos.federation.shared_memory`) that
live for the whole run, are overwritten in place and carry the payload's sequence number, which the message names.
The weights are the same bit for bit (the drift, a reduction over an upload, may differ in its last bit: alignment
changes its vector lanes), and a resumed run keeps its transport. The Deployment Engine always uses messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict

from fedtalos.federation import protocol as P
from fedtalos.federation import shared_memory

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
    """The server's side: what to put into a message instead of (or as) the tensors, and how to read uploads.

    With shared memory it owns the run's slots: the global weights' and one upload slot per place in a cohort, mapped
    once. An accepted upload is read in place (views of its slot, held until the next payload goes out), so the
    server copies no upload: it checks and folds them where the clients wrote them.
    """

    def __init__(self, mode: str, run_key: str, base: Path | None = None) -> None:
        self.mode = mode
        self._weights_bytes = 0  # of the current payload in the weights slot, for the byte metrics
        self.directory: Path | None = None
        self._weights: shared_memory.Slot | None = None
        self._uploads: dict[int, shared_memory.Slot] = {}  # place in the cohort → its slot
        self._payload: tuple[str, int] | None = None  # (name, sequence) of the payload being exchanged
        self._slot_of: dict[int, int] = {}  # partition id → its place in the current payload's cohort
        if mode == "shared-memory":
            base = base or _base_dir()
            for path in remove_stale_directories(base, run_key):
                log.info("removed %s, left behind by a server that was killed", path)
            self.directory = base / f"fedtalos-{os.getuid()}-{run_key}-{os.getpid()}"
            self.directory.mkdir(parents=True, exist_ok=True)

    def _upload_slot(self, place: int) -> shared_memory.Slot:
        assert self.directory is not None
        slot = self._uploads.get(place)
        if slot is None:
            slot = self._uploads[place] = shared_memory.Slot(self.directory / f"up-{place}.slot", create=True)
        return slot

    def outbound(
        self, tensors: Mapping[str, torch.Tensor], name: str, cohort: Sequence[int]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(record entries, config entries) that deliver ``tensors`` to the clients of ``cohort`` (see
        :meth:`payload_bytes`).

        ``name`` names this payload (e.g. ``train-12``). With shared memory the weights overwrite the run's weights
        slot under a new sequence number, and the client at place i of ``cohort`` uploads into slot ``up-<i>``. The
        previous payload's uploads are let go: the caller is done with them.
        """
        if self.directory is None:
            return {P.ARRAYS: P.encode_tensors(tensors)}, {}
        for slot in self._uploads.values():
            slot.release()
        if self._weights is None:
            self._weights = shared_memory.Slot(self.directory / "weights.slot", create=True)
        sequence = shared_memory.new_sequence()
        path = self._weights.path
        self._weights_bytes = self._weights.write(tensors, sequence)
        self._payload = (name, sequence)
        self._slot_of = {pid: place for place, pid in enumerate(cohort)}
        for place in range(len(cohort)):
            self._upload_slot(place)  # the files exist before any client opens them
        return {}, {
            WEIGHTS_FILE: str(path),
            SEQUENCE: sequence,
            UPLOAD_FILE: str(self.directory / "up-{slot}.slot"),
            UPLOAD_PIDS: list(cohort),
        }

    def payload_bytes(self, content: RecordDict) -> int:
        """Bytes a message delivers: its records, plus the shared-memory payload it names."""
        config = content.config_records.get(P.CONFIG, {})
        return P.message_bytes(content) + (self._weights_bytes if config.get(WEIGHTS_FILE) else 0)

    def inbound(self, reply: RecordDict, name: str, pid: int) -> tuple[dict[str, torch.Tensor], int]:
        """The tensors a client uploaded for payload ``name``, and their size in bytes.

        With messages: decoded from the reply (``protocol.decode_upload``). With shared memory: views of the slot
        the server gave ``pid`` (never a path the client chose), if it holds this payload's sequence number and
        ``pid``'s upload; valid until the next :meth:`outbound` (or :meth:`reject` of ``pid``).
        """
        if self.directory is None:
            return P.decode_upload(reply), P.message_bytes(reply)
        if reply.array_records:
            raise P.ReplyRejected("arrays in the message, but this run exchanges tensors through shared memory")
        if self._payload is None or self._payload[0] != name or pid not in self._slot_of:
            raise P.ReplyRejected(f"no upload slot for client {pid} in payload {name}")
        slot = self._upload_slot(self._slot_of[pid])
        slot.hold()  # no late writer changes it while the round uses it
        try:
            return slot.read(self._payload[1], pid)
        except (OSError, shared_memory.SlotError) as e:  # missing, torn, stale, garbled: a bad reply, not a crash
            slot.release()
            raise P.ReplyRejected(f"no readable upload in {slot.path.name}: {type(e).__name__}: {e}") from None

    def reject(self, pid: int) -> None:
        """``pid``'s reply was rejected: its slot is free again (for the retry's upload)."""
        place = self._slot_of.get(pid)
        if place is not None and place in self._uploads:
            self._uploads[place].release()

    def done(self, name: str) -> None:
        """Payload ``name``'s exchange is over: late uploads are not read. Its accepted uploads stay readable until
        the next :meth:`outbound`."""
        if self._payload is not None and self._payload[0] == name:
            self._payload, self._slot_of = None, {}

    def close(self) -> None:
        for slot in [*self._uploads.values(), *([self._weights] if self._weights else [])]:
            slot.close()
        self._uploads, self._weights = {}, None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# The client's side: the slots this process has mapped (those of one server's directory at a time).

_client_slots: dict[str, shared_memory.Slot] = {}


def _client_slot(path: str) -> shared_memory.Slot:
    slot = _client_slots.get(path)
    if slot is None:
        directory = os.path.dirname(path)
        for other in [p for p in _client_slots if os.path.dirname(p) != directory]:  # another run's
            _client_slots.pop(other).close()
        slot = _client_slots[path] = shared_memory.Slot(Path(path), pin=_uses_cuda())
    return slot


def _uses_cuda() -> bool:
    """This process moves tensors to and from a GPU: its slots are worth page-locking (one DMA each way)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


@dataclass(frozen=True)
class Delivered:
    """What a message delivered: the tensors (None: no weights) and a key naming the payload (None: in the
    message itself)."""

    tensors: dict[str, torch.Tensor] | None
    key: tuple[str, int] | None


@contextlib.contextmanager
def received(content: RecordDict, config: Mapping[str, Any]) -> Iterator[Delivered]:
    """The tensors a message delivers (from its arrays or from the shared-memory slot it names), for the block.

    From shared memory they are views of the mapped slot, which no writer changes during the block: load them into
    the model, do not keep them. Their ``key`` names the payload (the same key, the same weights).
    """
    path = config.get(WEIGHTS_FILE)
    if not path:
        tensors = P.decode_tensors(content[P.ARRAYS]) if P.ARRAYS in content.array_records else None
        yield Delivered(tensors, None)
        return
    try:
        slot = _client_slot(str(path))
    except OSError as e:
        raise TransportUnavailable(
            f"cannot read {path} ({e.strerror or e}): this client does not share the server's machine; "
            'set the run-config key transport = "message"'
        ) from None
    sequence = int(config[SEQUENCE])
    with slot.holding():
        try:
            tensors, _ = slot.read(sequence)
        except shared_memory.SlotError as e:
            raise RuntimeError(f"{path} does not hold this message's global weights ({e}): a late message") from None
        yield Delivered(tensors, (str(path), sequence))


def to_shared_memory(config: Mapping[str, Any]) -> bool:
    """Whether a message's upload goes into a shared-memory slot (which takes tensors on any device)."""
    return bool(config.get(UPLOAD_FILE))


def send(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], pid: int) -> ArrayRecord | None:
    """Deliver an upload (tensors on any device): into the slot the server gave this partition, copied straight
    from the device (returns None), or as the reply's ArrayRecord.

    Raises:
        RuntimeError: the server holds the slot: this message is late (the server has moved on).
    """
    target = config.get(UPLOAD_FILE)
    if target:
        cohort = [int(p) for p in config[UPLOAD_PIDS]]
        if pid not in cohort:
            raise ValueError(f"partition {pid} has no upload slot: the message's cohort is {cohort}")
        path = str(target).format(slot=cohort.index(pid))
        try:
            _client_slot(path).write(tensors, int(config[SEQUENCE]), pid, wait=False)
        except shared_memory.SlotBusy:
            raise RuntimeError(f"{path} is held by the server: this upload is late") from None
        except OSError as e:
            raise TransportUnavailable(
                f'cannot write {target} ({e.strerror or e}); set the run-config key transport = "message"'
            ) from None
        return None
    return P.encode_tensors({k: v.cpu() for k, v in tensors.items()})
