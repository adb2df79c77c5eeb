"""Helpers for tests that start real Flower processes: a private simulation SuperLink, cleaned up afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedtalos.testing.processes import private_simulation_superlink


@contextmanager
def isolated_flower(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for `flwr` with its own FLWR_HOME and SuperLink (never the shared one on port 39091)."""
    with private_simulation_superlink(tmp_path / "flwr-home") as env:
        yield {**env, "HF_HUB_OFFLINE": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
