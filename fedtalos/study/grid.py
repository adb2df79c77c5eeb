"""Grid files: the TOML format that describes a run family, parsed and checked (:func:`load_grid`).

**Grid file** (one per run family, under ``configs/``)::

    [sweep]
    kind = "federated"                 # "federated" (flwr run) or "centralized" (fedtalos central)
    family = "noniid"                  # first part of every run name: letters, digits, '_'
    seeds = [0, 1, 2]                  # `fedtalos sweep --seeds N` overrides
    description = "FedAvg under non-iid shards, J × rounds constant"

    [base]                             # run-config overrides shared by every run of the family
    num-clients = 100
    fraction-train = 0.1

    [[grid]]                           # a block: the cartesian product of its lists
    partitioning = "noniid"            #   scalar = a constant of this block (not in the run name)
    classes-per-client = [1, 5, 10, 50]
    local-steps = [4, 8, 16]           #   list = an axis (in the run name)

    [[grid]]                           # further blocks add their products (a union): here the iid reference
    partitioning = ["iid"]
    local-steps = [4, 8, 16]

    [scale]                            # keys derived from the grid point: value = product / point[per]
    num-server-rounds = { per = "local-steps", product = 1600 }   # J × rounds = 1600 → 400, 200, 100

    [analysis]                         # optional: analyses of the finished runs, at the end of the sweep
    mask-agreement = 20                # per-client masks of the first 20 clients vs the aggregated one

    [[edit]]                           # optional: a mask file the family writes itself, one per seed
    name = "federated-s0.9"            #   a block's `mask-from = "federated-s0.9"` fine-tunes with it
    central = false                    #   true: `fedtalos edit --central` (calibrated on the train split)
    sparsity = 0.9                     #   run-config keys of the editing run (over [base])

``[grid]`` (a single table) is one block. Without any grid the family is one configuration. An ``[[edit]]`` step
is the run of ``fedtalos edit`` (step 0 and calibration, no fine-tuning) for each seed, planned before that seed's
runs; its file is ``<output-root>/_masks/<family>/<name>-seed<k>.safetensors`` and a run whose block says
``mask-from = "<name>"`` (a value or an axis) gets that file of its own seed as ``mask-path`` and waits for it.

A grid file only describes configurations; :mod:`fedtalos.study.plan` expands it into named, validated runs
(precedence of the overrides, run names, order) and reads what is already on disk.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from fedtalos.config import ConfigError, read_toml

KINDS = ("federated", "centralized")
SECTIONS = ("sweep", "base", "grid", "scale", "analysis", "edit")
SWEEP_KEYS = ("kind", "family", "seeds", "description")
# Keys the sweep sets for every run; a grid file or --set may not.
SWEEP_OWNED = ("run-name", "output-root", "seed")
# A block key of the sweep, not of the run config: the [[edit]] step whose mask file (of the run's seed) it uses.
MASK_FROM = "mask-from"
# Keys an [[edit]] step may not set: the sweep sets where its mask goes and that it does not fine-tune.
EDIT_OWNED = ("mask-save-path", "mask-path", "num-server-rounds", "epochs")

_FAMILY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ScaleRule:
    """``key = product / point[per]``: e.g. rounds scaled so that J × rounds is constant."""

    key: str
    per: str
    product: float


@dataclass(frozen=True)
class Block:
    """One ``[[grid]]`` table: constants (scalars) and axes (lists, in file order)."""

    constants: dict[str, Any]
    axes: dict[str, list[Any]]

    def points(self) -> list[dict[str, Any]]:
        """The axes' cartesian product, the first axis varying slowest."""
        keys = list(self.axes)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.axes.values())]


@dataclass(frozen=True)
class EditStep:
    """One ``[[edit]]`` table: a mask file the family writes for each seed (``fedtalos edit``, ``--central``)."""

    name: str
    central: bool
    values: dict[str, Any]


