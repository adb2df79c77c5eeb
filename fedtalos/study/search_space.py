"""The search-space file of ``fedtalos search``: a ``[key]`` table per searched run-config key (``type`` =
``"float"`` | ``"int"`` with ``low``, ``high``, optional ``log`` / ``step``; ``"categorical"`` with ``choices``)
and plain ``key = value`` lines fixed in every trial (``configs/search/central.toml``). Every bound and choice is
checked as a run-config value first, so an invalid space fails before anything runs, with every problem listed.
A run's length (``epochs``) is fixed, never searched: every trial is scored by its final validation accuracy and
pruned against the others at the same epoch, which compares like with like only when all trials are as long.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtalos.config import ConfigError, RunConfig, read_toml

# Keys a search may not vary or fix: they decide where a trial lives, not what it computes.
FORBIDDEN = frozenset({"run-name", "output-root", "resume"})


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` 'float', 'int' or 'categorical'."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The parameter as it would be written in a space file (plain JSON values)."""
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        out = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        return out if self.step is None else {**out, "step": self.step}


@dataclass(frozen=True)
class Space:
    """A search space: the searched parameters and the keys fixed for every trial."""

    params: dict[str, Param]
    fixed: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"params": {k: p.to_json() for k, p in self.params.items()}, "fixed": self.fixed}

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions, for ``study.ask``."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out: dict[str, Any] = {}
        for key, p in self.params.items():
            if p.kind == "float":
                out[key] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)  # type: ignore[arg-type]
            elif p.kind == "int":
                out[key] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))  # type: ignore[arg-type]
            else:
                out[key] = CategoricalDistribution(list(p.choices))
        return out


def _parse_param(key: str, table: Mapping[str, Any]) -> tuple[Param | None, list[str]]:
    kind = table.get("type")
    where = f"[{key}]"
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"}}
    allowed["categorical"] = {"type", "choices"}
    if kind not in allowed:
        return None, [f"{where}: type must be 'float', 'int' or 'categorical', got {kind!r}"]
    problems = [f"{where}: unknown field {k!r}" for k in table if k not in allowed[kind]]
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            return None, [*problems, f"{where}: choices must be a non-empty list"]
        if any(isinstance(c, list | dict) for c in choices):
            problems.append(f"{where}: choices must be plain values")
        return Param(key, kind, choices=tuple(choices)), problems
    low, high, step, log_scale = table.get("low"), table.get("high"), table.get("step"), table.get("log", False)
    number = int if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high), ("step", step)):
        if (value is not None or name != "step") and (isinstance(value, bool) or not isinstance(value, number)):
            problems.append(f"{where}: {name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if not isinstance(log_scale, bool):
        problems.append(f"{where}: log must be true or false")
    if problems:
        return None, problems
    if not low < high:  # type: ignore[operator]
        problems.append(f"{where}: low = {low} must be below high = {high}")
    if log_scale and low <= 0:  # type: ignore[operator]
        problems.append(f"{where}: log = true needs low > 0")
    if log_scale and step is not None:
        problems.append(f"{where}: step and log = true cannot be combined")
    if step is not None and step <= 0:
        problems.append(f"{where}: step must be positive")
    return Param(
        key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high, log_scale, step
    ), problems  # type: ignore[arg-type]


def load_space(path: str | Path, base: Mapping[str, Any]) -> Space:
    """Read and check a search space file against the base overrides.

    Every bound and choice is validated as a run-config value (with the base and fixed keys), so a space that
    would produce invalid trials fails here, before any compute.

    Raises:
        ConfigError: every problem of the file at once.
    """
    path = Path(path)
    raw = read_toml(path, f"search space {str(path)!r}")
    problems: list[str] = []
    params: dict[str, Param] = {}
    fixed = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    known = set(RunConfig.keys())
    for key, table in raw.items():
        if key not in known:
            problems.append(f"{key!r} is not a run-config key")
            continue
        if key in FORBIDDEN:
            problems.append(f"{key!r} cannot be searched or fixed in a space (the search decides it)")
            continue
        if isinstance(table, dict) and RunConfig.facts()[key].length:
            problems.append(
                f"[{key}]: a run's length cannot be searched (trials of different lengths are scored and pruned "
                f"against each other at the same epoch); fix it: {key} = N"
            )
            continue
        if isinstance(table, dict):
            param, found = _parse_param(key, table)
            problems += found
            if param is not None:
                params[key] = param
    if not params and not problems:
        problems.append("the space has no searched key (a [key] table with a type)")
    values = {**base, **{k: v for k, v in fixed.items() if k in known and k not in FORBIDDEN}}
    shared: set[str] = set()  # problems of the fixed values: reported once, not again for every candidate
    try:
        RunConfig.from_mapping(values)
    except ConfigError as e:
        shared = set(e.problems)
        problems += [f"fixed values: {p}" for p in e.problems]
    for key, p in params.items():
        candidates = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
        for value in candidates:
            try:
                RunConfig.from_mapping({**values, key: value})
            except ConfigError as e:
                problems += [f"[{key}] value {value!r}: {q}" for q in e.problems if q not in shared]
    if problems:
        raise ConfigError([f"{path.name}: {p}" for p in problems])
    return Space(params, fixed)
