"""A deployed ClientApp process (each message starts one: docs/performance.md) imports only what a client needs,
and its model, built without initialisation, is never used before weights arrive."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Libraries of the server, the study and the plots: a client must not pay their import on every message.
NOT_FOR_CLIENTS = ("matplotlib", "optuna", "pandas", "wandb", "scipy", "sklearn", "timm", "torchvision", "ray")


def test_importing_the_client_app_imports_no_server_study_or_plot_library():
    code = f"import sys, fedtalos.client_app; print(','.join(m for m in {NOT_FOR_CLIENTS!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.usefixtures("flower_task_identity")
def test_a_new_client_refuses_a_message_without_the_global_weights(fake_cifar_root):
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fedtalos import client_app
    from fedtalos.federation import protocol as P
    from tests.support.tiny import offline_tiny

    run_config = offline_tiny(fake_cifar_root, values={"num-clients": 2, "seed": 23})  # its own fresh resources
    context = Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config=run_config,
    )
    message = Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=5, message_type="evaluate")
    with pytest.raises(RuntimeError, match="without the global weights"):
        client_app._setup(message, context)  # its model holds no weights yet: computing on it would be garbage
