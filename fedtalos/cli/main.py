"""The ``fedtalos`` command: ``fedtalos COMMAND [ARGS ...]``, one module of :mod:`fedtalos.cli` per command.

    fedtalos run [APP] [--run-config ...]                    one federated run (validated, then `flwr run`)
    fedtalos central [--config FILE.toml] [key=value ...]      one centralized run (the baseline)
    fedtalos edit --out MASK.safetensors [--central] [...]     calibrate a mask once, write it as a mask file
    fedtalos search SPACE.toml --trials N [...]                hyper-parameter search of centralized runs
    fedtalos sweep GRID.toml [...] [--seeds N] [--dry-run]     the runs of grid files, one or N at a time
    fedtalos summarize RUNS_DIR [...]                          table (CSV + Markdown, mean ± std) and figures
    fedtalos analyze mask-agreement RUN_DIR [...]              single-client masks vs the aggregated mask
    fedtalos plot RUN_DIR [...]                                loss/accuracy curves of some runs
    fedtalos demo [--out DIR]                                  a few-minute CPU tour on generated stand-in data

``fedtalos COMMAND --help`` shows a command's options; ``fedtalos-central`` is an alias of ``fedtalos central``.
This module only dispatches: everything after the command's name goes to that command's ``main``. A command's
module is imported only when it is dispatched, so that ``--help`` and argument errors answer at once instead of
after importing torch (``bench/cli_startup.py`` measures it;
``tests/cli/test_main.py::test_the_parsers_import_neither_torch_nor_flower``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fedtalos.cli.options import USAGE_ERROR

PROG = "fedtalos"
# Command → its one-line help; the command is the module fedtalos.cli.<name> with main(argv, prog) -> exit status.
# The order is the one --help lists.
COMMANDS: dict[str, str] = {
    "run": "one federated run: validate and preflight here, then `flwr run` it and wait for its final status",
    "central": "one centralized run (the baseline): fine-tune, validate every epoch, test at the end; resumable",
    "edit": "calibrate a mask (step 0 + calibration, federated or --central) and write it as a reusable mask file",
    "search": "hyper-parameter search (Optuna) of centralized runs on the validation split; resumable",
    "sweep": "run the runs of grid files, one or N at a time (skip finished, resume started)",
    "summarize": "one table (mean ± std over seeds) and the figures of one or more runs directories",
    "analyze": "analyses of finished runs (mask-agreement: single-client masks vs the aggregated mask)",
    "plot": "loss/accuracy curves of one or several run directories into a PNG, PDF or SVG",
    "demo": "a few-minute CPU tour on generated stand-in data (not CIFAR): federated run, editing run, sweep, summary",
}


def version() -> str:
    """The installed package's version (its metadata), or 'unknown' when it runs from a source tree uninstalled."""
    from importlib import metadata

    try:
        return metadata.version("fedtalos")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: only for ``--help``, ``--version`` and refusing an unknown command (the commands parse
    the rest)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Federated fine-tuning of a ViT on CIFAR-100 with sparse model editing, and its study.",
        epilog="`fedtalos COMMAND --help` shows a command's options; `fedtalos-central` is `fedtalos central`.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_line in COMMANDS.items():
        commands.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``fedtalos COMMAND [ARGS ...]``: the command's exit status (2 for an unknown command or bad input).

    Bare ``fedtalos`` prints the help (status 0).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        build_parser().print_help()
        return 0
    if argv[0] not in COMMANDS:
        # Exits: with the help (-h), the version, or with status 2 and argparse's message for an unknown command.
        build_parser().parse_args(argv[:1])
        return USAGE_ERROR  # not reached
    name, *rest = argv
    command = importlib.import_module(f"fedtalos.cli.{name}")
    return command.main(rest, prog=f"{PROG} {name}")


if __name__ == "__main__":  # `python -m fedtalos.cli.main`, as sweeps before `python -m fedtalos.cli` ran it
    sys.exit(main())
