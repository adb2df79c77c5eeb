"""``fedtalos analyze ANALYSIS RUN_DIR ...``: analyses of finished runs, written into each run directory.

    fedtalos analyze mask-agreement RUN_DIR [...] [--clients N|all] [--subsets M] [--device DEVICE] [--no-check]

``mask-agreement`` (:mod:`fedtalos.study.agreement`): calibrate a mask on each of N single clients and measure
its overlap (Jaccard) with the aggregated mask of the run, against the noise floor of M iid subsets of the pooled
calibration samples, each as large as one client's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedtalos.cli.options import fail
from fedtalos.tracking.log_setup import log_to_stderr

PROG = "fedtalos analyze"
HELP = "analyses of finished runs (mask-agreement: single-client masks vs the aggregated mask)"


def _client_count(text: str) -> int | None:
    """``--clients``: a positive number of clients, or ``all`` (None)."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive integer or 'all'")
    return int(text)


def _count(text: str) -> int:
    """``--subsets``: a number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 0")
    return int(text)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=HELP)
    analyses = parser.add_subparsers(dest="analysis", required=True)
    agreement = analyses.add_parser(
        "mask-agreement",
        help="calibrate masks on single clients and measure their overlap (Jaccard) with the aggregated mask",
    )
    agreement.add_argument("runs", nargs="+", help="run directories of editing runs (holding their mask)")
    agreement.add_argument(
        "--clients", type=_client_count, default=10, help="how many clients (partition ids 0..N-1), or 'all'"
    )
    agreement.add_argument(
        "--subsets",
        type=_count,
        default=5,
        help="iid subsets of the pooled calibration samples, each as large as one client's, for the noise floor "
        "(0 = none)",
    )
    agreement.add_argument("--device", help="override the run's device, e.g. cpu")
    agreement.add_argument(
        "--no-check",
        action="store_true",
        help="skip repeating the federated calibration (the check that it reproduces the run's mask)",
    )
    return parser


def _mask_agreement(args: argparse.Namespace, prog: str) -> int:
    """One line per run; a run that cannot be analysed is reported and the others go on (exit 1 then)."""
    from fedtalos.study.agreement import OUTPUT_JSON, OUTPUT_PNG, mask_agreement

    status = 0
    for run_dir in map(Path, args.runs):
        try:
            record = mask_agreement(
                run_dir, clients=args.clients, device=args.device, check=not args.no_check, subsets=args.subsets
            )
        except (OSError, ValueError, KeyError) as e:
            print(f"{prog}: {run_dir}: {e}", file=sys.stderr)
            status = 1
            continue
        check = ""
        if "reproduced_exactly" in record:
            check = (
                " · federated calibration reproduced the run's mask exactly"
                if record["reproduced_exactly"]
                else f" · reproduced mask vs the run's mask: Jaccard {record['reproduced_jaccard']:.4f}"
            )
        pairwise, mean, cohort = record["pairwise_jaccard"], record["mean_jaccard"], record["cohort_mean_jaccard"]
        print(
            f"{run_dir.name}: Jaccard(client mask, aggregated mask) = "
            + (f"{mean:.3f}" if mean is not None else "—")
            + (f" ± {record['std_jaccard']:.3f}" if record["std_jaccard"] is not None else "")
            + f" over {record['clients_outside_cohort']} clients outside the calibration cohort"
            + (f" ({cohort:.3f} over {record['clients_in_cohort']} in it)" if cohort is not None else "")
            + "; client vs client "
            + (f"{pairwise:.3f}" if pairwise is not None else "—")
            + f"; random masks {record['chance_jaccard']:.3f}{check}"
        )
        if record["noise_floor_jaccard"] is not None:
            floor, std, size = record["noise_floor_jaccard"], record["noise_floor_std"], record["noise_floor"][0]
            print(
                f"  noise floor: iid subsets of {size['samples']} pooled calibration samples vs the aggregate of the "
                "rest of the pool "
                f"= {floor:.3f}" + (f" ± {std:.3f}" if std is not None else "") + f" over {len(record['noise_floor'])}"
            )
        print(f"  {run_dir / OUTPUT_JSON}, {run_dir / OUTPUT_PNG}")
    return status


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the named analysis on each run directory; 0 if every run was analysed."""
    args = build_parser(prog).parse_args(argv)
    log_to_stderr()
    prog = f"{prog} {args.analysis}"
    from fedtalos.tracking.mask_report import MASK_FILE, run_mask_path  # torch: only once a command is given
    from fedtalos.tracking.rundir import CONFIG_FILE

    # A mistyped path fails here, before the first run's calibration (minutes) rather than after it.
    lacking = {
        run: [name for name in (CONFIG_FILE,) if not (Path(run) / name).is_file()]
        + ([] if run_mask_path(Path(run)) else [MASK_FILE])
        for run in args.runs
    }
    problems = [f"{run} has no {' and no '.join(names)}" for run, names in lacking.items() if names]
    if problems:
        return fail(prog, f"not the directory of an editing run: {'; '.join(problems)}")
    return _mask_agreement(args, prog)
