"""The ``fedtalos`` command: ``fedtalos COMMAND [ARGS ...]``, one module of :mod:`fedtalos.cli` per command.

    fedtalos run [APP] [--run-config ...]                    one federated run (validated, then `flwr run`)
    fedtalos central [--config FILE.toml] [--<key> VALUE ...]  one centralized run (the baseline)
    fedtalos edit --out MASK.safetensors [--central] [...]     calibrate a mask once, write it as a mask file
    fedtalos search SPACE.toml --trials N [...]                hyper-parameter search of centralized runs
    fedtalos sweep GRID.toml [...] [--seeds N] [--dry-run]     the runs of grid files, one or N at a time
    fedtalos summarize RUNS_DIR [...]                          table (CSV + Markdown, mean ± std) and figures
    fedtalos analyze mask-agreement RUN_DIR [...]              single-client masks vs the aggregated mask
    fedtalos plot RUN_DIR [...]                                loss/accuracy curves of some runs
    fedtalos demo [--out DIR]                                  a few-minute CPU tour on generated stand-in data

``fedtalos COMMAND --help`` shows a command's options; ``fedtalos-central`` is an alias of ``fedtalos central``.
This module only dispatches: everything after the command's name goes to that command's ``main``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from fedtalos.cli import analyze, central, demo, edit, plot, run, search, summarize, sweep
from fedtalos.cli.options import USAGE_ERROR

PROG = "fedtalos"
# Each module has HELP (one line) and main(argv, prog) -> exit status; the order is the one --help lists.
COMMANDS: dict[str, ModuleType] = {
    "run": run,
    "central": central,
    "edit": edit,
    "search": search,
    "sweep": sweep,
    "summarize": summarize,
    "analyze": analyze,
    "plot": plot,
    "demo": demo,
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: only for ``--help`` and for refusing an unknown command (the commands parse the rest)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Federated fine-tuning of a ViT on CIFAR-100 with sparse model editing, and its study.",
        epilog="`fedtalos COMMAND --help` shows a command's options; `fedtalos-central` is `fedtalos central`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        commands.add_parser(name, help=module.HELP, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``fedtalos COMMAND [ARGS ...]``: the command's exit status (2 for an unknown command or bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        # Exits: with the help (-h), or with status 2 and argparse's message for a missing or unknown command.
        build_parser().parse_args(argv[:1])
        return USAGE_ERROR  # not reached
    name, *rest = argv
    return COMMANDS[name].main(rest, prog=f"{PROG} {name}")


if __name__ == "__main__":  # `python -m fedtalos.cli.main`, as sweeps before `python -m fedtalos.cli` ran it
    sys.exit(main())
