"""notebooks/colab.ipynb executed headless on CPU (nbclient), with tiny settings and a local folder for the Drive
mount: it runs one family with `fedtalos sweep` and summarizes it; executed again (a new session after a
disconnect), the same cells find the run finished and skip it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab.ipynb"
pytestmark = pytest.mark.e2e

GRID = """
[sweep]
kind = "federated"
family = "colab"
seeds = [0]

[base]
model = "vit-tiny-test"
image-size = 16
device = "cpu"
dataset-verify = false
dataset-download = false
num-clients = 2
fraction-train = 1.0
batch-size = 8
num-server-rounds = 2
eval-every = 1
progress = false

[grid]
local-steps = [1]
"""


def _execute(settings: str, tmp_path: Path) -> str:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = settings
    nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def test_the_colab_notebook_runs_a_family_and_resumes_with_the_same_cells(
    fake_cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel and the sweep import this checkout
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    grid = tmp_path / "colab.toml"
    grid.write_text(GRID)
    drive = tmp_path / "drive"  # stands for the mounted Drive folder
    settings = "\n".join(
        [
            f"REPO = {str(ROOT)!r}",
            f"APP_DIR = {str(ROOT)!r}",
            f"DRIVE_ROOT = {str(drive)!r}",
            f"DATA_DIR = {str(fake_cifar_root)!r}",
            f"GRIDS = [{str(grid)!r}]",
            'SWEEP_ARGS = ["--federation-config", "client-resources-num-cpus=1"]',
            "INSTALL = False",
            "MOUNT_DRIVE = False",
        ]
    )
    first = _execute(settings, tmp_path)
    run_dir = drive / "runs" / "colab-J1-seed0"
    assert "sweep: 1 runs under" in first and "0 finished, 0 to resume, 1 new" in first, first
    assert "[1/1] done colab-J1-seed0" in first and "sweep exit status: 0" in first, first
    assert json.loads((run_dir / "summary.json").read_text())["final"]["test_acc"] is not None
    assert (drive / "runs" / "summary" / "summary.csv").is_file() and "| colab |" in first
    # a new session after a disconnect: the same cells, nothing left to run
    second = _execute(settings, tmp_path)
    assert "1 finished, 0 to resume, 0 new" in second and " start " not in second and "sweep exit status: 0" in second
