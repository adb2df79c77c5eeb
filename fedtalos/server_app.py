"""fedtalos ServerApp: validate, open (or resume) the run directory, run the phases, write the summary."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtalos.config import ConfigError, RunConfig
from fedtalos.federation.server import FederatedServer
from fedtalos.task.resources import get_resources
from fedtalos.tracking.plots import plot_run
from fedtalos.tracking.rundir import open_run_dir, validate_output_root

app = ServerApp()


def _route_logs_to_flower() -> None:
    # Flower streams its own logger's output to `flwr run --stream` and `flwr log`: log through its handlers.
    ours, flower = logging.getLogger("fedtalos"), logging.getLogger("flwr")
    if not ours.handlers:
        for handler in flower.handlers:
            ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def preflight(config: RunConfig) -> None:
    """Everything that can fail on bad input, before a run directory exists: paths, data, weights."""
    if config.lr_schedule == "plateau":
        raise ConfigError(["lr-schedule = 'plateau': depends on per-epoch validation; use it with fedtalos-central"])
    validate_output_root(config)
    get_resources(config, pretrained=True)  # loads the data set and the DINO weights, or says why it cannot


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federated run described by the run config."""
    _route_logs_to_flower()
    config = RunConfig.from_mapping(context.run_config)
    preflight(config)
    run_dir = open_run_dir(config, "federated")
    logging.getLogger("fedtalos").info("run directory: %s%s", run_dir.path, " (resuming)" if run_dir.resumed else "")
    summary = FederatedServer(config, grid, run_dir).run()
    plot_run(run_dir.path)
    logging.getLogger("fedtalos").info("done: %s", summary["final"])
