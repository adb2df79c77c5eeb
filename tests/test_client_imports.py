"""A deployed ClientApp process imports only what a client needs (each message starts one: docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys

# Libraries of the server, the study and the plots: a client must not pay their import on every message.
NOT_FOR_CLIENTS = ("matplotlib", "optuna", "pandas", "wandb", "scipy", "sklearn", "timm", "torchvision", "ray")


def test_importing_the_client_app_imports_no_server_study_or_plot_library():
    code = f"import sys, fedtalos.client_app; print(','.join(m for m in {NOT_FOR_CLIENTS!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
