"""How a run-config key is declared and checked: its facts (:class:`KeyFacts`), the check combinators, the one
error that lists every problem (:class:`ConfigError`), and the reading of TOML files of keys."""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Scope = Literal["federated", "centralized", "both"]
_DIRECTORY_NAME = re.compile(r"[A-Za-z0-9._+=-]{1,128}")


class ConfigError(ValueError):
    """One or more run-config values are invalid; ``problems`` lists them, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid run configuration ({len(problems)} problem(s)):\n{lines}")


def read_toml(path: str | Path, label: str) -> dict[str, Any]:
    """The TOML file at ``path``; one that cannot be read or parsed raises ConfigError, its line led by ``label``."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError([f"{label}: cannot read it ({e.strerror or e})"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{label}: not valid TOML ({e})"]) from None


def read_overrides(path: str | Path, label: str) -> dict[str, Any]:
    """A flat TOML file of run-config keys (``key = value`` lines, no tables), e.g. a search's ``best.toml``."""
    values = read_toml(path, label)
    tables = [k for k, v in values.items() if isinstance(v, dict)]
    if tables:
        raise ConfigError([f"{label}: [{t}] is a table; write run-config keys as `key = value` lines" for t in tables])
    return values


Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class KeyFacts:
    """What one run-config key is, besides its default: declared once, beside its field, with :func:`opt`.

    Attributes:
        help: its one-line description (the pyproject comment and the command-line help).
        check: None if a value (of the default's type) is allowed, else what is allowed.
        scope: the runs that read it: 'federated', 'centralized' or 'both'.
        result: part of the run's identity (``RunConfig.result_hash``): its value changes the numbers a run
            produces (weights, metric values). Keys outside it may change when a run resumes.
        path: a filesystem path: absolute or '~' in a run config; a command line resolves relative ones first.
        length: the fine-tuning length of its kind of run: 0 only in a run that edits and saves its mask, and part
            of the identity when the learning-rate schedule depends on it (a cosine over 100 rounds differs
            from one over 200).
        defaults_in: its default where a command differs from the federated app's: 'centralized' (``fedtalos
            central``, ``search``), 'edit' (``fedtalos edit``).
    """

    help: str
    check: Check | None = None
    scope: Scope = "both"
    result: bool = True
    path: bool = False
    length: bool = False
    defaults_in: Mapping[str, Any] = field(default_factory=dict)


def opt(
    default: Any,
    help: str,
    check: Check | None = None,
    *,
    scope: Scope = "both",
    result: bool = True,
    path: bool = False,
    length: bool = False,
    defaults_in: Mapping[str, Any] | None = None,
) -> Any:
    """A field of ``RunConfig``: its default and its :class:`KeyFacts` (a path key gets the absolute-path check)."""
    facts = KeyFacts(help, absolute_path if path else check, scope, result, path, length, dict(defaults_in or {}))
    return field(default=default, metadata={"facts": facts})


def choice(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(repr(c) for c in choices)}"


def positive_pixels(v: int) -> str | None:
    return None if v >= 1 else "must be a positive number of pixels (a multiple of the model's patch size)"


def device_spec(*bases: str) -> Check:
    """One of ``bases``, or 'cuda:N'."""

    def check(v: str) -> str | None:
        base, _, index = v.partition(":")
        if base in bases and (not index or (base == "cuda" and index.isdigit())):
            return None
        return f"must be {', '.join(repr(b) for b in bases)} or 'cuda:N'"

    return check


def in_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"

    def check(v: float) -> str | None:
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number in {interval}"
        if (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi)
        ):
            return f"must be in {interval}"
        return None

    return check


def absolute_path(v: str) -> str | None:
    if v and not os.path.isabs(os.path.expanduser(v)):
        return (
            "must be an absolute path or start with '~' (a relative path would resolve against the "
            "directory the Flower SuperLink happens to run in)"
        )
    return None


def directory_name(v: str) -> str | None:
    # The name becomes <output-root>/<run-name>: a '/' or '..' would put the run (and, with resume = false, the
    # rename of an existing directory) outside the output root.
    if v and (not _DIRECTORY_NAME.fullmatch(v) or v.startswith(".")):
        return (
            "must be a plain directory name of at most 128 letters, digits, '.', '_', '+', '=' or '-', "
            "not starting with '.' (or empty for a name derived from the config)"
        )
    return None


def type_name(t: type) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(t, t.__name__)


def did_you_mean(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
