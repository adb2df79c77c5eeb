"""The Makefile's set-up stamp: editing the run config in pyproject.toml does not reinstall; a dependency does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def edit(path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in ``path``, dated a minute later (whatever the clock's grain)."""
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    later = path.stat().st_mtime + 60
    os.utime(path, (later, later))


def setups_run(app: Path) -> int:
    """``make setup`` in ``app``, whose setup.sh only counts its calls; how many times it has run so far."""
    subprocess.run(["make", "-s", "setup"], cwd=app, check=True, capture_output=True)
    log = app / "setup-calls"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_editing_the_run_config_does_not_reinstall_but_a_dependency_does(tmp_path):
    app = tmp_path / "app"
    (app / "scripts").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "overrides.txt"):
        shutil.copy(ROOT / name, app / name)
    setup = app / "scripts" / "setup.sh"
    setup.write_text("#!/usr/bin/env bash\nmkdir -p .venv && echo called >> setup-calls\n")
    setup.chmod(0o755)
    assert setups_run(app) == 1
    assert setups_run(app) == 1, "nothing changed"

    pyproject = app / "pyproject.toml"
    edit(pyproject, "\nnum-server-rounds = 100\n", "\nnum-server-rounds = 7\n")
    assert setups_run(app) == 1, "a run-config default is not a dependency"

    edit(pyproject, '"tqdm>=4.66",', '"tqdm>=4.67",')
    assert setups_run(app) == 2, "a dependency changed"
