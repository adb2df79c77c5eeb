"""Run-config keys as options (``fedtalos central``, ``fedtalos search``): every key, types, file then options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fedtalos.cli.options import add_run_config_options, overrides_from_args
from fedtalos.cli.settings import absolute_paths
from fedtalos.config import ConfigError, RunConfig


def options_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_run_config_options(parser)
    return parser


def parse(argv: list[str]) -> dict:
    return overrides_from_args(options_parser().parse_args(argv))


def test_every_run_config_key_is_an_option():
    parser = options_parser()
    options = {s for a in parser._actions for s in a.option_strings}
    for key in RunConfig.keys():  # noqa: SIM118 (a classmethod, not a dict)
        assert f"--{key}" in options
        if isinstance(RunConfig.defaults()[key], bool):
            assert f"--no-{key}" in options


def test_federated_only_keys_are_grouped_apart_and_the_centralized_defaults_shown():
    parser = options_parser()
    groups = {g.title: {a.dest.replace("_", "-") for a in g._group_actions} for g in parser._action_groups}
    federated = groups["federated-only keys (accepted, not used by the centralized run)"]
    assert federated == {k for k, f in RunConfig.facts().items() if f.scope == "federated"}
    eval_every = next(a for a in parser._actions if a.dest == "eval_every")
    assert eval_every.help.endswith("(default: 1)")


def test_config_file_then_options_with_types_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.toml").write_text('lr = 0.05\nepochs = 4\nlr-schedule = "step"\noutput-root = "from-file"\n')
    values = parse(["--config", "base.toml", "--epochs", "7", "--no-progress", "--dataset-root", "data/cifar"])
    assert values["lr"] == 0.05 and values["lr-schedule"] == "step", "from the file"
    assert values["epochs"] == 7 and values["progress"] is False, "options override the file"
    assert values["eval-every"] == 1, "the centralized default"
    assert values["output-root"] == str(tmp_path / "from-file") and values["dataset-root"] == str(
        tmp_path / "data" / "cifar"
    ), "relative paths resolved against the current directory"
    assert parse(["--eval-every", "3"])["eval-every"] == 3
    assert RunConfig.from_mapping(values).epochs == 7


def test_wrong_types_and_bad_values_are_reported_together():
    with pytest.raises(ConfigError) as e:
        parse(["--seed", "1.5", "--lr", "fast", "--epochs", "0"])
    assert len(e.value.problems) == 3
    assert {"--seed '1.5': must be an integer, got 1.5", "--lr 'fast': must be a number"} <= set(e.value.problems)


def test_only_relative_paths_are_resolved(tmp_path: Path):
    values = {"output-root": "runs", "dataset-root": "/data/cifar", "weights-path": "", "lr": "0.1"}
    resolved = absolute_paths(values, cwd=tmp_path)
    assert resolved == {**values, "output-root": str(tmp_path / "runs")}
