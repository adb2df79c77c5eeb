"""One preflight for both kinds of run: the checks they share, and the federated-only ones (plateau, shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedtalos.config import ConfigError, RunConfig
from fedtalos.run.phases import Kind
from fedtalos.run.preflight import preflight
from fedtalos.task.model import DINO_VIT_S16
from tests.support.tiny import offline_tiny


@pytest.fixture
def values(fake_cifar_root: Path, tmp_path: Path) -> dict[str, Any]:
    return offline_tiny(fake_cifar_root, tmp_path / "runs")


def refused(values: dict[str, Any], kind: Kind) -> str:
    with pytest.raises(ConfigError) as e:
        preflight(RunConfig.from_mapping(values), kind)
    assert len(e.value.problems) == 1
    return e.value.problems[0]


def test_a_good_config_passes_for_both_kinds_and_returns_its_loaded_resources(values: dict[str, Any]):
    for kind in ("federated", "centralized"):
        resources = preflight(RunConfig.from_mapping(values), kind)
        assert resources.initial_weights is not None and len(resources.val_idx) > 0
    root = Path(values["output-root"])
    assert not root.exists() or not any(root.iterdir()), "no run directory"


def test_the_plateau_schedule_and_impossible_shards_refuse_only_federated_runs(values: dict[str, Any]):
    plateau = dict(values, **{"lr-schedule": "plateau"})
    assert refused(plateau, "federated").startswith("lr-schedule = 'plateau': depends on per-epoch validation")
    preflight(RunConfig.from_mapping(plateau), "centralized")
    shards = dict(values, **{"num-clients": 2000, "fraction-train": 0.01})
    assert "cannot give 2000 clients at least one sample" in refused(shards, "federated")
    preflight(RunConfig.from_mapping(shards), "centralized")  # a centralized run cuts no shards


@pytest.mark.parametrize("kind", ["federated", "centralized"])
def test_both_kinds_refuse_an_empty_validation_split_and_missing_weights(
    values: dict[str, Any], kind: Kind, tmp_path: Path
):
    assert "leaves no validation image" in refused(dict(values, **{"val-fraction": 1e-5}), kind)
    missing = dict(values, model=DINO_VIT_S16, **{"weights-path": str(tmp_path / "nope.pth")})
    problem = refused(missing, kind)
    assert problem.startswith("weights-path = ") and "does not exist" in problem
