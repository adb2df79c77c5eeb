"""The study's control arms (docs/study.md § Controls) are planned by the grid files: planning only, no training."""

from __future__ import annotations

import io
from pathlib import Path

from fedtalos.cli.main import main
from fedtalos.study.grid import load_grid
from fedtalos.study.plan import plan
from fedtalos.study.runners import RunOutcome
from fedtalos.study.sweep import Sweep
from tests.support.fakeruns import train_rows, write_run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _round_movement(local_steps: int, momentum: float) -> float:
    """lr-units one round of J steps of SGD with a fresh momentum buffer moves under a constant gradient."""
    if momentum == 0.0:
        return float(local_steps)
    return sum((1 - momentum**k) / (1 - momentum) for k in range(1, local_steps + 1))


def _step_mass(run) -> float:
    c = run.config
    return c.lr * c.num_server_rounds * _round_movement(c.local_steps, c.momentum)


def test_the_local_momentum_control_holds_the_step_mass_fixed_across_j(tmp_path: Path):
    runs = plan(load_grid(CONFIGS / "noniid.toml"), output_root=tmp_path, seeds=[0])
    main = [r for r in runs if r.config.momentum == 0.9 and r.config.head == "train"]
    control = [r for r in runs if r.config.momentum == 0.0]
    cells = {(r.config.partitioning, r.config.classes_per_client, r.config.local_steps) for r in main}
    assert {(r.config.partitioning, r.config.classes_per_client, r.config.local_steps) for r in control} == cells
    masses = {r.config.local_steps: _step_mass(r) for r in control}
    assert max(masses.values()) / min(masses.values()) < 1 + 1e-9, "momentum 0: the same step mass at every J"
    momentum_masses = {r.config.local_steps: _step_mass(r) for r in main}
    assert momentum_masses[16] / momentum_masses[4] > 2.3, "the confound the control removes"
    assert abs(masses[4] / momentum_masses[4] - 1) < 0.01, "the control's step mass is the J = 4 momentum arm's"
    assert all("-m0-" in r.name for r in control) and not any("-m0-" in r.name for r in main)


def test_the_data_free_rules_have_per_tensor_arms_beside_the_global_ones(tmp_path: Path):
    runs = plan(load_grid(CONFIGS / "rules.toml"), output_root=tmp_path, seeds=[0])
    arms = {(r.config.partitioning, r.config.classes_per_client, r.config.mask_rule, r.config.mask_scope) for r in runs}
    partitions = {(r.config.partitioning, r.config.classes_per_client) for r in runs}
    for partitioning, nc in partitions:
        for rule in ("lowest-magnitude", "highest-magnitude", "random"):
            assert {(partitioning, nc, rule, scope) for scope in ("global", "local")} <= arms
        for rule in ("least-sensitive", "most-sensitive"):  # TaLoS's own rule: one global threshold
            assert (partitioning, nc, rule, "local") not in arms
    local = [r for r in runs if r.config.mask_scope == "local"]
    assert len(local) == 9 and all(r.name.endswith("-local-seed0") for r in local)
    assert all(r.config.sparsity == 0.9 and r.config.calibration_rounds == 4 for r in local), "otherwise the same"


def test_a_non_iid_calibration_arm_covers_every_class_with_about_the_same_samples(tmp_path: Path):
    runs = plan(load_grid(CONFIGS / "rules.toml"), output_root=tmp_path, seeds=[0])
    default = [r for r in runs if r.config.partitioning == "noniid" and r.config.calibration_fraction == 0.1]
    wide = [r for r in runs if r.config.calibration_fraction == 1.0]
    key = lambda r: (r.config.classes_per_client, r.config.mask_rule)  # noqa: E731
    assert {key(r) for r in wide} == {(nc, rule) for nc in (1, 5) for rule in ("least-sensitive", "most-sensitive")}
    assert {key(r) for r in wide} <= {key(r) for r in default}, "each beside its default-cohort run"
    for run in wide:
        c = run.config
        assert c.calibration_cohort_size == c.num_clients, "every client, so every class, scores"
        per_round = c.calibration_cohort_size * c.fisher_samples
        reference = default[0].config.calibration_cohort_size * default[0].config.fisher_samples
        assert abs(per_round / reference - 1) < 0.1, "about the default's samples per round"
        assert not c.calibration_redraw, "the same data every round, as TaLoS"


