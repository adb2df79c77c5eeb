"""``fedtalos central``: the centralized baseline — fine-tune on the train split, validate, test at the end.

    fedtalos central [--config FILE.toml] [--<run-config-key> VALUE ...]

Every run-config key is an option (see :mod:`fedtalos.cli.options`). Relative paths for ``output-root``,
``dataset-root`` and ``weights-path`` are resolved against the current directory. Here ``eval-every`` defaults
to 1 (validate every epoch). Running the same command again resumes the run.

``fedtalos-central`` is the same command under another name, and ``fedtalos-central search ...`` (as
``fedtalos central search ...``) is ``fedtalos search ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedtalos.cli import search
from fedtalos.cli.options import add_run_config_options, fail, overrides_from_args
from fedtalos.config import ConfigError, RunConfig
from fedtalos.config.kinds import for_kind
from fedtalos.tracking.log_setup import log_to_stderr

PROG = "fedtalos central"
ALIAS = "fedtalos-central"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The centralized baseline: fine-tune on the train split with SGD with momentum, validate every "
        "eval-every epochs (default 1), test at the end. Running the same command again resumes the run.",
        epilog="examples:\n"
        f"  {prog} --image-size 224 --epochs 10 --lr 0.01 --output-root runs\n"
        f"  {prog} --config best.toml --seed 1\n"
        f"  {prog} --head ridge --mask-rule least-sensitive --sparsity 0.9\n"
        f"  {prog} search configs/search/central.toml --trials 20   (the same as: fedtalos search ...)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_config_options(parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run (or resume) one centralized run; ``search ...`` as the first argument is ``fedtalos search ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "search":  # a spelling that existing users and configs use
        return search.main(argv[1:], prog=f"{prog} search")
    args = build_parser(prog).parse_args(argv)
    log_to_stderr()
    try:
        config = for_kind(RunConfig.from_mapping(overrides_from_args(args)), "centralized")
    except ConfigError as e:  # before importing torch: bad input is answered at once
        return fail(prog, str(e))
    from fedtalos.tracking.rundir import already_finished_message, finished_summary

    if finished_summary(config, "centralized") is not None:  # before building anything
        print(already_finished_message(config.run_dir("centralized")))
        return 0
    from fedtalos.run.preflight import preflight
    from fedtalos.task.cifar import DatasetIntegrityError, DatasetNotFoundError
    from fedtalos.task.model import ModelError

    try:
        preflight(config, "centralized")
    except (ConfigError, DatasetNotFoundError, DatasetIntegrityError, ModelError) as e:
        return fail(prog, str(e))
    except RuntimeError as e:  # e.g. device = 'cuda' without CUDA
        return fail(prog, str(e))
    from fedtalos.central.trainer import run_centralized
    from fedtalos.tracking.checkpoint import CheckpointError
    from fedtalos.tracking.rundir import RunConfigMismatch

    try:
        run_dir, summary = run_centralized(config)
    except (RunConfigMismatch, CheckpointError) as e:
        return fail(prog, str(e))
    final = summary["final"]
    print(
        f"done: {run_dir.path}\n  val_acc {final['val_acc']:.4f}  test_acc {final['test_acc']:.4f}"
        if final.get("test_acc") is not None
        else f"done: {run_dir.path}"
    )
    return 0


def fedtalos_central() -> int:
    """The ``fedtalos-central`` console script: :func:`main` under that name."""
    return main(sys.argv[1:], prog=ALIAS)


if __name__ == "__main__":  # `python -m fedtalos.cli.central`, as existing sweep logs and scripts call it
    sys.exit(fedtalos_central())
