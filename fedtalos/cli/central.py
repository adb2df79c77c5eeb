"""``fedtalos-central``: the centralized baseline — fine-tune on the train split, validate, test at the end.

    fedtalos-central [--config FILE.toml] [--<run-config-key> VALUE ...]
    fedtalos-central search SPACE.toml --trials N [--study-name NAME] [--config FILE.toml] [--<key> VALUE ...]

Every run-config key (``python -m fedtalos.config`` lists them) is an option: ``--lr 0.03``,
``--lr-schedule warmup-cosine``; booleans are flags, ``--progress`` / ``--no-progress``. ``--config`` reads a
TOML file of the same keys (``lr = 0.03``); options on the command line override it. Relative paths for
``output-root``, ``dataset-root`` and ``weights-path`` are resolved against the current directory. Here
``eval-every`` defaults to 1 (validate every epoch). Running the same command again resumes the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedtalos.config import ConfigError, RunConfig, read_overrides
from fedtalos.tracking.checkpoint import CheckpointError
from fedtalos.tracking.rundir import RunConfigMismatch

PROG = "fedtalos-central"
# Defaults that differ from the federated app's: the centralized run validates after every epoch.
CENTRAL_DEFAULTS: dict[str, Any] = {"eval-every": 1}
# Keys only the federated path reads; accepted (they are run-config keys) but listed apart in --help.
FEDERATED_ONLY = frozenset(
    {
        "num-server-rounds",
        "num-clients",
        "partitioning",
        "classes-per-client",
        "fraction-train",
        "min-train-clients",
        "local-steps",
        "strategy",
        "server-lr",
        "server-momentum",
        "proximal-mu",
        "server-beta1",
        "server-beta2",
        "server-tau",
        "federated-eval-fraction",
        "round-timeout",
        "calibration-fraction",
    }
)


# ---------------------------------------------------------------------------------------------------------------
# Options ↔ run-config keys.


def add_run_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and one option per run-config key (values stay strings until :func:`config_from_args`)."""
    parser.add_argument("--config", metavar="FILE.toml", help="run-config overrides (same keys); options win")
    main = parser.add_argument_group("run config (every key of `python -m fedtalos.config`)")
    federated = parser.add_argument_group("federated-only keys (accepted, not used by the centralized run)")
    defaults = {**RunConfig.defaults(), **CENTRAL_DEFAULTS}
    paths = RunConfig.path_keys()
    for f in dataclasses.fields(RunConfig):
        key = f.name.replace("_", "-")
        group = federated if key in FEDERATED_ONLY else main
        default = defaults[key]
        shown = "true" if default is True else "false" if default is False else repr(default)
        here = "; here a relative path resolves against the current directory" if key in paths else ""
        help_text = f"{f.metadata['help']}{here} (default: {shown})".replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(f"--{key}", dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            metavar = {int: "INT", float: "X", str: "STR"}[type(default)]
            group.add_argument(f"--{key}", dest=f.name, metavar=metavar, help=help_text)


def _coerce(key: str, raw: Any, expected: type) -> tuple[Any, str | None]:
    """A command-line string as the key's type (TOML values are typed already and pass through)."""
    if not isinstance(raw, str) or expected is str:
        return raw, None
    try:
        return (int(raw) if expected is int else float(raw)), None
    except ValueError:
        kind = "an integer" if expected is int else "a number"
        return None, f"--{key} {raw!r}: must be {kind}"


def resolve_paths(values: Mapping[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """``values`` with relative path keys made absolute against ``cwd`` (default: the current directory)."""
    cwd = cwd or Path.cwd()
    out = dict(values)
    for key in RunConfig.path_keys():
        value = out.get(key)
        if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            out[key] = str((cwd / value).resolve())
    return out


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config overrides of a parsed command line: the --config file, then the options on top.

    Raises:
        ConfigError: every problem at once (unreadable file, values of the wrong type, unknown keys, ranges).
    """
    values: dict[str, Any] = dict(CENTRAL_DEFAULTS)
    if args.config:
        values.update(read_overrides(args.config, f"--config {str(args.config)!r}"))
    problems = []
    defaults = RunConfig.defaults()
    for f in dataclasses.fields(RunConfig):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        key = f.name.replace("_", "-")
        value, problem = _coerce(key, raw, type(defaults[key]))
        if problem:
            problems.append(problem)
            values.pop(key, None)
        else:
            values[key] = value
    values = resolve_paths(values)
    try:
        RunConfig.from_mapping(values)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    return values


# ---------------------------------------------------------------------------------------------------------------
# Preflight and run.


def setup_logging() -> None:
    """Log fedtalos' INFO lines to stderr (once)."""
    ours = logging.getLogger("fedtalos")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The centralized baseline: fine-tune on the train split with SGD with momentum, validate every "
        "eval-every epochs (default 1), test at the end. Running the same command again resumes the run.",
        epilog="examples:\n"
        "  fedtalos-central --image-size 224 --epochs 10 --lr 0.01 --output-root runs\n"
        "  fedtalos-central --config best.toml --seed 1\n"
        "  fedtalos-central --head ridge --mask-rule least-sensitive --sparsity 0.9\n"
        "  fedtalos-central search configs/search/central.toml --trials 20   (see: fedtalos-central search --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_config_options(parser)
    return parser


def fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) one centralized run, or a hyper-parameter search with ``search``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "search":
        from fedtalos.study import search

        return search.main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging()
    from fedtalos.task.cifar import DatasetIntegrityError, DatasetNotFoundError
    from fedtalos.task.model import WeightsError

    try:
        config = RunConfig.from_mapping(overrides_from_args(args))
        from fedtalos.central.trainer import preflight

        preflight(config)
    except (ConfigError, DatasetNotFoundError, DatasetIntegrityError, WeightsError) as e:
        return fail(str(e))
    except RuntimeError as e:  # e.g. device = 'cuda' without CUDA
        return fail(str(e))
    from fedtalos.central.trainer import run_centralized

    try:
        run_dir, summary = run_centralized(config)
    except (RunConfigMismatch, CheckpointError) as e:
        return fail(str(e))
    final = summary["final"]
    print(
        f"done: {run_dir.path}\n  val_acc {final['val_acc']:.4f}  test_acc {final['test_acc']:.4f}"
        if final.get("test_acc") is not None
        else f"done: {run_dir.path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
