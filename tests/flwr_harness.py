"""Helpers for tests that start real Flower processes: an isolated FLWR_HOME, and cleanup of what they leave."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedtalos.launch import kill_process_trees, stop_local_superlink


@contextmanager
def isolated_flower(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for `flwr` with its own FLWR_HOME; the local SuperLink it starts is stopped afterwards."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }
    kill_process_trees("--port 39091")  # a SuperLink left by an earlier, crashed test would be reused
    try:
        yield env
    finally:
        stop_local_superlink(home)
