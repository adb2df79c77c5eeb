"""A run that two families plan is run once and read by both: ``fedtalos summarize`` puts it in each family's
configuration, with that family's label; the ``[[edit]]`` steps that write a family's mask files are not results."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedtalos.study.plan import plan_files, write_manifest
from fedtalos.study.tables import summarize
from tests.support.fakeruns import train_rows, write_run

BASE = (
    'num-clients = 4\nfraction-train = 0.5\nnum-server-rounds = 3\nlr-schedule = "constant"\nmodel = "vit-tiny-test"\n'
)
# final test accuracy of a run directory by its J and lr, and its seed
ACC = {(1, 0.01): 0.30, (2, 0.01): 0.50, (2, 0.1): 0.20}


def _grids(tmp_path: Path) -> list[Path]:
    """Two families; both plan J = 2 at lr 0.01 (``wide-J2`` and ``lrs-lr0.01``); a third writes a mask file with
    an ``[[edit]]`` step and fine-tunes under it."""
    wide = tmp_path / "wide.toml"
    wide.write_text(f'[sweep]\nfamily = "wide"\nseeds = [0, 1]\n[base]\n{BASE}[grid]\nlocal-steps = [1, 2]\n')
    lrs = tmp_path / "lrs.toml"
    lrs.write_text(
        f'[sweep]\nfamily = "lrs"\nseeds = [0, 1]\n[base]\n{BASE}local-steps = 2\n[grid]\nlr = [0.01, 0.1]\n'
    )
    masked = tmp_path / "masked.toml"
    masked.write_text(
        f'[sweep]\nfamily = "masked"\nseeds = [0, 1]\n[base]\n{BASE}\n[[edit]]\nname = "fed"\nsparsity = 0.9\n'
        '[[grid]]\nlocal-steps = [1]\nmask-from = ["fed"]\n'
    )
    return [wide, lrs, masked]


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("sharing")
    root = base / "runs"
    runs = plan_files(_grids(base), output_root=root)
    write_manifest(runs)
    assert [r.name for r in runs if r.shares] == ["lrs-lr0.01-seed0", "lrs-lr0.01-seed1"]
    for run in runs:
        if run.shares:
            continue  # run once, in the other family's directory
        c = run.config
        acc = 0.6 if run.family == "masked" else ACC[(c.local_steps, c.lr)]
        write_run(run.overrides, train_rows(3, acc + 0.02 * c.seed), kind=run.kind)
    result = summarize(root, base / "summary")
    with open(result["csv"]) as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    return {"result": result, "rows": rows, "figures": base / "summary" / "figures"}


def test_both_families_hold_the_shared_run(summary: dict):
    rows = summary["rows"]
    for label, family in (("wide-J2", "wide"), ("lrs-lr0.01", "lrs")):
        row = rows[label]
        assert (row["family"], row["seeds"], row["n_seeds"]) == (family, "0 1", "2"), label
        assert float(row["final_test_acc_mean"]) == pytest.approx(0.51), label
    by_label = {g.label: g for g in summary["result"]["groups"]}
    assert [r.name for r in by_label["lrs-lr0.01"].runs] == ["wide-J2-seed0", "wide-J2-seed1"]
    assert by_label["lrs-lr0.01"].runs[0].point == {"lr": 0.01}, "the family's own grid point"
    assert by_label["wide-J2"].runs[0].point == {"local-steps": 2}
    assert "8 finished runs" in summary["result"]["markdown"].read_text(), "a shared run counts once"


def test_each_familys_curves_draw_the_shared_run(summary: dict):
    with open(summary["figures"] / "curves-lrs.csv") as f:
        runs = {name for row in csv.DictReader(f) for name in row["runs"].split()}
    assert runs == {"wide-J2-seed0", "wide-J2-seed1", "lrs-lr0.1-seed0", "lrs-lr0.1-seed1"}


def test_edit_steps_are_not_configurations(summary: dict):
    root = summary["result"]["csv"].parent.parent / "runs"
    assert (root / "masked-edit-fed-seed0" / "summary.json").is_file(), "the step's run directory is there"
    labels = set(summary["rows"])
    assert labels == {"wide-J1", "wide-J2", "lrs-lr0.01", "lrs-lr0.1", "masked-J1-mask-fed"}, sorted(labels)


def test_a_mask_file_per_seed_is_one_configuration_named_by_its_step(summary: dict):
    assert not [w for w in summary["result"]["warnings"] if "differs" in w], summary["result"]["warnings"]
    assert summary["rows"]["masked-J1-mask-fed"]["mask_source"] == "fed, a file per seed"