def test_the_masks_family_writes_one_mask_file_per_seed_before_the_runs_that_use_it(tmp_path: Path):
    runs = plan(load_grid(CONFIGS / "masks.toml"), output_root=tmp_path)
    by_name = {r.name: r for r in runs}
    edits = [r for r in runs if r.edit]
    assert {(r.edit, r.kind, r.seed) for r in edits} == {
        (name, kind, seed)
        for name, kind in (("central-s0.9", "centralized"), ("federated-s0.9", "federated"))
        for seed in (0, 1, 2)
    }
    for edit in edits:
        c = edit.config
        assert c.mask_save_path == str(tmp_path / "_masks" / "masks" / f"{edit.edit}-seed{edit.seed}.safetensors")
        assert (c.head, c.mask_rule, c.sparsity, c.calibration_rounds) == ("ridge", "least-sensitive", 0.9, 4)
        assert (c.epochs if edit.kind == "centralized" else c.num_server_rounds) == 0, "no fine-tuning"
        assert c.fisher_samples * c.calibration_cohort_size == 640, "640 samples per round, centrally and federatedly"
    for i, run in enumerate(runs):
        if run.edit:
            continue
        (need,) = run.needs
        edit = by_name[need]
        assert edit.seed == run.seed and run.config.mask_path == edit.config.mask_save_path, "its own seed's file"
        assert runs.index(edit) < i, "planned before the runs that use it"
        assert run.config.eval_every * run.config.local_steps == 80, "validation every 80 client steps"
    assert "masks-mask-central-s0.9-seed1" in by_name and "masks-nc5-J8-mask-federated-s0.9-seed2" in by_name


def test_a_sweep_runs_the_edit_steps_first_and_a_failed_one_fails_its_runs(tmp_path: Path):
    grid = tmp_path / "g.toml"
    grid.write_text(
        '[sweep]\nfamily = "m"\nseeds = [0, 1]\n[base]\nnum-clients = 4\nfraction-train = 0.5\n'
        'num-server-rounds = 2\nlr-schedule = "constant"\n[[edit]]\nname = "a"\nsparsity = 0.5\n'
        '[grid]\nlocal-steps = [1, 2]\nmask-from = "a"\n'
    )

    class Runner:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def command(self, run) -> list[str]:
            return ["stand-in", run.name]

        def __call__(self, run, log) -> RunOutcome:
            self.calls.append(run.name)
            if run.name == "m-edit-a-seed1":
                return RunOutcome(False, "calibration failed")
            if run.edit:
                Path(run.config.mask_save_path).parent.mkdir(parents=True, exist_ok=True)
                Path(run.config.mask_save_path).write_bytes(b"mask")
            else:
                assert Path(run.config.mask_path).is_file(), f"{run.name} started before its mask file existed"
            write_run(run.overrides, train_rows(run.total_steps, 0.5), kind=run.kind)
            return RunOutcome(True, "ok")

    runs = plan(load_grid(grid), output_root=tmp_path / "runs")
    runner = Runner()
    report = Sweep(runs, {"federated": runner}, out=io.StringIO(), poll_s=0.05).run()
    assert runner.calls == ["m-edit-a-seed0", "m-J1-seed0", "m-J2-seed0", "m-edit-a-seed1"]
    assert set(report.failed) == {"m-edit-a-seed1", "m-J1-seed1", "m-J2-seed1"}
    assert "needs m-edit-a-seed1, which failed" in report.failed["m-J1-seed1"]


def test_a_family_that_needs_files_it_does_not_make_is_refused_at_dry_run(tmp_path: Path, capsys):
    grid = tmp_path / "uses.toml"
    missing = tmp_path / "masks" / "nowhere.safetensors"
    grid.write_text(f'[sweep]\nfamily = "uses"\n[grid]\nmask-path = ["{missing}"]\n')
    root = tmp_path / "runs"
    assert main(["sweep", str(grid), "--dry-run", "--output-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"mask-path = '{missing}': no such file" in err and f"fedtalos edit --out {missing}" in err
    best = tmp_path / "runs" / "search-central" / "best.toml"
    central = str(CONFIGS / "central.toml")
    assert main(["sweep", central, "--dry-run", "--output-root", str(root), "--base", str(best)]) == 2
    err = capsys.readouterr().err
    assert f"--base {best}: no such file" in err
    assert f"fedtalos search configs/search/central.toml --trials 20 --output-root {tmp_path / 'runs'}" in err
    missing.parent.mkdir()
    missing.write_bytes(b"a mask file")  # there now: planned (the run's preflight reads it)
    assert main(["sweep", str(grid), "--dry-run", "--output-root", str(root)]) == 0


def test_the_federated_lr_scan_is_small_on_validation_and_holds_the_families_lr(tmp_path: Path):
    runs = plan(load_grid(CONFIGS / "fl_lr.toml"), output_root=tmp_path)
    family_lr = plan(load_grid(CONFIGS / "fedavg_iid.toml"), output_root=tmp_path, seeds=[0])[0].config.lr
    assert family_lr in {r.config.lr for r in runs} and len({r.config.lr for r in runs}) == len(runs) == 4
    for run in runs:
        c = run.config
        assert (c.partitioning, c.local_steps, c.num_clients, c.fraction_train) == ("iid", 4, 100, 0.1)
        assert c.num_server_rounds < 400 and not c.test_every_eval, "reduced rounds; the test split only at the end"
