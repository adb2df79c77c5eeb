"""What several commands share: the exit-2 error line, and every run-config key as a command-line option.

The options are those of ``fedtalos central``, ``edit`` and ``search`` (whose trials are centralized runs): every
run-config key (``python -m fedtalos.config`` lists them) is an option, ``--lr 0.03``; booleans are flags,
``--progress`` / ``--no-progress``. ``--config`` reads a TOML file of the same keys, ``-c 'key=value ...'`` takes
settings as ``fedtalos run -c`` does (:mod:`fedtalos.cli.settings`); the file < ``-c`` < the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from fedtalos.cli.settings import absolute_paths, parse_settings, read_settings_file, typed_option
from fedtalos.config import ConfigError, KeyFacts, RunConfig

# The exit status of every command on bad input, before any compute (argparse's own errors use it too).
USAGE_ERROR = 2


def fail(prog: str, message: str) -> int:
    """Print ``prog: message`` to stderr; returns :data:`USAGE_ERROR`, the command's exit status."""
    print(f"{prog}: {message}", file=sys.stderr)
    return USAGE_ERROR


def add_run_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and one option per run-config key (values stay strings until :func:`overrides_from_args`)."""
    parser.add_argument("--config", metavar="FILE.toml", help="run-config overrides (same keys); options win")
    parser.add_argument(
        "--run-config",
        "-c",
        action="append",
        metavar="'KEY=VALUE ...'",
        help="settings as for `fedtalos run -c`: 'lr=0.05 partitioning=noniid' (repeatable); options win",
    )
    main = parser.add_argument_group("run config (every key of `python -m fedtalos.config`)")
    federated = parser.add_argument_group("federated-only keys (accepted, not used by the centralized run)")
    defaults = {**RunConfig.defaults(), **RunConfig.defaults_in("centralized")}
    for f in dataclasses.fields(RunConfig):
        key = f.name.replace("_", "-")
        facts: KeyFacts = f.metadata["facts"]
        group = federated if facts.scope == "federated" else main
        default = defaults[key]
        shown = "true" if default is True else "false" if default is False else repr(default)
        here = "; here a relative path resolves against the current directory" if facts.path else ""
        help_text = f"{facts.help}{here} (default: {shown})".replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(f"--{key}", dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            metavar = {int: "INT", float: "X", str: "STR"}[type(default)]
            group.add_argument(f"--{key}", dest=f.name, metavar=metavar, help=help_text)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config overrides of a parsed command line: the centralized defaults (``KeyFacts.defaults_in``), the
    --config file, the -c settings, the options.

    Raises:
        ConfigError: every problem at once (unreadable file, values of the wrong type, unknown keys, ranges).
    """
    values: dict[str, Any] = RunConfig.defaults_in("centralized")
    problems = []
    for read in (
        lambda: read_settings_file(args.config, f"--config {str(args.config)!r}") if args.config else {},
        lambda: parse_settings(getattr(args, "run_config", None) or [], "--run-config"),
    ):
        try:
            values.update(read())
        except ConfigError as e:
            problems += e.problems
    for f in dataclasses.fields(RunConfig):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        key = f.name.replace("_", "-")
        value, problem = typed_option(key, raw) if isinstance(raw, str) else (raw, None)
        if problem:
            problems.append(f"--{key} {raw!r}: {problem}")
            values.pop(key, None)
        else:
            values[key] = value
    values = absolute_paths(values)
    try:
        RunConfig.from_mapping(values)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    return values
