"""``fedtalos plot RUN_DIR [...]``: loss/accuracy curves of one or several runs into one PNG."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fedtalos.cli.options import fail
from fedtalos.tracking.log_setup import log_to_stderr
from fedtalos.tracking.plots import X_AXES, default_x, plot_runs

PROG = "fedtalos plot"
HELP = "loss/accuracy curves of one or several run directories into a PNG"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=HELP)
    parser.add_argument("runs", nargs="+", help="run directories (holding metrics.jsonl)")
    parser.add_argument(
        "--x",
        choices=sorted(X_AXES),
        default=None,
        help="x axis: round, client-steps (round × J, to compare different J) or epoch "
        "(default: epoch if all runs are centralized, else round)",
    )
    parser.add_argument("--out", help="PNG path (default: RUN/plots/curves-<x>.png, or comparison.png for several)")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per run")
    parser.add_argument("--title", help="figure title")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Draw the curves; print the PNG's path."""
    args = build_parser(prog).parse_args(argv)
    log_to_stderr()
    runs = [Path(p) for p in args.runs]
    missing = [str(p) for p in runs if not (p / "metrics.jsonl").is_file()]
    if missing:
        return fail(prog, f"no metrics.jsonl in {', '.join(missing)}")
    x = args.x or default_x(runs)
    if args.out:
        out = Path(args.out)
    else:
        out = runs[0] / "plots" / f"curves-{x}.png" if len(runs) == 1 else Path("comparison.png")
    try:
        path = plot_runs(runs, out, x=x, labels=args.labels, title=args.title)
    except ValueError as e:
        return fail(prog, str(e))
    print(path)
    return 0
