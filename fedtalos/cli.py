"""The ``fedtalos`` command: run a federated experiment, plot runs (sweeps and summaries: see ``experiments``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedtalos import launch
from fedtalos.tracking.plots import X_AXES, default_x, plot_runs


def _plot(args: argparse.Namespace) -> int:
    runs = [Path(p) for p in args.runs]
    missing = [str(p) for p in runs if not (p / "metrics.jsonl").is_file()]
    if missing:
        print(f"error: no metrics.jsonl in {', '.join(missing)}", file=sys.stderr)
        return 2
    x = args.x or default_x(runs)
    out = (
        Path(args.out)
        if args.out
        else (runs[0] / "plots" / f"curves-{x}.png" if len(runs) == 1 else Path("comparison.png"))
    )
    try:
        path = plot_runs(runs, out, x=x, labels=args.labels, title=args.title)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtalos", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="validate, then `flwr run` a federated run and wait for its final status", add_help=False
    )
    run.add_argument("rest", nargs=argparse.REMAINDER)
    run.set_defaults(func=lambda args: launch.main(args.rest))
    plot = sub.add_parser("plot", help="loss/accuracy curves of one or several run directories into a PNG")
    plot.add_argument("runs", nargs="+", help="run directories (holding metrics.jsonl)")
    plot.add_argument(
        "--x",
        choices=sorted(X_AXES),
        default=None,
        help="x axis: round, client-steps (round × J, to compare different J) or epoch "
        "(default: epoch if all runs are centralized, else round)",
    )
    plot.add_argument("--out", help="PNG path (default: RUN/plots/curves-<x>.png, or comparison.png for several)")
    plot.add_argument("--labels", nargs="+", help="legend labels, one per run")
    plot.add_argument("--title", help="figure title")
    plot.set_defaults(func=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