@dataclass(frozen=True)
class GridFile:
    """A parsed grid file (see the module docstring)."""

    path: Path
    kind: str
    family: str
    seeds: tuple[int, ...]
    description: str
    base: dict[str, Any]
    blocks: tuple[Block, ...]
    scale: tuple[ScaleRule, ...]
    mask_agreement_clients: int = 0
    edits: tuple[EditStep, ...] = ()

    @property
    def axes(self) -> list[str]:
        """Every axis key of every block, in order of first appearance."""
        return list(dict.fromkeys(k for b in self.blocks for k in b.axes))


def load_grid(path: str | Path) -> GridFile:
    """Read and check a grid file; raises :class:`ConfigError` listing every problem with its structure."""
    path = Path(path)
    data = read_toml(path, str(path))
    return parse_grid(data, path)


def parse_grid(data: Mapping[str, Any], path: Path = Path("<grid>")) -> GridFile:
    """Check the structure of a parsed grid file (values are checked later, per run, by ``RunConfig``)."""
    problems: list[str] = []
    where = str(path)
    for section in data:
        if section not in SECTIONS:
            problems.append(f"{where}: unknown section [{section}] (sections: {', '.join(SECTIONS)})")
    sweep = _table(data.get("sweep", {}), "[sweep]", where, problems)
    for key in sweep:
        if key not in SWEEP_KEYS:
            problems.append(f"{where}: [sweep] {key}: unknown (keys: {', '.join(SWEEP_KEYS)})")
    kind = sweep.get("kind", "federated")
    if kind not in KINDS:
        problems.append(f"{where}: [sweep] kind = {kind!r}: must be 'federated' or 'centralized'")
    family = sweep.get("family", path.stem.replace("-", "_"))
    if not isinstance(family, str) or not _FAMILY.match(family):
        problems.append(f"{where}: [sweep] family = {family!r}: letters, digits and '_' only (it starts run names)")
    seeds = sweep.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(is_int(s) and s >= 0 for s in seeds):
        problems.append(f"{where}: [sweep] seeds = {seeds!r}: must be a non-empty list of integers >= 0")
        seeds = [0]
    elif len(set(seeds)) != len(seeds):
        problems.append(f"{where}: [sweep] seeds = {seeds!r}: repeated seeds")
    description = sweep.get("description", "")
    base = _table(data.get("base", {}), "[base]", where, problems)
    for key, value in base.items():
        if isinstance(value, list | dict):
            problems.append(f"{where}: [base] {key}: a single value, not a {type(value).__name__} (axes go in [grid])")
    raw_blocks = data.get("grid", [{}])
    if isinstance(raw_blocks, dict):
        raw_blocks = [raw_blocks]
    blocks = []
    for i, raw in enumerate(raw_blocks if isinstance(raw_blocks, list) else []):
        label = f"[[grid]] #{i + 1}" if len(raw_blocks) > 1 else "[grid]"
        constants, axes = {}, {}
        for key, value in _table(raw, label, where, problems).items():
            if isinstance(value, list):
                if not value:
                    problems.append(f"{where}: {label} {key} = []: an axis needs at least one value")
                elif len({json.dumps(v) for v in value}) != len(value):
                    problems.append(f"{where}: {label} {key} = {value!r}: repeated values")
                axes[key] = value
            elif isinstance(value, dict):
                problems.append(f"{where}: {label} {key}: a value or a list of values, not a table")
            else:
                constants[key] = value
        blocks.append(Block(constants, axes))
    scale = []
    for key, rule in _table(data.get("scale", {}), "[scale]", where, problems).items():
        if not isinstance(rule, dict) or set(rule) != {"per", "product"}:
            problems.append(f'{where}: [scale] {key}: write {key} = {{ per = "<key>", product = <number> }}')
            continue
        if not isinstance(rule["per"], str) or not is_number(rule["product"]) or rule["product"] <= 0:
            problems.append(f"{where}: [scale] {key}: per must be a key, product a positive number")
            continue
        scale.append(ScaleRule(key, rule["per"], float(rule["product"])))
    analysis = _table(data.get("analysis", {}), "[analysis]", where, problems)
    clients = analysis.get("mask-agreement", 0)
    for key in analysis:
        if key != "mask-agreement":
            problems.append(f"{where}: [analysis] {key}: unknown (known: mask-agreement = <number of clients>)")
    if not is_int(clients) or clients < 0:
        problems.append(f"{where}: [analysis] mask-agreement = {clients!r}: a number of clients (0 = off)")
        clients = 0
    edits = _edit_steps(data.get("edit", []), where, problems)
    names = {e.name for e in edits}
    for i, block in enumerate(blocks):
        wanted = block.axes.get(MASK_FROM, [block.constants[MASK_FROM]] if MASK_FROM in block.constants else [])
        for name in wanted:
            if name not in names:
                known = ", ".join(sorted(names)) or "none"
                problems.append(
                    f"{where}: [[grid]] #{i + 1} {MASK_FROM} = {name!r}: no [[edit]] of that name ({known})"
                )
    owned = {"base": base, **{f"grid #{i + 1}": {**b.constants, **b.axes} for i, b in enumerate(blocks)}}
    owned["scale"] = {r.key: None for r in scale}
    for section, values in owned.items():
        for key in SWEEP_OWNED:
            if key in values and not (section == "base" and key == "output-root"):  # [base]: the default root
                hint = "use [sweep] seeds or --seeds" if key == "seed" else "the sweep sets it for every run"
                problems.append(f"{where}: {section}: {key} cannot be set here ({hint})")
    for rule in scale:
        if any(rule.key in b.axes or rule.key in b.constants for b in blocks):
            problems.append(f"{where}: [scale] {rule.key} is also set in a [grid] block; set it in one place")
    if problems:
        raise ConfigError(problems)
    return GridFile(
        path=path,
        kind=kind,
        family=family,
        seeds=tuple(seeds),
        description=str(description),
        base=dict(base),
        blocks=tuple(blocks),
        scale=tuple(scale),
        mask_agreement_clients=int(clients),
        edits=tuple(edits),
    )


