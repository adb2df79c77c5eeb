"""``fedtalos edit``: calibrate a mask once (step 0, then calibration) and write it as a mask file.

    fedtalos edit --out MASK.safetensors [--central] [--config FILE.toml] [--<run-config-key> VALUE ...]

Federated (the default): a federated run through ``flwr run``, the same launcher as ``fedtalos run``, whose
fine-tuning has 0 rounds: the head phase (``head``: ridge or probe) and the ``calibration-rounds`` calibration
rounds go through Flower, and the server writes the mask file at the end (run-config ``mask-save-path``).
``--central``: the same phases as a centralized run on the train split, in this process. Either way the run has a
run directory (metrics, checkpoints; the same command resumes it) and the mask file holds the mask, the head it
was calibrated with and their provenance (``fedtalos/editing/mask_file.py``). ``mask-path = <the file>`` then
fine-tunes with it, centrally or federatedly, any number of times.

Every run-config key is an option, as for ``fedtalos central``; ``head`` defaults to ``ridge`` and ``mask-rule``
to ``least-sensitive`` here. An existing ``--out`` file is never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedtalos.cli.options import add_run_config_options, fail, overrides_from_args
from fedtalos.config import ConfigError, RunConfig
from fedtalos.config.kinds import for_kind
from fedtalos.launch.flwr_run import run_config_of
from fedtalos.tracking.log_setup import log_to_stderr

PROG = "fedtalos edit"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog="examples:\n"
        f"  {prog} --out ~/masks/fed-s0.9.safetensors --sparsity 0.9 --calibration-rounds 4\n"
        f"  {prog} --central --out ~/masks/central-s0.9.safetensors --sparsity 0.9\n"
        "  fedtalos run . -c 'mask-path=~/masks/fed-s0.9.safetensors local-steps=8'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="MASK.safetensors", help="the mask file to write (new)")
    parser.add_argument("--central", action="store_true", help="calibrate on the train split in this process")
    parser.add_argument("--app", default=".", help="federated: the Flower app directory (default: .)")
    parser.add_argument(
        "--federation-config", default="", help="federated: extra settings, e.g. 'client-resources-num-gpus=0.5'"
    )
    add_run_config_options(parser)
    return parser


def edit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config values of the editing run: the options, the editing defaults, no fine-tuning, the output.

    Raises:
        ConfigError: every problem at once (including an ``--out`` that exists already).
    """
    values = overrides_from_args(args)
    out = Path(args.out).expanduser().resolve()
    if out.exists():
        raise ConfigError([f"--out {str(out)!r}: exists already (a mask file is never overwritten); choose another"])
    # the editing keys' defaults here (KeyFacts.defaults_in): the TaLoS pipeline, a ridge head and least-sensitive
    values = {**RunConfig.defaults_in("edit"), **values, "mask-save-path": str(out)}
    values["epochs" if args.central else "num-server-rounds"] = 0
    kind = "centralized" if args.central else "federated"
    values["run-name"] = for_kind(RunConfig.from_mapping(values), kind).resolved_run_name(kind, edit=True)
    RunConfig.from_mapping(values)
    return values


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Calibrate and write the mask file; 0 on success, 2 on bad input (nothing started), 1 if the run failed."""
    args = build_parser(prog).parse_args(argv)
    log_to_stderr()
    try:
        values = edit_overrides(args)
        # federated: what `flwr run APP` will run, APP's run config under these values
        config = RunConfig.from_mapping(values) if args.central else run_config_of(Path(args.app), values)
    except ConfigError as e:  # before importing torch: bad input is answered at once
        return fail(prog, str(e))
    from fedtalos.run.preflight import preflight
    from fedtalos.task.cifar import DatasetIntegrityError, DatasetNotFoundError
    from fedtalos.task.model import WeightsError

    try:
        preflight(config, "centralized" if args.central else "federated")
    except (ConfigError, DatasetNotFoundError, DatasetIntegrityError, WeightsError, RuntimeError) as e:
        return fail(prog, str(e))
    ok = _run_central(config, prog) if args.central else _run_federated(args, values, config, prog)
    if not ok:
        return 1
    from fedtalos.editing.mask_file import read

    written = read(config.mask_save_path)
    print(
        f"mask file: {config.mask_save_path}\n  {written.rule}, sparsity {written.sparsity:g} (fraction frozen), "
        f"density {100 * written.density():.2f} %, {written.calibrated}, hash {written.content_hash[:12]}"
    )
    return 0


def _run_central(config: RunConfig, prog: str) -> bool:
    from fedtalos.central.trainer import run_centralized
    from fedtalos.tracking.checkpoint import CheckpointError
    from fedtalos.tracking.rundir import RunConfigMismatch

    try:
        run_dir, _ = run_centralized(config)
    except (RunConfigMismatch, CheckpointError, ConfigError) as e:
        fail(prog, str(e))
        return False
    print(f"run directory: {run_dir.path}")
    return True


def _run_federated(args: argparse.Namespace, values: dict[str, Any], config: RunConfig, prog: str) -> bool:
    from fedtalos.launch import flwr_run as launcher

    print(f"run directory: {config.run_dir()}", flush=True)
    result = launcher.flwr_run(
        Path(args.app), values, launcher.default_federation_config(config, args.federation_config)
    )
    if not result.ok:
        print(
            f"{prog}: Flower run {result.run_id} ended as {result.status!r} ({result.details}); run the same command "
            "again to resume it.",
            file=sys.stderr,
        )
        return False
    return True
