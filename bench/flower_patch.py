"""A benchmark-only patch of Flower 1.42's simulation message path, installed as a ``sitecustomize`` module.

:func:`install` writes :data:`SOURCE` as ``sitecustomize.py`` into a directory; put on the ``PYTHONPATH`` of a
SuperLink, it is imported by every Python process below it (the simulation process, Ray's workers), and patches
Flower's modules as they are imported. The installed Flower is never modified and the app never depends on it.

Variants (environment variable ``FEDTALOS_FLOWER_PATCH``; unset = the patch does nothing):

- ``wake``: the Simulation Runtime's hand-over thread (``vce_api.add_messages_to_queue``, which looks at the
  LinkState every 0.1 s) is woken by ``InMemoryLinkState.store_message_ins`` and looks at once;
- ``wake-reply``: also, ``InMemoryGrid.pull_messages`` waits on ``store_message_res`` (up to the grid's
  ``pull_interval``) instead of the caller sleeping the whole interval between looks.

Each patched module appends ``<pid> <module>`` to the file named by ``FEDTALOS_FLOWER_PATCH_MARK`` (if set), so a
benchmark can tell that its patch was applied.
"""

from __future__ import annotations

import os
from pathlib import Path

VARIANTS = ("none", "wake", "wake-reply")
VARIABLE = "FEDTALOS_FLOWER_PATCH"
MARK_VARIABLE = "FEDTALOS_FLOWER_PATCH_MARK"

SOURCE = '''"""Benchmark-only patch of Flower 1.42's simulation message path (written by bench/flower_patch.py)."""

import importlib.abc
import os
import sys
import threading

_VARIANT = os.environ.get("FEDTALOS_FLOWER_PATCH", "none")
_MARK = os.environ.get("FEDTALOS_FLOWER_PATCH_MARK")
_LINKSTATE = "flwr.server.superlink.linkstate.in_memory_linkstate"
_VCE = "flwr.server.superlink.fleet.vce.vce_api"
_GRID = "flwr.superlink.grid.inmemory_grid"
TARGETS = {"wake": {_LINKSTATE, _VCE}, "wake-reply": {_LINKSTATE, _VCE, _GRID}}.get(_VARIANT, set())
NEW_MESSAGE = threading.Event()  # set when a message for a node is stored
NEW_REPLY = threading.Event()  # set when a reply is stored


def _signalling(original, event):
    def store(self, message):
        stored = original(self, message)
        if stored is not None:
            event.set()
        return stored

    store.fedtalos_bench_patch = True
    return store


def add_messages_to_queue(state, queue, nodes_mapping, f_stop):
    """Flower's hand-over loop, woken by a stored message instead of only every 0.1 s."""
    while not f_stop.is_set():
        NEW_MESSAGE.clear()  # before the sweep: a message stored during it sets the event again
        for node_id in nodes_mapping.keys():
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        NEW_MESSAGE.wait(0.1)


add_messages_to_queue.fedtalos_bench_patch = True


def _patch_grid(cls):
    original = cls.pull_messages

    def pull_messages(self, message_ids):
        """Flower's pull; with nothing to return, wait for a stored reply (``pull_interval`` at most), pull again."""
        ids = set(message_ids)
        NEW_REPLY.clear()
        found = list(original(self, ids))
        if not found and NEW_REPLY.wait(self.wait_interval):
            found = list(original(self, ids))
        return found

    pull_messages.fedtalos_bench_patch = True
    cls.pull_messages = pull_messages
    # the caller sleeps `pull_interval` between pulls; the wait above takes its place
    cls.pull_interval = property(lambda self: 0.0, lambda self, value: setattr(self, "wait_interval", value))


def _patch(module):
    name = module.__name__
    if name == _LINKSTATE:
        cls = module.InMemoryLinkState
        cls.store_message_ins = _signalling(cls.store_message_ins, NEW_MESSAGE)
        cls.store_message_res = _signalling(cls.store_message_res, NEW_REPLY)
    elif name == _VCE:
        module.add_messages_to_queue = add_messages_to_queue
    elif name == _GRID:
        _patch_grid(module.InMemoryGrid)
    if _MARK:
        with open(_MARK, "a") as f:
            f.write(f"{os.getpid()} {name}\\n")


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


if TARGETS:
    sys.meta_path.insert(0, _Finder())
'''


def install(directory: Path, variant: str, mark: Path | None = None) -> dict[str, str]:
    """Write the patch into ``directory``; the environment variables that apply ``variant`` to a process tree
    (``PYTHONPATH`` first the patch, then this process's ``PYTHONPATH``). ``none``: nothing written, ``{}``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown patch variant {variant!r}; one of {', '.join(VARIANTS)}")
    if variant == "none":
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SOURCE)
    path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, VARIABLE: variant}
    if mark is not None:
        env[MARK_VARIABLE] = str(mark)
    return env


def patched_modules(mark: Path) -> list[str]:
    """The modules a mark file says were patched (each once, sorted)."""
    if not mark.exists():
        return []
    return sorted({line.split(" ", 1)[1] for line in mark.read_text().splitlines() if " " in line})