def _edit_steps(raw: Any, where: str, problems: list[str]) -> list[EditStep]:
    """The ``[[edit]]`` tables, checked: a unique file-name-safe ``name``, ``central`` true/false, scalar keys."""
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        problems.append(f"{where}: [[edit]] must be tables")
        return []
    steps: list[EditStep] = []
    for i, table in enumerate(raw):
        label = f"[[edit]] #{i + 1}"
        values = dict(_table(table, label, where, problems))
        name, central = values.pop("name", None), values.pop("central", False)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            problems.append(f"{where}: {label} name = {name!r}: letters, digits, '.', '_' and '-' (it names the file)")
            continue
        if any(step.name == name for step in steps):
            problems.append(f"{where}: {label} name = {name!r}: two [[edit]] steps of that name")
        if not isinstance(central, bool):
            problems.append(f"{where}: {label} central = {central!r}: true or false")
        for key, value in values.items():
            if isinstance(value, list | dict):
                problems.append(f"{where}: {label} {key}: a single value (an edit step has no axes)")
            if key in EDIT_OWNED or key in SWEEP_OWNED:
                problems.append(f"{where}: {label} {key}: the sweep sets it for the editing run")
        steps.append(EditStep(name, bool(central), values))
    return steps


def _table(value: Any, label: str, where: str, problems: list[str]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    problems.append(f"{where}: {label} must be a table")
    return {}


def is_int(v: Any) -> bool:
    """A TOML integer (``true`` is not one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A TOML integer or float (not a boolean)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as TOML (``2``, ``0.1``, ``true``, ``"x"``), else taken as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"--set {item!r}: write KEY=VALUE"])
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key.strip()] = value
    return out
