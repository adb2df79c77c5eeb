"""A run's name, and the short names of its settings: one scheme for ``fedtalos run``, ``central``, ``edit`` and sweeps.

A run directory is found by its name (``<output-root>/<run-name>``), so a name never changes: an empty ``run-name``
becomes a name made of the run's main settings and the start of its result hash (``RunConfig.result_hash``). A sweep
names its runs ``<family>-<axis parts>-seed<k>``. :data:`SHORT_NAMES` gives each setting its short name, in run
names (``nc5``, ``J8``, ``s0.9``) and in tables and figures (``Nc=5``, ``J=8``).

The functions read plain key → value mappings (``RunConfig.to_dict()``, or a ``config.json`` of a run directory),
so that the configuration module can name its runs without a cycle.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ShortName:
    """A setting's short names: ``prefix`` goes before its value in a run name (``J`` → ``J8``; '' = the value
    alone), ``label`` before ``=value`` in tables and figures (``J`` → ``J=8``; '' = the value alone)."""

    prefix: str
    label: str


# Settings without an entry are named by their key, in both places. 'partition' is partitioning and
# classes-per-client together (:func:`partition_part`, :func:`partition_label`).
SHORT_NAMES: dict[str, ShortName] = {
    "partition": ShortName("", ""),
    "classes-per-client": ShortName("nc", "Nc"),
    "local-steps": ShortName("J", "J"),
    "num-server-rounds": ShortName("T", "rounds"),
    "sparsity": ShortName("s", "sparsity"),
    "calibration-rounds": ShortName("R", "R'"),
    "lr": ShortName("lr", "lr"),
    "lr-min": ShortName("lrmin", "lr-min"),
    "momentum": ShortName("m", "momentum"),
    "weight-decay": ShortName("wd", "weight-decay"),
    "fraction-train": ShortName("C", "fraction-train"),
    "num-clients": ShortName("K", "num-clients"),
    "epochs": ShortName("ep", "epochs"),
    "batch-size": ShortName("B", "batch-size"),
    "label-smoothing": ShortName("ls", "label-smoothing"),
    "image-size": ShortName("px", "image-size"),
    "fisher-samples": ShortName("n", "fisher-samples"),
    "calibration-fraction": ShortName("cf", "calibration-fraction"),
    "warmup": ShortName("wu", "warmup"),
    "partitioning": ShortName("", "partitioning"),
    "mask-rule": ShortName("", ""),
    "lr-schedule": ShortName("", ""),
    "strategy": ShortName("", ""),
    "head": ShortName("head-", "head"),
    "fisher-target": ShortName("", "fisher-target"),
    "mask-scope": ShortName("", "mask-scope"),
    "mask-path": ShortName("mask-", "mask"),
}
# Keys whose values are file paths: a run name shows the file's name without its directory and suffix.
PATH_AXES = ("mask-path",)

_SEED_SUFFIX = re.compile(r"-seed(\d+)$")


def format_value(value: Any) -> str:
    """A value as it appears in a run name: ints as is, floats in %g form, booleans on/off, strings as is."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def name_part(key: str, value: Any) -> str:
    """The run-name part of one setting: ``nc5``, ``J8``, ``s0.9``, ``least-sensitive``, ``mask-central-s0.9``
    (for ``~/masks/central-s0.9.safetensors``)."""
    if key in PATH_AXES and isinstance(value, str):
        value = Path(value).name.split(".safetensors")[0]
    short = SHORT_NAMES.get(key)
    return (short.prefix if short else key) + format_value(value)


def short_label(key: str) -> str:
    """The short name of a setting in tables and figures ('' = its value stands alone)."""
    short = SHORT_NAMES.get(key)
    return short.label if short else key


def partition_part(values: Mapping[str, Any]) -> str:
    """The data partition in a run name: ``iid`` or ``nc<classes per client>``."""
    if values.get("partitioning") == "noniid":
        return name_part("classes-per-client", values.get("classes-per-client"))
    return "iid"


def partition_label(values: Mapping[str, Any]) -> str:
    """The data partition in tables and figures: ``iid`` or ``Nc=<classes per client>``."""
    if values.get("partitioning") == "noniid":
        return f"{short_label('classes-per-client')}={values.get('classes-per-client')}"
    return "iid"


def run_name(values: Mapping[str, Any], result_hash: str, kind: str, *, edit: bool = False) -> str:
    """``run-name``, or the name derived from a config's ``values`` (stable for a config).

    - federated: ``<strategy>-<iid|nc5>-J<steps>[-<rule>-s<sparsity>][-maskfile]-seed<k>-<hash>``
    - centralized: ``central-<what trains>-<schedule>-lr<lr>-seed<k>-<hash>``
    - an editing run (``fedtalos edit``): ``edit-<fed|central>-<rule>-s<sparsity>-seed<k>-<hash>``

    ``kind``: 'federated' or 'centralized'; ``result_hash``: ``RunConfig.result_hash()`` (its first 6 digits end
    the name).
    """
    if values.get("run-name"):
        return str(values["run-name"])
    rule = values.get("mask-rule", "none")
    editing = [name_part("mask-rule", rule), name_part("sparsity", values.get("sparsity"))] if rule != "none" else []
    tail = [name_part("seed", values.get("seed")), result_hash[:6]]
    if edit:
        return "-".join(["edit", "central" if kind == "centralized" else "fed", *editing, *tail])
    if kind == "centralized":
        if editing:
            what = editing
        elif values.get("mask-path"):
            what = ["maskfile"]
        elif values.get("head", "train") != "train":
            what = [f"{values['head']}-head"]
        else:
            what = ["linear" if values.get("freeze") == "backbone" else "full"]
        schedule = name_part("lr-schedule", values.get("lr-schedule"))
        return "-".join(["central", *what, schedule, name_part("lr", values.get("lr")), *tail])
    steps = name_part("local-steps", values.get("local-steps"))
    mask_file = ["maskfile"] if values.get("mask-path") else []
    strategy = name_part("strategy", values.get("strategy"))
    return "-".join([strategy, partition_part(values), steps, *editing, *mask_file, *tail])


def run_label(family: str, point: Mapping[str, Any]) -> str:
    """``<family>-<parts>``: a sweep configuration's name (its runs' names without ``-seed<k>``)."""
    return "-".join([family, *(name_part(k, v) for k, v in point.items())])


def split_name(name: str) -> tuple[str, int | None]:
    """(label, seed) of a run name; seed None when the name has no ``-seed<k>`` suffix."""
    m = _SEED_SUFFIX.search(name)
    return (name[: m.start()], int(m.group(1))) if m else (name, None)
