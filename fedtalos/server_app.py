"""fedtalos ServerApp: validate, open (or resume) the run directory, run the phases, write the summary."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtalos.config import ConfigError, RunConfig
from fedtalos.editing.scoring import describe_model, model_record
from fedtalos.federation.server import FederatedServer
from fedtalos.federation.transport import in_simulation
from fedtalos.launch.flwr_run import simulation_problems
from fedtalos.task.device import environment
from fedtalos.task.lr_schedule import STATELESS
from fedtalos.task.model import ModelError, WeightsError
from fedtalos.task.resources import get_resources
from fedtalos.tracking.log_setup import log_through_flower
from fedtalos.tracking.mask_artifact import check_mask_files
from fedtalos.tracking.plots import plot_run
from fedtalos.tracking.rundir import open_run_dir, validate_output_root

app = ServerApp()


def preflight(config: RunConfig) -> None:
    """Everything that can fail on bad input, before a run directory exists: paths, data, weights, shards."""
    if config.lr_schedule == "plateau":
        raise ConfigError(
            [
                "lr-schedule = 'plateau': depends on per-epoch validation; use it with fedtalos central "
                f"(federated runs allow {', '.join(repr(s) for s in STATELESS)})"
            ]
        )
    validate_output_root(config)
    try:
        resources = get_resources(config, pretrained=True)  # loads the data set and the DINO weights
    except WeightsError as e:
        raise ConfigError([f"weights-path = {config.weights_path!r}: {e}"]) from None
    except ModelError as e:
        raise ConfigError([f"model = {config.model!r}: {e}"]) from None
    assert resources.initial_weights is not None, "get_resources(..., pretrained=True) keeps them"
    check_mask_files(config, resources.initial_weights)  # mask-path fits this model and its starting weights
    # Values that are valid on their own but do not fit the data set would otherwise only fail in the clients
    # (every node refusing to identify itself) or at the first evaluation, after the run directory exists.
    train, val = len(resources.train_idx), len(resources.val_idx)
    if val == 0:
        raise ConfigError(
            [
                f"val-fraction = {config.val_fraction}: leaves no validation image out of {train} training images; "
                f"must be at least {1 / train:.2g}"
            ]
        )
    try:
        _ = resources.partitions  # the K shards, as every client will cut them
    except ValueError as e:
        raise ConfigError(
            [
                f"num-clients = {config.num_clients}, partitioning = {config.partitioning!r}, classes-per-client = "
                f"{config.classes_per_client}: cannot shard the {train} training images ({e}); lower num-clients"
                + (" or classes-per-client" if config.partitioning == "noniid" else "")
            ]
        ) from None


def _process_started() -> dict[str, float]:
    """``{"process_started": time.time() of this process's start}`` where /proc tells it (Linux), else ``{}``."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        boot = next(float(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime"))
        return {"process_started": boot + ticks / os.sysconf("SC_CLK_TCK")}
    except (OSError, ValueError, IndexError, StopIteration):
        return {}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federated run described by the run config."""
    started = time.time()
    log_through_flower()
    config = RunConfig.from_mapping(context.run_config)
    if in_simulation(grid) and (problems := simulation_problems(config)):
        raise ConfigError(problems)
    preflight(config)
    resources = get_resources(config, pretrained=True)  # preflight's, cached
    model = model_record(config, resources.model)
    environment_record = environment(resources.device, resources.dtype)
    with open_run_dir(config, "federated", environment=environment_record, model=model) as run_dir:
        log = logging.getLogger("fedtalos")
        log.info("run directory: %s%s", run_dir.path, " (resuming)" if run_dir.resumed else "")
        log.info("%s", describe_model(model))
        server = FederatedServer(config, grid, run_dir)
        server.timeline.update(_process_started(), main_started=started)
        summary = server.run()
        plot_run(run_dir.path)
    logging.getLogger("fedtalos").info("done: %s", summary["final"])
