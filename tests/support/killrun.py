"""Run the whole ServerApp against the in-process grid in a child process that can be SIGKILLed anywhere.

A *zygote* (``python -m tests.support.killrun``) imports torch, timm and flwr once, then for every JSON line
``{"config": PATH, "kill_at": POINT or null}`` on stdin forks a child that runs the server and answers with one
JSON line ``{"returncode": ...}`` (negative = killed by that signal), like ``subprocess`` does. The zygote runs
no torch computation itself, so forking it is safe, and each run skips ~5 s of imports.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib.pyplot  # noqa: F401  (heavy imports happen once, before forking)
import timm  # noqa: F401
import torch
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import fedtalos.client_app  # noqa: F401  (imported before forking)
from fedtalos.server_app import main
from tests.support.fakegrid import FakeGrid


def run(config_path: str) -> None:
    torch.set_num_threads(1)  # the same thread count in every process: CPU results are then bit-reproducible
    run_config = json.loads(Path(config_path).read_text())
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    grid = FakeGrid(run_config["num-clients"], run_config)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: run, then leave without running the zygote's cleanup
            os.environ.pop("FEDTALOS_KILL_AT", None)
            if request.get("kill_at"):
                os.environ["FEDTALOS_KILL_AT"] = request["kill_at"]
            code = 0
            try:
                sys.stdout = sys.stderr
                run(request["config"])
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code}), flush=True)


if __name__ == "__main__":
    serve()
