"""``fedtalos run``: check a federated run locally in seconds, then start it with ``flwr run`` and wait for it.

``flwr run`` only validates the run config once Ray is up (about 30 s) and exits 0 even when the run fails.
This command reads APP's run config (``[tool.flwr.app.config]`` of its ``pyproject.toml``, as ``flwr run`` does)
under the ``--run-config`` settings (``key=value``, :mod:`fedtalos.cli.settings`), validates them and preflights
the output root, the data set (downloading it once, here, rather than in every process) and the weights, then runs
``flwr run APP --run-config <settings.toml> --federation-config "num-supernodes=<num-clients> ..." --stream`` and
exits with 0 only if Flower reports the run ``finished:completed``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedtalos.cli.options import fail
from fedtalos.cli.settings import parse_settings
from fedtalos.config import ConfigError, RunConfig
from fedtalos.launch.flwr_run import (
    app_run_config,
    default_federation_config,
    flwr_run,
    simulation_problems,
    stop_run,
)
from fedtalos.tracking.log_setup import log_to_stderr

PROG = "fedtalos run"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog="examples:\n"
        f"  {prog} . --check -c 'model=vit-tiny-test pretrained=false image-size=32'\n"
        f"  {prog} . -c 'partitioning=noniid classes-per-client=5 local-steps=8 dataset-root=data'\n"
        f"  {prog} . -c best.toml -c 'seed=1'\n"
        "The keys, their defaults and what they do: `python -m fedtalos.config` (or APP's pyproject.toml).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    parser.add_argument(
        "--run-config",
        "-c",
        action="append",
        default=None,
        metavar="'KEY=VALUE ...'",
        help="settings over APP's run config: 'lr=0.05 partitioning=noniid' (repeatable; a later one wins), or "
        "one TOML file of them",
    )
    parser.add_argument(
        "--federation-config", default="", help="extra federation settings, e.g. 'client-resources-num-gpus=0.5'"
    )
    parser.add_argument("--check", action="store_true", help="only validate and preflight, do not run")
    return parser


def settings_and_config(app: Path, texts: list[str] | None) -> tuple[dict[str, Any], RunConfig]:
    """The ``--run-config`` settings and the config ``flwr run APP`` will run with them (APP's run config under
    them).

    Raises:
        ConfigError: every bad pair and a directory that is not a Flower app, together; or the merged config's
            problems.
    """
    problems = []
    settings: dict[str, Any] = {}
    app_config: dict[str, Any] = {}
    try:
        settings = parse_settings(texts or [], "--run-config")
    except ConfigError as e:
        problems += e.problems
    try:
        app_config = app_run_config(app)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    return settings, RunConfig.from_mapping({**app_config, **settings})


def with_environment_paths(settings: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """``settings`` plus ``output-root`` / ``dataset-root`` where neither they nor APP set them but this process's
    environment does (``$FEDTALOS_OUTPUT_ROOT``, ``$FEDTALOS_DATA``): the SuperLink that runs the app may have been
    started with another environment, and the run must go where this command said it would."""
    pinned = dict(settings)
    for key, variable, resolved in (
        ("output-root", "FEDTALOS_OUTPUT_ROOT", config.resolved_output_root),
        ("dataset-root", "FEDTALOS_DATA", config.resolved_dataset_root),
    ):
        if not getattr(config, key.replace("-", "_")) and os.environ.get(variable):
            pinned[key] = str(resolved())
    return pinned


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
        overrides, config = settings_and_config(Path(args.app), args.run_config)
        if not args.check and _finished(config):  # Flower is not started for a finished run
            return 0
        preflight_locally(config)
    except (ConfigError, ValueError, OSError, RuntimeError) as e:
        return fail(prog, str(e))
    print(f"run directory: {config.run_dir()}\nnum-supernodes: {config.num_clients} (num-clients)", flush=True)
    if args.check:
        return 0
    federation = default_federation_config(config, args.federation_config)
    started: list[str] = []
    try:
        settings = with_environment_paths(overrides, config)
        result = flwr_run(Path(args.app), settings, federation, on_start=started.append)
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


def _finished(config: RunConfig) -> bool:
    """Whether ``config``'s run directory holds this run, finished (then it says so)."""
    from fedtalos.tracking.rundir import already_finished_message, finished_summary

    if finished_summary(config, "federated") is None:
        return False
    print(already_finished_message(config.run_dir("federated")))
    return True
