"""Run identity: every run name and result hash stays what it was (run directories are found by name).

``identity_cases.json`` holds the result hashes and run names that commit f2b9034 computed for a few configs: federated
(``fedtalos run``), centralized (``fedtalos central``), ``fedtalos edit`` and sweep labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtalos.cli.edit import build_parser, edit_overrides
from fedtalos.config import RunConfig
from fedtalos.tracking.identity import name_part, partition_label, run_label, short_label, split_name

CASES = json.loads((Path(__file__).parent / "identity_cases.json").read_text())


@pytest.mark.parametrize("case", CASES["configs"], ids=lambda c: c["federated_name"])
def test_result_hashes_and_run_names_are_those_of_before(case: dict):
    config = RunConfig.from_mapping(case["values"])
    assert config.result_hash() == case["result_hash"]
    assert config.resolved_run_name() == config.resolved_run_name("federated") == case["federated_name"]
    assert config.resolved_run_name("centralized") == case["central_name"]
    assert partition_label(config.to_dict()) == case["partition_label"]


@pytest.mark.parametrize("case", CASES["edit"], ids=lambda c: c["run_name"])
def test_edit_run_names_are_those_of_before(case: dict, tmp_path: Path):
    out = str(tmp_path / "m.safetensors")
    args = build_parser().parse_args(["--out", out, "--output-root", "/runs", *case["args"]])
    values = edit_overrides(args)
    assert values["run-name"] == case["run_name"]
    assert RunConfig.from_mapping(values).result_hash() == case["result_hash"]


@pytest.mark.parametrize("case", CASES["labels"], ids=lambda c: c["label"])
def test_sweep_labels_are_those_of_before(case: dict):
    assert run_label(case["family"], case["point"]) == case["label"]


def test_name_parts_and_short_labels():
    assert name_part("classes-per-client", 5) == "nc5"
    assert name_part("local-steps", 16) == "J16"
    assert name_part("sparsity", 0.9) == "s0.9"
    assert name_part("calibration-rounds", 4) == "R4"
    assert name_part("mask-rule", "least-sensitive") == "least-sensitive"
    assert name_part("lr", 1e-5) == "lr1e-05"
    assert name_part("test-every-eval", True) == "test-every-evalon"
    assert name_part("mask-path", "~/masks/central-s0.9.safetensors") == "mask-central-s0.9"
    assert split_name("noniid-nc5-J8-seed12") == ("noniid-nc5-J8", 12)
    assert split_name("odd") == ("odd", None)
    assert (short_label("calibration-rounds"), short_label("mask-rule"), short_label("momentum")) == (
        "R'",
        "",
        "momentum",
    )
    assert partition_label({"partitioning": "noniid", "classes-per-client": 5}) == "Nc=5"
