"""``fedtalos summarize RUNS_DIR``: one table of a runs directory (CSV + Markdown, mean ± std over seeds) and figures.

What the table and the figures hold is :mod:`fedtalos.study.tables`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fedtalos.cli.options import fail
from fedtalos.study.tables import summarize
from fedtalos.tracking.log_setup import log_to_stderr

PROG = "fedtalos summarize"
HELP = "one table (mean ± std over seeds) and the figures of a runs directory"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=HELP)
    parser.add_argument("runs_dir", help="the output root holding the run directories")
    parser.add_argument("--out", help="where to write summary.csv, summary.md, figures/ (default: RUNS_DIR/summary)")
    parser.add_argument("--no-figures", action="store_true", help="only the table")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Write the table (and figures) of the finished runs under RUNS_DIR; print the table and the paths."""
    args = build_parser(prog).parse_args(argv)
    log_to_stderr()
    root = Path(args.runs_dir)
    if not root.is_dir():
        return fail(prog, f"{root} is not a directory")
    result = summarize(root, args.out, figures=not args.no_figures)
    if not result["groups"]:
        return fail(prog, f"no finished run under {root}")
    print(result["table"])
    for warning in result["warnings"]:
        print(f"note: {warning}")
    if result["unfinished"]:
        print(f"left out, unfinished: {', '.join(r.name for r in result['unfinished'])}")
    print(f"table: {result['csv']} and {result['markdown']}")
    for path in result["figures"]:
        print(f"figure: {path}")
    return 0
