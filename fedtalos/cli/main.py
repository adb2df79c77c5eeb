"""The ``fedtalos`` command: run a federated experiment, sweep grid files, summarize runs, analyse masks, plot.

fedtalos run [APP] [--run-config ...]                 one federated run (validated, then `flwr run`)
fedtalos sweep GRID.toml [...] [--seeds N] [--dry-run] the runs of grid files, one after another
fedtalos summarize RUNS_DIR                            table (CSV + Markdown, mean ± std) and figures
fedtalos analyze mask-agreement RUN_DIR [...]          single-client masks vs the aggregated mask
fedtalos plot RUN_DIR [...]                            loss/accuracy curves of some runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedtalos.cli import run as run_command
from fedtalos.config import ConfigError
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


def _seeds(args: argparse.Namespace) -> list[int] | None:
    if args.seed_list is not None:
        return args.seed_list
    return list(range(args.seeds)) if args.seeds is not None else None


def _sweep(args: argparse.Namespace) -> int:
    import shlex

    from fedtalos.study import grid as ex
    from fedtalos.study import sweep as sw

    try:
        runs = ex.plan_files(
            args.grids,
            seeds=_seeds(args),
            output_root=args.output_root,
            base_files=args.base or (),
            sets=ex.parse_set(args.set or ()),
        )
    except ConfigError as e:
        print(f"fedtalos sweep: {e}", file=sys.stderr)
        return 2
    if args.only:
        import fnmatch

        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.name, pattern) for pattern in args.only)]
        if not runs:
            print(f"fedtalos sweep: no planned run matches {' '.join(args.only)}", file=sys.stderr)
            return 2
    if "num-supernodes" in args.federation_config:
        print("fedtalos sweep: num-supernodes is set from each run's num-clients; leave it out", file=sys.stderr)
        return 2
    runners = sw.default_runners(Path(args.app).resolve(), args.federation_config)
    if args.dry_run:
        families: dict[str, list] = {}
        for run in runs:
            families.setdefault(run.family, []).append(run)
        for family, members in families.items():
            configs = len({r.label for r in members})
            seeds = sorted({r.seed for r in members})
            print(
                f"{family} ({members[0].kind}, {members[0].grid_file}): {configs} configurations × {len(seeds)} "
                f"seeds {seeds} = {len(members)} runs under {members[0].config.resolved_output_root()}"
            )
            for i, run in enumerate(members, 1):
                state, detail = ex.run_state(run)
                status = state + (f" ({detail})" if detail else "")
                print(f"  {i:3d}  {run.name:<40} {status:<12} {run.settings()}")
                print(f"       $ {shlex.join(runners[run.kind].command(run))}")
        print(f"{len(runs)} runs planned; nothing was run (--dry-run).")
        return 0
    analyze = None if args.no_analysis else sw.analyze_in_subprocess
    sweep = sw.Sweep(runs, runners, progress_every=args.progress_every, analyze=analyze)
    try:
        report = sweep.run()
    except KeyboardInterrupt:
        print("sweep interrupted; run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    return 0 if report.ok else 1


def _summarize(args: argparse.Namespace) -> int:
    from fedtalos.study.summary import summarize

    root = Path(args.runs_dir)
    if not root.is_dir():
        print(f"error: {root} is not a directory", file=sys.stderr)
        return 2
    result = summarize(root, args.out, figures=not args.no_figures)
    if not result["groups"]:
        print(f"error: no finished run under {root}", file=sys.stderr)
        return 2
    print(result["table"])
    for warning in result["warnings"]:
        print(f"note: {warning}")
    if result["unfinished"]:
        print(f"left out, unfinished: {', '.join(r.name for r in result['unfinished'])}")
    print(f"table: {result['csv']} and {result['markdown']}")
    for path in result["figures"]:
        print(f"figure: {path}")
    return 0


def _analyze_mask_agreement(args: argparse.Namespace) -> int:
    from fedtalos.study.agreement import OUTPUT_JSON, OUTPUT_PNG, mask_agreement

    clients = None if args.clients == "all" else int(args.clients)
    status = 0
    for run_dir in map(Path, args.runs):
        try:
            record = mask_agreement(run_dir, clients=clients, device=args.device, check=not args.no_check)
        except (OSError, ValueError, KeyError) as e:
            print(f"{run_dir}: {e}", file=sys.stderr)
            status = 1
            continue
        check = ""
        if "reproduced_exactly" in record:
            check = (
                " · federated calibration reproduced mask.npz exactly"
                if record["reproduced_exactly"]
                else f" · reproduced mask vs mask.npz: Jaccard {record['reproduced_jaccard']:.4f}"
            )
        pairwise = record["pairwise_jaccard"]
        print(
            f"{run_dir.name}: Jaccard(client mask, aggregated mask) = {record['mean_jaccard']:.3f}"
            + (f" ± {record['std_jaccard']:.3f}" if record["std_jaccard"] is not None else "")
            + f" over {len(record['clients'])} clients; client vs client "
            + (f"{pairwise:.3f}" if pairwise is not None else "—")
            + f"; random masks {record['chance_jaccard']:.3f}{check}"
        )
        print(f"  {run_dir / OUTPUT_JSON}, {run_dir / OUTPUT_PNG}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtalos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="validate, then `flwr run` a federated run and wait for its final status", add_help=False
    )
    run.add_argument("rest", nargs=argparse.REMAINDER)
    run.set_defaults(func=lambda args: run_command.main(args.rest))
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

    sweep = sub.add_parser(
        "sweep",
        help="run the runs of grid files one after another (skip finished, resume started)",
        description="Expand grid files (configs/*.toml) into runs with stable names and run them one after another "
        "through `flwr run` (federated) or `python -m fedtalos.cli.central` (centralized). Finished runs are "
        "skipped, started ones resumed; a failed run is reported and the sweep goes on. The grid file format is "
        "described in fedtalos/experiments.py and the README (Reproducing the study).",
    )
    sweep.add_argument("grids", nargs="+", help="grid files; families run in this order")
    seeds = sweep.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 (default: the grid's [sweep] seeds)")
    seeds.add_argument("--seed-list", type=int, nargs="+", metavar="S", help="run exactly these seeds")
    sweep.add_argument(
        "--output-root",
        help="where the runs go (default: the grid's output-root, else $FEDTALOS_OUTPUT_ROOT, else ~/fedtalos/runs)",
    )
    sweep.add_argument(
        "--base",
        action="append",
        metavar="FILE.toml",
        help="run-config overrides under the grid's own values, e.g. the centralized search's best.toml",
    )
    sweep.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a run-config key in every run (wins over the grid), e.g. --set image-size=32",
    )
    sweep.add_argument("--only", action="append", metavar="GLOB", help="only runs whose name matches (repeatable)")
    sweep.add_argument("--dry-run", action="store_true", help="print the planned runs, their state and commands")
    sweep.add_argument("--app", default=".", help="the Flower app directory for federated runs (default: .)")
    sweep.add_argument(
        "--federation-config", default="", help="extra federation settings, e.g. 'client-resources-num-gpus=0.5'"
    )
    sweep.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="at most one progress line per run this often (default: 30)",
    )
    sweep.add_argument("--no-analysis", action="store_true", help="skip the analyses the grid files ask for")
    sweep.set_defaults(func=_sweep)

    summarize = sub.add_parser(
        "summarize", help="one table (mean ± std over seeds) and the figures of a runs directory"
    )
    summarize.add_argument("runs_dir", help="the output root holding the run directories")
    summarize.add_argument("--out", help="where to write summary.csv, summary.md, figures/ (default: RUNS_DIR/summary)")
    summarize.add_argument("--no-figures", action="store_true", help="only the table")
    summarize.set_defaults(func=_summarize)

    analyze = sub.add_parser("analyze", help="analyses of finished runs")
    analyses = analyze.add_subparsers(dest="analysis", required=True)
    agreement = analyses.add_parser(
        "mask-agreement",
        help="calibrate masks on single clients and measure their overlap (Jaccard) with the aggregated mask",
    )
    agreement.add_argument("runs", nargs="+", help="run directories of editing runs (holding mask.npz)")
    agreement.add_argument("--clients", default="10", help="how many clients (partition ids 0..N-1), or 'all'")
    agreement.add_argument("--device", help="override the run's device, e.g. cpu")
    agreement.add_argument(
        "--no-check",
        action="store_true",
        help="skip repeating the federated calibration (the check that it reproduces mask.npz)",
    )
    agreement.set_defaults(func=_analyze_mask_agreement)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
