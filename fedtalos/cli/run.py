"""``fedtalos run``: check a federated run locally in a second, then start it with ``flwr run`` and wait for it.

``flwr run`` only validates the run config once Ray is up (about 30 s) and exits 0 even when the run fails.
This command merges the overrides with the app's defaults, validates them and preflights the output root,
the data set (downloading it once, here, rather than in every process) and the weights, then runs
``flwr run APP --run-config <merged.toml> --federation-config "num-supernodes=<num-clients> ..." --stream`` and
exits with 0 only if Flower reports the run ``finished:completed``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from flwr.common.config import parse_config_args

from fedtalos.cli.options import fail
from fedtalos.config import ConfigError, RunConfig
from fedtalos.launch.flwr_run import (
    default_federation_config,
    flwr_run,
    simulation_problems,
    stop_run,
)
from fedtalos.tracking.log_setup import log_to_stderr

PROG = "fedtalos run"
# One ``key=value`` pair of a run-config string: the pattern of flwr.common.config.parse_config_args.
_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")
HELP = "one federated run: validate and preflight here, then `flwr run` it and wait for its final status"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    parser.add_argument(
        "--run-config",
        "-c",
        action="append",
        default=None,
        help="overrides as for flwr run: 'k1=v1 k2=\"s\"' (repeatable) or one TOML file",
    )
    parser.add_argument(
        "--federation-config", default="", help="extra federation settings, e.g. 'client-resources-num-gpus=0.5'"
    )
    parser.add_argument("--check", action="store_true", help="only validate and preflight, do not run")
    return parser


def parse_run_config(values: list[str] | None) -> dict[str, Any]:
    """The ``--run-config`` overrides, as ``flwr run`` parses them (a later string's key wins over an earlier one's).

    Raises ConfigError, naming the string, for what Flower's parser only answers with a traceback: a key given twice
    in one string (``'lr=0.1 lr=0.2'``), or a string that is not ``key=value`` pairs of TOML values.
    """
    problems = []
    for value in values or []:
        seen: dict[str, str] = {}
        for key, literal in _PAIR.findall(value):
            if key in seen:
                problems.append(
                    f"--run-config {value!r}: {key} is given twice ({key}={seen[key]} and {key}={literal}); "
                    "give each key once"
                )
            seen.setdefault(key, literal)
    if problems:
        raise ConfigError(problems)
    try:
        return parse_config_args(values)
    except click.ClickException as e:
        raise ConfigError([f"--run-config {' '.join(map(repr, values or []))}: {e.message}"]) from None


def preflight_locally(config: RunConfig) -> None:
    """The server's preflight, on the CPU and without keeping what it loaded, plus the simulation's device rules.

    The data and the model are built only to check them (on ``cuda:0`` they would hold 0.5-1 GB that Ray does
    not count for the whole run); the device itself is only resolved, which allocates nothing.
    """
    from fedtalos.run.preflight import preflight
    from fedtalos.task.device import resolve_device
    from fedtalos.task.resources import get_resources

    problems = simulation_problems(config)
    if problems:
        raise ConfigError(problems)
    resolve_device(config.device)
    preflight(config.replace(device="cpu", num_threads=0), "federated")
    get_resources.cache_clear()


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """``fedtalos run APP [--run-config ...] [--federation-config ...]``: 0 only if Flower completed the run."""
    args = build_parser(prog).parse_args(argv)
    log_to_stderr()
    try:
        overrides = parse_run_config(args.run_config)
        config = RunConfig.from_mapping(overrides)
        preflight_locally(config)
    except (ConfigError, ValueError, OSError, RuntimeError) as e:
        return fail(prog, str(e))
    print(f"run directory: {config.run_dir()}", flush=True)
    if args.check:
        return 0
    started: list[str] = []
    try:
        result = flwr_run(
            Path(args.app),
            overrides,
            default_federation_config(config, args.federation_config),
            on_start=started.append,
        )
    except KeyboardInterrupt:
        # Interrupting `flwr run --stream` only ends the stream; the run would go on writing its directory.
        if started:
            print(f"\nstopping Flower run {started[0]} ...", file=sys.stderr)
            print(f"run {started[0]}: {stop_run(started[0])}; the same command resumes it", file=sys.stderr)
        return 130
    if not result.ok:
        print(
            f"{prog}: Flower run {result.run_id} ended as {result.status!r} ({result.details}); see the log "
            "above. Run the same command again to resume from the last checkpoint.",
            file=sys.stderr,
        )
        return 1
    print(f"done: {config.run_dir()}")
    return 0
