"""Grid files → planned runs: exact expansion (names, seeds, scaled rounds), precedence, validation, dry run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fedtalos.cli.main import main
from fedtalos.config import ConfigError
from fedtalos.study.grid import load_grid, parse_grid, parse_set
from fedtalos.study.plan import (
    CONFLICT,
    DONE,
    NEW,
    PARTIAL,
    plan,
    plan_files,
    run_state,
    run_toml,
)
from fedtalos.study.runners import CentralizedRunner, FederatedRunner

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RULES = ["least-sensitive", "most-sensitive", "lowest-magnitude", "highest-magnitude", "random"]


def test_noniid_grid_expands_exactly(tmp_path: Path):
    runs = plan(load_grid(CONFIGS / "noniid.toml"), output_root=tmp_path)
    parts = ["nc1", "nc5", "nc10", "nc50", "iid"]
    expected = [
        name
        for s in (0, 1, 2)
        for name in [f"noniid-{p}-J{j}-seed{s}" for p in parts for j in (4, 8, 16)]
        + [f"noniid-{p}-J4-head-ridge-seed{s}" for p in parts]  # the brief's step 0: frozen ridge head, dense
        + [f"noniid-{p}-J{j}-m0-lr0.0226-seed{s}" for p in parts for j in (4, 8, 16)]  # the momentum control
    ]
    assert [r.name for r in runs] == expected, "seed-major, then the blocks in file order, first axis slowest"
    assert len({r.name for r in runs}) == len(runs) == 105
    for run in runs:
        c = run.config
        assert (c.num_clients, c.fraction_train, c.cohort_size) == (100, 0.1, 10)
        assert c.local_steps * c.num_server_rounds == 1600, "J × rounds constant"
        assert c.eval_every * c.local_steps == 80
        assert c.seed == run.seed and c.run_name == run.name and run.run_dir == tmp_path / run.name
        if "-iid-" in run.name:
            assert c.partitioning == "iid"
        else:
            assert c.partitioning == "noniid" and run.name.startswith(f"noniid-nc{c.classes_per_client}-")
        ridge = run.name.endswith(f"-head-ridge-seed{run.seed}")
        assert (c.head, c.mask_rule, c.freeze) == ("ridge" if ridge else "train", "none", "none")
        assert not ridge or c.local_steps == 4
    rounds = {r.config.local_steps: r.config.num_server_rounds for r in runs}
    assert rounds == {4: 400, 8: 200, 16: 100}
    assert {r.label for r in runs} == {f"noniid-{p}-J{j}" for p in parts for j in (4, 8, 16)} | {
        f"noniid-{p}-J4-head-ridge" for p in parts
    } | {f"noniid-{p}-J{j}-m0-lr0.0226" for p in parts for j in (4, 8, 16)}


def test_seeds_from_the_command_line(tmp_path: Path):
    grid = load_grid(CONFIGS / "fedavg_iid.toml")
    assert [r.name for r in plan(grid, seeds=[3, 7], output_root=tmp_path)] == ["fedavg-seed3", "fedavg-seed7"]
    assert [r.seed for r in plan(grid, seeds=range(2), output_root=tmp_path)] == [0, 1]


def test_every_experiment_of_the_brief_is_there(tmp_path: Path):
    runs = plan_files(sorted(CONFIGS.glob("*.toml")), output_root=tmp_path)
    by_family: dict[str, list] = {}
    for run in runs:
        by_family.setdefault(run.family, []).append(run)
    assert {f: len(v) for f, v in by_family.items()} == {
        "central": 18,
        "fedavg": 3,
        "fllr": 4,
        "maskagree": 30,
        "masks": 39,
        "noniid": 105,
        "robust": 18,
        "rules": 84,
        "sparse": 48,
    }
    assert all(len({r.seed for r in v}) == 3 for f, v in by_family.items() if f != "fllr"), "3 seeds everywhere"
    central = by_family["central"]
    assert all(r.kind == "centralized" for r in central)
    assert {r.config.lr_schedule for r in central} == {
        "constant",
        "cosine",
        "warmup-cosine",
        "step",
        "exponential",
        "plateau",
    }
    fedavg = by_family["fedavg"][0].config
    assert (fedavg.num_clients, fedavg.fraction_train, fedavg.local_steps, fedavg.partitioning) == (100, 0.1, 4, "iid")
    sparse = by_family["sparse"]
    assert {(r.config.sparsity, r.config.calibration_rounds) for r in sparse} == {
        (s, r) for s in (0.5, 0.8, 0.9, 0.95) for r in (1, 2, 4, 8)
    }
    assert all(r.config.mask_rule == "least-sensitive" and r.config.head == "ridge" for r in sparse)
    rules = by_family["rules"]
    settings = {(r.config.partitioning, r.config.classes_per_client, r.config.mask_rule) for r in rules}
    assert {s[2] for s in settings} == set(RULES)
    assert {(p, n if p == "noniid" else None) for p, n, _ in settings} == {("iid", None), ("noniid", 1), ("noniid", 5)}
    assert {r.config.sparsity for r in rules} == {0.9}, "rules compared at equal sparsity"
    masks = [r for r in by_family["masks"] if not r.edit]
    assert all(r.config.mask_path and r.config.mask_rule == "none" for r in masks), "fine-tuning with mask files"
    sources = {(r.config.partitioning, r.config.local_steps, Path(r.config.mask_path).name) for r in masks}
    assert {s for s in sources if s[0] == "iid"} == {
        ("iid", 4, f"{source}-s0.9-seed{seed}.safetensors") for source in ("central", "federated") for seed in (0, 1, 2)
    }, "central vs federated calibration, the same fine-tuning, one mask file per seed"
    noniid = {(r.config.classes_per_client, r.config.local_steps) for r in masks if r.config.partitioning == "noniid"}
    assert noniid == {(n, j) for n in (1, 5, 10) for j in (4, 8, 16)}, "one mask, several Nc × J settings"
    assert {Path(r.config.mask_path).name for r in masks if r.config.partitioning == "noniid"} == {
        f"federated-s0.9-seed{seed}.safetensors" for seed in (0, 1, 2)
    }
    agree = by_family["maskagree"]
    assert all(r.mask_agreement_clients == 20 for r in agree)
    assert {r.config.classes_per_client for r in agree if r.config.partitioning == "noniid"} == {1, 5, 10, 50}


def test_precedence_base_file_grid_set(tmp_path: Path):
    best = tmp_path / "best.toml"
    best.write_text('lr = 0.03\nepochs = 4\nlr-schedule = "step"\nlr-gamma = 0.5\nrun-name = "trial-7"\n')
    runs = plan_files(
        [CONFIGS / "central.toml"],
        seeds=[0],
        output_root=tmp_path / "runs",
        base_files=[best],
        sets={"label-smoothing": 0.1},
    )
    by_name = {r.name: r.config for r in runs}
    cosine, step, exponential = (
        by_name["central-cosine-seed0"],
        by_name["central-step-seed0"],
        by_name["central-exponential-seed0"],
    )
    assert cosine.lr == 0.03, "--base fills in what the grid leaves open"
    assert cosine.epochs == 20, "the grid's [base] wins over --base"
    assert cosine.lr_schedule == "cosine" and step.lr_schedule == "step", "axes win"
    assert (step.lr_gamma, exponential.lr_gamma, cosine.lr_gamma) == (0.1, 0.85, 0.5), "block constants win"
    assert cosine.label_smoothing == 0.1, "--set wins over everything"
    assert cosine.run_name == "central-cosine-seed0", "the sweep names its runs"


def test_centralized_runs_call_the_centralized_command(tmp_path: Path):
    runs = plan(load_grid(CONFIGS / "central.toml"), output_root=tmp_path)
    run = next(r for r in runs if r.label == "central-cosine")
    assert CentralizedRunner(python="/venv/bin/python").command(run) == [
        "/venv/bin/python",
        "-m",
        "fedtalos.cli",
        "central",
        "--config",
        str(tmp_path / "_sweeps" / "central" / "central-cosine-seed0.toml"),
    ]
    written = tomllib.loads(run_toml(run))
    assert written == run.overrides, "the file the command reads holds exactly the run's overrides, flat"
    assert written["run-name"] == "central-cosine-seed0" and written["output-root"] == str(tmp_path)
    assert written["epochs"] == 20 and written["lr-schedule"] == "cosine" and written["test-every-eval"] is True


def test_federated_command_is_flwr_run(tmp_path: Path):
    run = plan(load_grid(CONFIGS / "noniid.toml"), output_root=tmp_path, seeds=[0])[0]
    command = FederatedRunner(Path("/app"), "client-resources-num-cpus=1").command(run)
    assert command[1:4] == ["run", "/app", "--run-config"]
    assert command[4] == str(tmp_path / "_sweeps" / "noniid" / "noniid-nc1-J4-seed0.toml")
    assert command[5:] == ["--federation-config", "num-supernodes=100 client-resources-num-cpus=1", "--stream"]


def test_dry_run_lists_the_brief_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    root = tmp_path / "runs"
    code = main(["sweep", str(CONFIGS / "noniid.toml"), "--seeds", "3", "--dry-run", "--output-root", str(root)])
    out = capsys.readouterr().out
    assert code == 0
    assert "noniid (federated" in out and "35 configurations × 3 seeds [0, 1, 2] = 105 runs" in out
    for nc in (1, 5, 10, 50):
        for j, rounds in ((4, 400), (8, 200), (16, 100)):
            assert f"noniid-nc{nc}-J{j}-seed2" in out
            assert f"classes-per-client={nc} local-steps={j} num-server-rounds={rounds}" in out
    for part in ("nc1", "nc5", "nc10", "nc50", "iid"):
        assert f"noniid-{part}-J4-head-ridge-seed2" in out
    assert out.count(" flwr run ") + out.count("/flwr run ") == 105
    assert "105 runs planned; nothing was run" in out
    assert not root.exists(), "a dry run writes nothing"


def test_a_bad_grid_fails_before_any_run_with_every_problem(tmp_path: Path):
    grid = tmp_path / "bad.toml"
    grid.write_text(
        '[sweep]\nfamily = "bad"\n[base]\nlocal-step = 4\n[grid]\nsparsity = [0.5, 1.5]\nmask-rule = ["random"]\n'
    )
    with pytest.raises(ConfigError) as e:
        plan_files([grid], output_root=tmp_path)
    text = str(e.value)
    assert "(2 runs, e.g. bad-s0.5-random-seed0): unknown key 'local-step' (did you mean 'local-steps'?)" in text
    assert "(bad-s1.5-random-seed0): sparsity = 1.5: must be in [0.0, 1.0)" in text
    assert len(e.value.problems) == 2, "one line per problem, not per run"
    assert not (tmp_path / "_sweeps").exists()
    grid.write_text('[sweep]\nfamily = "bad"\n[grid]\nmask-rule = ["random"]\n')
    with pytest.raises(ConfigError, match="needs a frozen head"):
        plan_files([grid], output_root=tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sweep]\nkind = 'both'\n", "kind = 'both'"),
        ("[sweep]\nfamily = 'a-b'\n", "letters, digits and '_' only"),
        ("[base]\nseed = 3\n", "seed cannot be set here"),
        ("[grid]\nrun-name = ['x']\n", "run-name cannot be set here"),
        ("[grid]\nlocal-steps = []\n", "at least one value"),
        ("[extra]\n", "unknown section [extra]"),
        ("[scale]\nnum-server-rounds = 3\n", "per = "),
        ("[grid]\nlocal-steps = [3, 3]\n", "repeated values"),
    ],
)
def test_grid_structure_errors(text: str, message: str):
    with pytest.raises(ConfigError, match=None) as e:
        parse_grid(tomllib.loads(text), Path("g.toml"))
    assert message in str(e.value)


def test_scaled_values_must_be_whole(tmp_path: Path):
    grid = parse_grid(
        tomllib.loads(
            "[sweep]\nfamily='x'\n[grid]\nlocal-steps=[4, 8, 16]\n"
            "[scale]\nnum-server-rounds = { per = 'local-steps', product = 1000 }\n"
        )
    )
    with pytest.raises(ConfigError, match=r"1000 / local-steps = 62.5 at local-steps = 16: not a whole number"):
        plan(grid, output_root=tmp_path)


def test_same_name_different_settings_is_refused(tmp_path: Path):
    grid = parse_grid(
        tomllib.loads("[sweep]\nfamily='x'\n[[grid]]\nlr=0.1\nlocal-steps=[4]\n[[grid]]\nlr=0.2\nlocal-steps=[4]\n")
    )
    with pytest.raises(ConfigError, match="both named 'x-J4-seed0'"):
        plan(grid, output_root=tmp_path)


def test_parse_set_reads_toml_values():
    assert parse_set(["a=2", "b=0.5", "c=true", 'd="x"', "e=vit-tiny-test"]) == {
        "a": 2,
        "b": 0.5,
        "c": True,
        "d": "x",
        "e": "vit-tiny-test",
    }
    with pytest.raises(ConfigError):
        parse_set(["novalue"])


def test_run_state_on_disk(tmp_path: Path):
    import json

    run = plan(load_grid(CONFIGS / "fedavg_iid.toml"), output_root=tmp_path, seeds=[0])[0]
    assert run_state(run) == (NEW, "")
    run.run_dir.mkdir(parents=True)
    record = {"kind": "federated", "result_hash": run.config.result_hash()}
    (run.run_dir / "config.json").write_text(json.dumps(record))
    rows = [{"phase": "train", "round": r, "step": r} for r in range(1, 301)]
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_state(run) == (PARTIAL, "300/800 rounds")
    (run.run_dir / "summary.json").write_text("{}")
    assert run_state(run) == (PARTIAL, "finished at 300, extended to 800"), "a summary of a shorter run"
    rows = [{"phase": "train", "round": r, "step": r} for r in range(1, 801)]
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_state(run) == (DONE, "")
    (run.run_dir / "config.json").write_text(json.dumps({**record, "result_hash": "other"}))
    assert run_state(run)[0] == CONFLICT
    (run.run_dir / "config.json").write_text(json.dumps({**record, "kind": "centralized"}))
    assert run_state(run)[0] == CONFLICT, "the same configuration run centrally is another run"
    (run.run_dir / "config.json").write_text("{")
    assert run_state(run) == (PARTIAL, "unreadable config.json")
    (run.run_dir / "config.json").unlink()
    assert run_state(run) == (PARTIAL, "no config.json yet")


def test_expected_steps_count_every_federated_round_and_the_fine_tuning_epochs():
    from fedtalos.config import RunConfig
    from fedtalos.study.plan import expected_steps, phase_rounds

    editing = {"head": "probe", "probe-rounds": 3, "mask-rule": "least-sensitive", "calibration-rounds": 2}
    config = RunConfig.from_mapping({**editing, "num-server-rounds": 7, "epochs": 5})
    assert phase_rounds(config) == {"head": 3, "calibration": 2, "train": 7}
    assert expected_steps(config, "federated") == 12
    assert expected_steps(config, "centralized") == 5, "the centralized progress counts fine-tuning epochs"
    random = config.replace(mask_rule="random", head="ridge")
    assert phase_rounds(random) == {"head": 1, "calibration": 1, "train": 7}


def test_a_federated_only_setting_does_not_change_a_centralized_run(tmp_path: Path):
    """``--set local-steps=8`` over the centralized family plans the same runs (a centralized run never reads it)."""
    plain = plan_files([CONFIGS / "central.toml"], output_root=tmp_path)
    with_federated = plan_files([CONFIGS / "central.toml"], output_root=tmp_path, sets={"local-steps": 8})
    assert [r.config.result_hash() for r in with_federated] == [r.config.result_hash() for r in plain]
    assert [r.config.run_dir("centralized") for r in with_federated] == [r.config.run_dir("centralized") for r in plain]
