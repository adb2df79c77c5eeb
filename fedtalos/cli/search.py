"""``fedtalos search``: hyper-parameter search with Optuna on the validation split (never the test split).

    fedtalos search SPACE.toml --trials N [--study-name NAME] [--config BASE.toml] [--<key> VALUE ...]

The search itself (space file, trials, outputs, resuming) is :mod:`fedtalos.study.search`; the run-config
options are those of ``fedtalos central`` (:mod:`fedtalos.cli.options`), shared by every trial.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fedtalos.cli.options import add_run_config_options, fail, overrides_from_args
from fedtalos.config import ConfigError
from fedtalos.study.search import SearchError, search
from fedtalos.tracking.log_setup import log_to_stderr

PROG = "fedtalos search"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Hyper-parameter search with Optuna on the validation split; running the same command again "
        "continues the study. Each trial is a centralized run under <output-root>/search-<study>/.",
        epilog="The space file format: configs/search/central.toml, docs/centralized.md, study/search_space.py.",
    )
    parser.add_argument("space", help="search space TOML file (e.g. configs/search/central.toml)")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    parser.add_argument("--study-name", help="default: the space file's name without .toml")
    parser.add_argument("--pruner-startup-trials", type=int, default=5, help="trials before pruning starts (default 5)")
    parser.add_argument("--pruner-warmup-epochs", type=int, default=1, help="epochs never pruned (default 1)")
    add_run_config_options(parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run (or continue) a study; print the best trials and where ``best.toml`` is."""
    args = build_parser(prog).parse_args(argv)
    log_to_stderr()
    if args.trials < 1:
        return fail(prog, "--trials must be at least 1")
    from fedtalos.task.cifar import DatasetIntegrityError, DatasetNotFoundError
    from fedtalos.task.model import ModelError

    try:
        base = overrides_from_args(args)
        result = search(
            base,
            args.space,
            args.trials,
            args.study_name,
            pruner_startup_trials=args.pruner_startup_trials,
            pruner_warmup_epochs=args.pruner_warmup_epochs,
        )
    except (ConfigError, SearchError, DatasetNotFoundError, DatasetIntegrityError, ModelError) as e:
        return fail(prog, str(e))
    rows = result["trials"]
    print(f"study: {result['study_dir']}  ({len(rows)} trials; ranking in {result['csv'].name})")
    for row in rows[:5]:
        params = ", ".join(
            f"{k[6:]}={v:.4g}" if isinstance(v, float) else f"{k[6:]}={v}"
            for k, v in row.items()
            if k.startswith("param:")
        )
        acc = f"{row['val_acc']:.4f}" if row["val_acc"] is not None else "-"
        print(f"  #{row['rank'] or '-'} trial {row['trial']} {row['state']:>8} val_acc {acc}  {params}")
    if result["best"]:
        print(f"best config: {result['best']}  (re-run: fedtalos central --config {result['best']})")
    return 0
