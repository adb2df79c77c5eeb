"""The run config: defaults match pyproject, every problem reported at once, the result hash."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from fedtalos.config import ConfigError, RunConfig, read_overrides, read_toml

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_run_config_equals_the_defaults():
    flwr_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert flwr_config == RunConfig.defaults(), "regenerate the section with `python -m fedtalos.config`"


def test_defaults_are_valid_and_round_trip():
    config = RunConfig.from_mapping({})
    assert config == RunConfig.from_mapping(config.to_dict())
    assert config.cohort_size == 10


def test_all_problems_are_listed_in_one_error():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_mapping(
            {"fraction-train": 1.5, "local-steps": 0, "lr": -0.1, "strategy": "fedsgd", "learning-rate": 0.1}
        )
    problems = e.value.problems
    assert len(problems) == 5
    text = str(e.value)
    for fragment in ("fraction-train = 1.5", "local-steps = 0", "lr = -0.1", "'fedsgd'", "unknown key 'learning-rate'"):
        assert fragment in text
    assert "did you mean 'lr'" not in text  # not a close match
    assert "fedavg" in text, "the allowed values are named"


def test_wrong_types_name_the_expected_type():
    with pytest.raises(ConfigError, match=r"local-steps = '4': must be an integer, got a string"):
        RunConfig.from_mapping({"local-steps": "4"})
    with pytest.raises(ConfigError, match="resume = 1: must be true/false"):
        RunConfig.from_mapping({"resume": 1})
    assert RunConfig.from_mapping({"lr": 1}).lr == 1.0, "an integer is accepted where a number is expected"


def test_close_misspellings_get_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'local-steps'"):
        RunConfig.from_mapping({"local-step": 4})


def test_relative_paths_are_refused():
    with pytest.raises(ConfigError, match="output-root = 'runs': must be an absolute path"):
        RunConfig.from_mapping({"output-root": "runs"})
    assert RunConfig.from_mapping({"output-root": "~/x"}).resolved_output_root() == Path("~/x").expanduser()


def test_combinations_are_checked():
    with pytest.raises(ConfigError, match="K·Nc = 90 < 100"):
        RunConfig.from_mapping({"partitioning": "noniid", "num-clients": 9, "classes-per-client": 10})
    with pytest.raises(ConfigError, match="needs a frozen head"):
        RunConfig.from_mapping({"mask-rule": "least-sensitive"})
    with pytest.raises(ConfigError, match="larger than the 10 clients"):
        RunConfig.from_mapping({"min-train-clients": 11})
    with pytest.raises(ConfigError, match="nothing would be fine-tuned"):
        RunConfig.from_mapping({"freeze": "backbone", "head": "ridge"})


def test_result_hash_ignores_bookkeeping_keys_only():
    base = RunConfig.from_mapping({})
    assert base.replace(eval_every=3, run_name="x", checkpoint_keep=5).result_hash() == base.result_hash()
    assert base.replace(num_server_rounds=7).result_hash() != base.result_hash(), "cosine horizon"
    constant = base.replace(lr_schedule="constant")
    assert constant.replace(num_server_rounds=7).result_hash() == constant.result_hash(), "a run may be extended"
    assert base.replace(lr=0.02).result_hash() != base.result_hash()
    assert base.replace(seed=1).result_hash() != base.result_hash()


def test_each_keys_facts_are_declared_with_it():
    facts = RunConfig.facts()
    assert list(facts) == RunConfig.keys()
    assert RunConfig.path_keys() == ["output-root", "dataset-root", "weights-path", "mask-path", "mask-save-path"]
    assert all(facts[k].check is not None for k in RunConfig.path_keys()), "a path key is checked as one"
    outside_the_result = {k for k, f in facts.items() if not f.result}
    assert {"run-name", "eval-every", "deterministic", "num-server-rounds", "epochs"} <= outside_the_result
    assert {"seed", "lr", "mask-path", "weights-path"}.isdisjoint(outside_the_result)
    assert {k for k, f in facts.items() if f.length} == {"num-server-rounds", "epochs"}
    assert {k for k, f in facts.items() if f.scope == "centralized"} >= {"epochs", "checkpoint-every-steps", "freeze"}
    assert {k for k, f in facts.items() if f.scope == "federated"} >= {"num-server-rounds", "strategy", "transport"}
    assert RunConfig.defaults_in("centralized") == {"eval-every": 1}
    assert RunConfig.defaults_in("edit") == {"head": "ridge", "mask-rule": "least-sensitive"}
    assert all("\n" not in f.help for f in facts.values()), "help strings are one line"


def test_a_run_length_may_be_0_only_in_a_run_that_saves_its_mask():
    for key in ("epochs", "num-server-rounds"):
        with pytest.raises(ConfigError, match=f"{key} = 0: must be at least 1 .*mask-save-path"):
            RunConfig.from_mapping({key: 0})
        editing = {"head": "ridge", "mask-rule": "random", "mask-save-path": "/m.safetensors", key: 0}
        assert getattr(RunConfig.from_mapping(editing), key.replace("-", "_")) == 0


def test_choice_lists_are_the_registries_names():
    from fedtalos.config import MASK_RULES
    from fedtalos.editing.masks import RULES
    from fedtalos.task.lr_schedule import SCHEDULES

    assert ("none", *RULES) == MASK_RULES
    with pytest.raises(ConfigError) as e:
        RunConfig.from_mapping({"lr-schedule": "linear"})
    assert e.value.problems == [f"lr-schedule = 'linear': must be one of {', '.join(map(repr, SCHEDULES))}"]


def test_default_run_name_is_stable_and_descriptive():
    config = RunConfig.from_mapping({"partitioning": "noniid", "classes-per-client": 5, "local-steps": 8})
    name = config.resolved_run_name()
    assert name == RunConfig.from_mapping(config.to_dict()).resolved_run_name()
    assert name.startswith("fedavg-nc5-J8-seed0-")


def test_read_toml_names_the_file_it_cannot_read_or_parse(tmp_path: Path):
    with pytest.raises(ConfigError) as missing:
        read_toml(tmp_path / "absent.toml", "--config 'absent.toml'")
    assert missing.value.problems == ["--config 'absent.toml': cannot read it (No such file or directory)"]
    broken = tmp_path / "broken.toml"
    broken.write_text("lr = = 0.1\n")
    with pytest.raises(ConfigError, match=r"grid\.toml: not valid TOML \(.*line 1"):
        read_toml(broken, "grid.toml")
    fine = tmp_path / "fine.toml"
    fine.write_text('lr = 0.1\n[grid]\nseeds = [1, 2]\nmodel = "x"\n')
    assert read_toml(fine, "fine") == {"lr": 0.1, "grid": {"seeds": [1, 2], "model": "x"}}


def test_read_overrides_accepts_flat_keys_and_refuses_tables(tmp_path: Path):
    flat = tmp_path / "best.toml"
    flat.write_text('lr = 0.03\nlr-schedule = "step"\n')
    assert read_overrides(flat, "--base best.toml") == {"lr": 0.03, "lr-schedule": "step"}
    nested = tmp_path / "nested.toml"
    nested.write_text("lr = 0.03\n[grid]\nx = 1\n[base]\ny = 2\n")
    with pytest.raises(ConfigError) as e:
        read_overrides(nested, "--base nested.toml")
    assert e.value.problems == [
        "--base nested.toml: [grid] is a table; write run-config keys as `key = value` lines",
        "--base nested.toml: [base] is a table; write run-config keys as `key = value` lines",
    ]


def test_an_unset_server_lr_is_the_strategys_default_and_hashes_as_that_value():
    for strategy, lr in {"fedavgm": 1.0, "fedadam": 0.1, "fedyogi": 0.01, "fedadagrad": 0.1, "fedavg": 1.0}.items():
        unset = RunConfig.from_mapping({"strategy": strategy})
        explicit = RunConfig.from_mapping({"strategy": strategy, "server-lr": lr})
        assert unset.resolved_server_lr == explicit.resolved_server_lr == lr
        assert unset.result_hash() == explicit.result_hash(), "they compute the same thing"
    # unset, fedavg, fedprox and fedavgm compute with 1.0 (one hash with 1.0 set); the adaptive ones with their own
    for strategy in ("fedavg", "fedprox", "fedavgm"):
        old = RunConfig.from_mapping({"strategy": strategy, "server-lr": 1.0})
        assert RunConfig.from_mapping({"strategy": strategy}).result_hash() == old.result_hash()
    old_adam = RunConfig.from_mapping({"strategy": "fedadam", "server-lr": 1.0})
    assert RunConfig.from_mapping({"strategy": "fedadam"}).result_hash() != old_adam.result_hash()
    assert "fedadam 0.1" in RunConfig.help()["server-lr"]
    with pytest.raises(ConfigError, match="server-lr"):
        RunConfig.from_mapping({"server-lr": -0.1})


def test_mask_file_keys_are_checked_together():
    edit = {"head": "ridge", "mask-rule": "least-sensitive", "mask-save-path": "/tmp/m.safetensors"}
    assert RunConfig.from_mapping({**edit, "epochs": 0, "num-server-rounds": 0}).mask_save_path == "/tmp/m.safetensors"
    with pytest.raises(ConfigError) as e:
        RunConfig.from_mapping({"epochs": 0, "num-server-rounds": 0})
    assert [p.split(":")[0] for p in e.value.problems] == ["epochs = 0", "num-server-rounds = 0"]
    cases = {
        "mask-path with mask-rule": ({**edit, "mask-save-path": "", "mask-path": "/m"}, "leave mask-rule and head"),
        "mask-path, frozen backbone": ({"mask-path": "/m", "freeze": "backbone"}, "nothing would train"),
        "saving without calibrating": ({"mask-save-path": "/m"}, "needs a run that calibrates"),
        "relative mask-path": ({"mask-path": "masks/m.safetensors"}, "must be an absolute path"),
    }
    for values, message in cases.values():
        with pytest.raises(ConfigError, match=message):
            RunConfig.from_mapping(values)
    config = RunConfig.from_mapping({"mask-path": "/m"})
    assert config.head_frozen and not config.editing, "the file brings the frozen head; the run calibrates nothing"
