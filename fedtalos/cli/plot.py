"""``fedtalos plot RUN_DIR [...]``: loss/accuracy curves of one or several runs into one figure (PNG, PDF or SVG)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fedtalos.cli.options import fail
from fedtalos.tracking.figure_options import FORMATS, X_AXES

PROG = "fedtalos plot"
HELP = "loss/accuracy curves of one or several run directories into a PNG, PDF or SVG"
EPILOG = """examples:
  fedtalos plot ~/fedtalos/runs/RUN                       RUN/plots/curves-<x>.png
  fedtalos plot RUN_A RUN_B --format pdf                  comparison.pdf, labelled by the settings that differ
  fedtalos plot RUN_A RUN_B --labels FedAvg FedProx --out fig.svg
"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run directories (holding metrics.jsonl)")
    parser.add_argument(
        "--x",
        choices=sorted(X_AXES),
        default=None,
        help="x axis: round, client-steps (round × J, to compare different J; federated runs) or epoch "
        "(centralized runs) (default: epoch if all runs are centralized, else round)",
    )
    parser.add_argument(
        "--out",
        help="output file; its suffix picks the format: .png, .pdf or .svg (default: RUN/plots/curves-<x>.FORMAT "
        "for one run, comparison.FORMAT for several)",
    )
    parser.add_argument("--format", choices=FORMATS, default="png", help="format of the default output file")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per run (default: the settings that differ)")
    parser.add_argument("--title", help="figure title (default: what the runs share)")
    return parser


def _not_runs(paths: Sequence[Path]) -> str | None:
    """Why some of ``paths`` are not run directories, with a hint for an output root holding runs."""
    missing = [p for p in paths if not (p / "metrics.jsonl").is_file()]
    if not missing:
        return None
    lines = [f"no metrics.jsonl in {', '.join(map(str, missing))}"]
    for path in missing:
        runs = sorted(p.parent for p in path.glob("*/metrics.jsonl"))
        if runs:
            lines.append(f"{path} holds {len(runs)} run directories: pass them, e.g. {runs[0]} (or {path}/*)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Draw the curves; print the figure's path."""
    args = build_parser(prog).parse_args(argv)
    from fedtalos.tracking.log_setup import log_to_stderr
    from fedtalos.tracking.plots import default_x, plot_runs  # matplotlib once the command runs

    log_to_stderr()
    runs = [Path(p) for p in args.runs]
    problem = _not_runs(runs)
    if problem:
        return fail(prog, problem)
    x = args.x or default_x(runs)
    if args.out:
        out = Path(args.out)
        if out.suffix.lstrip(".").lower() not in FORMATS:
            return fail(prog, f"--out {out}: the suffix picks the format; use one of .{', .'.join(FORMATS)}")
    else:
        name = f"curves-{x}.{args.format}"
        out = runs[0] / "plots" / name if len(runs) == 1 else Path(f"comparison.{args.format}")
    try:
        path = plot_runs(runs, out, x=x, labels=args.labels, title=args.title)
    except ValueError as e:
        return fail(prog, str(e))
    print(path)
    return 0
