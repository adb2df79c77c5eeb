"""``fedtalos sweep``: the planned runs of grid files, one or N at a time (finished ones skipped, started resumed).

    fedtalos sweep GRID.toml [...] [--seeds N | --seed-list S ...] [--only GLOB] [--dry-run] [--output-root DIR]
                   [--parallel N] [--gpus 0,1,...] [--shard k/N]

The grid file format and the run names are :mod:`fedtalos.study.grid`; running them is :mod:`fedtalos.study.sweep`
(each run through :mod:`fedtalos.study.runners`); slots and shards are :mod:`fedtalos.study.slots`, claims
:mod:`fedtalos.study.claims`.
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedtalos.cli.options import fail
from fedtalos.cli.settings import parse_settings
from fedtalos.config import ConfigError

if TYPE_CHECKING:
    from fedtalos.study.plan import PlannedRun
    from fedtalos.study.runners import Runner

PROG = "fedtalos sweep"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Expand grid files (configs/*.toml) into runs with stable names and run them (one after another, "
        "or N at a time with --parallel) through `flwr run` (federated) or `python -m fedtalos.cli central` "
        "(centralized). Finished runs are "
        "skipped, started ones resumed; a failed run is reported and the sweep goes on. The grid file format is "
        "described in fedtalos/study/grid.py and docs/sweeps.md.",
    )
    parser.add_argument("grids", nargs="+", help="grid files; families run in this order")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 (default: the grid's [sweep] seeds)")
    seeds.add_argument("--seed-list", type=int, nargs="+", metavar="S", help="run exactly these seeds")
    parser.add_argument(
        "--output-root",
        help="where the runs go (default: the grid's output-root, else $FEDTALOS_OUTPUT_ROOT, else ~/fedtalos/runs)",
    )
    parser.add_argument(
        "--base",
        action="append",
        metavar="FILE.toml",
        help="run-config overrides under the grid's own values, e.g. the centralized search's best.toml",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="'KEY=VALUE ...'",
        help="settings for every run (win over the grid), as for `fedtalos run -c`: --set 'image-size=32 "
        "dataset-root=data' (repeatable)",
    )
    parser.add_argument("--only", action="append", metavar="GLOB", help="only runs whose name matches (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs, their state and commands")
    parser.add_argument("--app", default=".", help="the Flower app directory for federated runs (default: .)")
    parser.add_argument(
        "--federation-config", default="", help="extra federation settings, e.g. 'client-resources-num-gpus=0.5'"
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="at most one progress line per run this often (default: 30)",
    )
    parser.add_argument("--no-analysis", action="store_true", help="skip the analyses the grid files ask for")
    scale = parser.add_argument_group("scaling out (docs/gpus-and-scaling.md)")
    scale.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="run N runs at once, each on its own SuperLink and Ray with 1/N of the cores (default: 1)",
    )
    scale.add_argument(
        "--gpus",
        metavar="0,1,...",
        help="slot i runs on GPU gpus[i %% len(gpus)] (CUDA_VISIBLE_DEVICES); default: every slot sees every GPU",
    )
    scale.add_argument(
        "--shard",
        metavar="k/N",
        help="only shard k of N of the planned runs (every N-th, from the k-th), for machines without a shared "
        "file system; give every machine the same grid files, seeds and --only",
    )
    scale.add_argument(
        "--stale-after",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="a claim held from another host without a heartbeat for this long is taken over (default: 600; "
        "heartbeats come every 30 s)",
    )
    return parser


def _seeds(args: argparse.Namespace) -> list[int] | None:
    if args.seed_list is not None:
        return args.seed_list
    return list(range(args.seeds)) if args.seeds is not None else None


def _print_plan(runs: list[PlannedRun], runners: dict[str, Runner]) -> None:
    """Per family: its size and root, then each run's state, settings and the command that runs it."""
    from fedtalos.study import plan
    from fedtalos.study.compute import compute_table

    families: dict[str, list[PlannedRun]] = {}
    for run in runs:
        families.setdefault(run.family, []).append(run)
    for family, members in families.items():
        configs = len({r.label for r in members})
        seeds = sorted({r.seed for r in members})
        kind = next((r.kind for r in members if not r.edit), members[0].kind)
        print(
            f"{family} ({kind}, {members[0].grid_file}): {configs} configurations × {len(seeds)} "
            f"seeds {seeds} = {len(members)} runs under {members[0].config.resolved_output_root()}"
        )
        for i, run in enumerate(members, 1):
            state, detail = plan.run_state(run)
            status = state + (f" ({detail})" if detail else "")
            print(f"  {i:3d}  {run.name:<40} {status:<12} {run.settings()}")
            print(f"       $ {shlex.join(runners[run.kind].command(run))}")
    shared = sum(1 for r in runs if r.shares)
    for line in compute_table(runs):
        print(line)
    print(
        f"{len(runs)} runs planned"
        + (f" ({len(runs) - shared} to run: {shared} share the directory of an identical run)" if shared else "")
        + "; nothing was run (--dry-run)."
    )


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Plan the grid files' runs and run them (or print them with ``--dry-run``); 1 if any run failed."""
    args = build_parser(prog).parse_args(argv)
    from fedtalos.study import plan  # the study's modules once a command runs: --help stays instant
    from fedtalos.study import runners as running
    from fedtalos.study import sweep as sweeping
    from fedtalos.study.claims import Claims
    from fedtalos.study.slots import make_slots, parse_gpus, parse_shard, shard
    from fedtalos.tracking.log_setup import log_to_stderr

    log_to_stderr()
    try:  # every scaling option is checked before anything is planned or run
        slots = make_slots(args.parallel, parse_gpus(args.gpus, _visible_gpus()) if args.gpus is not None else None)
        part = parse_shard(args.shard) if args.shard is not None else None
        claims = Claims(stale_after=args.stale_after)
    except ValueError as e:
        return fail(prog, str(e))
    try:
        runs = plan.plan_files(
            args.grids,
            seeds=_seeds(args),
            output_root=args.output_root,
            base_files=args.base or (),
            sets=parse_settings(args.set or [], "--set"),
        )
    except ConfigError as e:
        return fail(prog, str(e))
    if args.only:
        runs = plan.with_needs([r for r in runs if any(fnmatch.fnmatchcase(r.name, p) for p in args.only)], runs)
        if not runs:
            return fail(prog, f"no planned run matches {' '.join(args.only)}")
    if part is not None:
        planned, runs = len(runs), shard(runs, *part)
        if not runs:
            return fail(prog, f"shard {args.shard} of the {planned} planned runs is empty")
    if "num-supernodes" in args.federation_config:
        return fail(prog, "num-supernodes is set from each run's num-clients; leave it out")
    app = Path(args.app).resolve()
    runners = [running.default_runners(app, args.federation_config, slot=slot) for slot in slots]
    if args.dry_run:
        _print_plan(runs, runners[0])
        return 0
    analyze = None if args.no_analysis else sweeping.analyze_in_subprocess
    sweep = sweeping.Sweep(
        runs, runners, progress_every=args.progress_every, analyze=analyze, claims=claims, slots=slots
    )
    try:
        report = sweep.run()
    except KeyboardInterrupt:
        print("sweep interrupted; run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    finally:
        for slot in slots:
            slot.close()
    return 0 if report.ok else 1
