"""``fedtalos summarize RUNS_DIR [RUNS_DIR ...]``: one table of one or more runs directories (CSV + Markdown, mean ±
std over seeds) and figures. Several directories (e.g. output roots copied from machines that each ran a
``fedtalos sweep --shard k/N``) are pooled into one table. Beside every figure, a CSV of the points it draws (value,
n, the runs behind it); docs/figures.md says which runs each figure takes.

What the table and the figures hold is :mod:`fedtalos.study.tables`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fedtalos.cli.options import fail

PROG = "fedtalos summarize"
HELP = "one table (mean ± std over seeds) and the figures of one or more runs directories"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=HELP)
    parser.add_argument(
        "runs_dir", nargs="+", help="output roots holding the run directories (several: pooled into one table)"
    )
    parser.add_argument(
        "--out", help="where to write summary.csv, summary.md, figures/ (default: the first RUNS_DIR/summary)"
    )
    parser.add_argument("--no-figures", action="store_true", help="only the table")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Write the table (and figures) of the finished runs under RUNS_DIR; print the table and the paths."""
    args = build_parser(prog).parse_args(argv)
    from fedtalos.study.tables import summarize  # the figures' imports once the command runs
    from fedtalos.tracking.log_setup import log_to_stderr

    log_to_stderr()
    roots = [Path(d) for d in args.runs_dir]
    for root in roots:
        if not root.is_dir():
            return fail(prog, f"{root} is not a directory")
    result = summarize(roots, args.out, figures=not args.no_figures)
    if not result["groups"]:
        return fail(prog, f"no finished run under {' '.join(map(str, roots))}")
    print(result["table"])
    for warning in result["warnings"]:
        print(f"note: {warning}")
    if result["unfinished"]:
        print(f"left out, unfinished: {', '.join(r.name for r in result['unfinished'])}")
    print(f"table: {result['csv']} and {result['markdown']}")
    for path in result["figures"]:
        print(f"figure: {path}")
    return 0
