"""One way to say a setting on every command line: ``key=value``, typed by the key (``python -m fedtalos.config``).

``fedtalos run -c``, ``central -c`` (and ``edit``, ``search``) and ``sweep --set`` all read the same pairs:

    lr=0.05 partitioning=noniid weights-path=~/w/model.safetensors run-name="my run" progress=false

- A value is read as its key's type: ``true``/``false``, an integer, a number, or (for a string key) the text as
  it is, so strings need no quotes; quotes (``"..."`` or ``'...'``) are for values with spaces. A quoted value is
  a string, as in TOML (``lr="0.1"`` is refused: a number is written without quotes).
- A relative path (``output-root``, ``dataset-root``, ``weights-path``, ``mask-path``, ``mask-save-path``) becomes
  absolute against the current directory here, before Flower (whose SuperLink runs elsewhere) sees it.
- Every error names the pair it is about; a grid file where a run's settings belong is answered with the command
  that runs a grid.

Tested in ``tests/cli/test_settings.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedtalos.config import ConfigError, RunConfig, read_overrides, read_toml
from fedtalos.config.keys import did_you_mean, type_name

# One pair: a key, '=', then a quoted value (which may hold spaces) or everything up to the next blank.
_PAIR = re.compile(r"""([^\s=]+)=("[^"]*"|'[^']*'|[^\s"']\S*|(?=\s|$))""")
_INTEGER = re.compile(r"[+-]?\d[\d_]*")
_UNTIL_BLANK = re.compile(r"\S*")


def parse_settings(texts: Iterable[str], label: str) -> dict[str, Any]:
    """The settings of some ``key=value ...`` texts (a later text's key wins over an earlier one's), typed by key,
    relative paths made absolute; a text that is one ``.toml`` path is that file's settings
    (:func:`read_settings_file`). ``label`` names the option in errors (``--run-config``, ``--set``).

    Raises:
        ConfigError: every bad pair, named: not ``key=value``, a key given twice in one text, an unknown key, a
            value that is not of the key's type.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for text in texts:
        stripped = text.strip()
        if "=" not in stripped and stripped.endswith(".toml"):
            try:
                values.update(read_settings_file(stripped, f"{label} {stripped}"))
            except ConfigError as e:
                problems += e.problems
            continue
        seen: dict[str, str] = {}
        for pair, key, value in _pairs(text, label, problems):
            if key in seen:
                problems.append(f"{label} {pair!r}: {key} is given twice ({seen[key]} and {pair}); give each key once")
                continue
            seen[key] = pair
            typed, problem = typed_value(key, value)
            if problem:
                problems.append(f"{label} {pair!r}: {problem}")
            else:
                values[key] = typed
    if problems:
        raise ConfigError(problems)
    return absolute_paths(values)


def _pairs(text: str, label: str, problems: list[str]) -> Iterable[tuple[str, str, str]]:
    """(pair, key, raw value) of each ``key=value`` in ``text``; what is not a pair goes to ``problems``."""
    position = 0
    for token in re.finditer(r"\S+", text):
        if token.start() < position:  # inside the quoted value of the previous pair
            continue
        match = _PAIR.match(text, token.start())
        if match is None or (match.end() < len(text) and not text[match.end()].isspace()):
            end = _UNTIL_BLANK.match(text, max(match.end() if match else 0, token.end())).end()  # type: ignore[union-attr]
            bad = text[token.start() : end]
            problems.append(
                f'{label} {bad!r}: not a key=value pair (write key=value; quote a value with spaces: key="a b")'
            )
            position = end
            continue
        position = match.end()
        yield match.group(0), match.group(1), match.group(2)


def typed_value(key: str, raw: str) -> tuple[Any, str | None]:
    """``raw`` (as written after ``key=``, maybe quoted) as the type of ``key``; or None and why not."""
    defaults = RunConfig.defaults()
    if key not in defaults:
        return None, f"unknown key {key!r}" + did_you_mean(key, defaults)
    expected = type(defaults[key])
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'"
    text = raw[1:-1] if quoted else raw
    if expected is str:
        return text, None
    if quoted:
        return None, f"must be {type_name(expected)}, got a string (write it without quotes: {key}={text})"
    if expected is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true", None
    elif _INTEGER.fullmatch(text):
        return expected(int(text)), None
    elif expected is float:
        try:
            return float(text), None
        except ValueError:
            pass
    elif expected is int:
        try:
            float(text)
            return None, f"must be {type_name(int)}, got {text}"
        except ValueError:
            pass
    return None, f"must be {type_name(expected)}"


def typed_option(key: str, raw: str) -> tuple[Any, str | None]:
    """The value of a ``--key VALUE`` option as the key's type (the shell removed the quotes already, so a string
    is taken as it is)."""
    return (raw, None) if isinstance(RunConfig.defaults().get(key), str) else typed_value(key, raw)


def absolute_paths(values: Mapping[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """``values`` with relative path keys made absolute against ``cwd`` (default: the current directory)."""
    cwd = cwd or Path.cwd()
    out = dict(values)
    for key in RunConfig.path_keys():
        value = out.get(key)
        if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            out[key] = str((cwd / value).resolve())
    return out


def read_settings_file(path: str | Path, label: str) -> dict[str, Any]:
    """A TOML file of settings (``key = value`` lines, no tables), e.g. a search's ``best.toml``; relative paths
    in it made absolute against the current directory.

    Raises:
        ConfigError: the file cannot be read, is a sweep grid (with the command that runs it), or has tables.
    """
    values = read_toml(path, label)
    if isinstance(values.get("sweep"), dict) or "grid" in values:
        raise ConfigError([f"{label}: this is a sweep grid: `fedtalos sweep {path}`"])
    return absolute_paths(read_overrides(path, label))
