"""Run a benchmark script in quick mode as users do and parse its stdout, which must be one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_quick(script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300) -> dict[str, Any]:
    merged = {**os.environ, **(env or {})}
    merged["PYTHONPATH"] = os.pathsep.join([str(ROOT), merged.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args],
        capture_output=True,
        text=True,
        env=merged,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    return json.loads(done.stdout)  # the whole of stdout is one JSON document
