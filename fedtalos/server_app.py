"""fedtalos ServerApp: validate, open (or resume) the run directory, run the phases, write the summary."""

from __future__ import annotations

import logging
import time

import psutil
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtalos.config import ConfigError, RunConfig
from fedtalos.editing.scoring import describe_model, model_record
from fedtalos.federation.server import FederatedServer
from fedtalos.federation.transport import in_simulation
from fedtalos.launch.flwr_run import simulation_problems
from fedtalos.run.preflight import preflight
from fedtalos.task.device import environment
from fedtalos.tracking.log_setup import log_through_flower, run_log
from fedtalos.tracking.rundir import already_finished_message, finished_summary, open_run_dir

app = ServerApp()


def _process_started() -> dict[str, float]:
    """``{"process_started": time.time() of this process's start}``, or ``{}`` where the system does not tell."""
    try:
        return {"process_started": psutil.Process().create_time()}
    except psutil.Error:
        return {}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federated run described by the run config."""
    started = time.time()
    log_through_flower()
    config = RunConfig.from_mapping(context.run_config)
    if in_simulation(grid) and (problems := simulation_problems(config)):
        raise ConfigError(problems)
    if finished_summary(config, "federated") is not None:  # before the preflight: nothing to build or check
        logging.getLogger("fedtalos").info("%s", already_finished_message(config.run_dir("federated")))
        return
    resources = preflight(config, "federated")  # bad input fails here, before a run directory exists
    model = model_record(config, resources.model)
    environment_record = environment(resources.device, resources.dtype)
    run_dir = open_run_dir(config, "federated", environment=environment_record, model=model)
    with run_dir, run_log(run_dir.path):
        log = logging.getLogger("fedtalos")
        log.info("run directory: %s%s", run_dir.path, " (resuming)" if run_dir.resumed else "")
        log.info("%s", describe_model(model))
        server = FederatedServer(config, grid, run_dir)
        server.timeline.update(_process_started(), main_started=started)
        summary = server.run()
    logging.getLogger("fedtalos").info("done: %s", summary["final"])
