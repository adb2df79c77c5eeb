"""The study's control arms (docs/study.md § Controls) are planned by the grid files: planning only, no training."""

from __future__ import annotations

from pathlib import Path

from fedtalos.study.grid import load_grid
from fedtalos.study.plan import plan

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
