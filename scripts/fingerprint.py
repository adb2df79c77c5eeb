"""Fingerprints of a few short runs: did a restructuring move a single bit of the results?

    python scripts/fingerprint.py run ROOT      # every run from scratch in ROOT; writes ROOT/fingerprints.json
    python scripts/fingerprint.py kill ROOT     # every run killed (SIGKILL) part-way, under this checkout's code
    python scripts/fingerprint.py resume ROOT   # the same runs continued to their end; fingerprints as for `run`

A fingerprint is the SHA-256 of the final checkpoint's tensors (names, dtypes, shapes, bytes), of the metric rows
without their timings (keys ending in ``_s``) and of ``summary.json`` without its timings. Compare the JSON written by
``run`` on the old code with ``run`` and ``kill``-then-``resume`` (old code kills, new code resumes) on the new one.
Each run is its own process with one torch thread, on generated CIFAR-format data and the tiny test ViT.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {
    "model": "vit-tiny-test",
    "image-size": 32,
    "device": "cpu",
    "dataset-verify": False,
    "dataset-download": False,
    "progress": False,
}
FEDERATED = {"num-clients": 10, "fraction-train": 0.3, "local-steps": 2, "batch-size": 16, "lr": 0.05}
EDITING = {"mask-rule": "least-sensitive", "sparsity": 0.8, "calibration-rounds": 2, "fisher-samples": 8}

# name → (kind, run config values, kill point under the fault-injection environment variable)
RUNS: dict[str, tuple[str, dict[str, Any], str]] = {
    "fed-dense": ("federated", {**FEDERATED, "num-server-rounds": 3, "eval-every": 2}, "after-replies@2"),
    "fed-edit": (
        "federated",
        {**FEDERATED, **EDITING, "head": "ridge", "calibration-fraction": 0.2, "num-server-rounds": 3, "eval-every": 2},
        "after-aggregate@4",
    ),
    "fed-probe-random": (
        "federated",
        {
            **FEDERATED,
            "head": "probe",
            "probe-rounds": 2,
            "mask-rule": "random",
            "sparsity": 0.5,
            "num-server-rounds": 2,
            "eval-every": 1,
            "federated-eval-fraction": 0.3,
            "strategy": "fedadam",
        },
        "before-eval@4",
    ),
    "central-edit": (
        "centralized",
        {**EDITING, "head": "ridge", "epochs": 1, "batch-size": 32, "lr": 0.1, "eval-every": 1, "mask-save-path": ""},
        "central:step@20",
    ),
    "central-dense": (
        "centralized",
        {"epochs": 2, "batch-size": 32, "lr": 0.1, "eval-every": 1, "checkpoint-every-steps": 20},
        "central:step@70",
    ),
    "fed-mask-path": ("federated", {**FEDERATED, "num-server-rounds": 2, "eval-every": 1, "mask-path": ""}, ""),
}
KILL_ENV = "FEDTALOS_KILL_AT"
MASK_FILE = "/tmp/fedtalos-fingerprint/mask.safetensors"


def _values(name: str, root: Path) -> dict[str, Any]:
    _, values, _ = RUNS[name]
    values = {**TINY, **values, "run-name": name, "output-root": str(root / "runs"), "dataset-root": str(root / "data")}
    # one mask file for every root: mask-path is part of a run's identity, so the same run in two roots must read
    # the file at one path (its bytes are the same from every equal central-edit run)
    for key in ("mask-save-path", "mask-path"):
        if key in values:
            values[key] = MASK_FILE
    return values


def run_one(name: str, root: Path) -> None:
    """Run (or resume) one run in this process."""
    import torch

    torch.set_num_threads(1)
    kind, _, _ = RUNS[name]
    values = _values(name, root)
    if kind == "federated":
        from tests.support.fakegrid import run_server
        from tests.support.tiny import task_identity

        with task_identity():
            run_server(values)
    else:
        from fedtalos.central.trainer import run_centralized
        from fedtalos.config import RunConfig
        from fedtalos.run.preflight import preflight

        config = RunConfig.from_mapping(values)
        preflight(config, "centralized")
        run_centralized(config)


def _digest(obj: Any, root: Path | None = None) -> str:
    text = json.dumps(obj, sort_keys=True)
    if root is not None:  # mask-file paths: the same run in another root is the same result
        text = text.replace(str(root), "<root>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(run_dir: Path) -> dict[str, str]:
    from tests.support.runs import final_state, result_summary, rows

    tensors = final_state(run_dir)
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return {
        "tensors": h.hexdigest()[:16],
        "rows": _digest(rows(run_dir)),
        "summary": _digest(result_summary(run_dir), run_dir.parents[1]),
    }


def _child(name: str, root: Path, kill_at: str | None) -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    done = subprocess.run(
        [sys.executable, __file__, "one", name, str(root)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL
    )
    return done.returncode


def main(argv: list[str]) -> int:
    mode, root = argv[0], Path(argv[1]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "data").exists():
        from fedtalos.testing.synthetic import write_fake_cifar100

        write_fake_cifar100(root / "data", train_per_class=20, test_per_class=5)
    results: dict[str, Any] = {}
    for name, (_, _, kill_at) in RUNS.items():
        if mode == "kill":  # the runs with a kill point; the others run whole on `resume`
            if kill_at:
                code = _child(name, root, kill_at)
                print(f"{name}: killed at {kill_at} -> returncode {code}", flush=True)
            continue
        code = _child(name, root, None)
        if code != 0:
            print(f"{name}: FAILED ({code})", flush=True)
            return 1
        results[name] = fingerprint(root / "runs" / name)
        print(f"{name}: {results[name]}", flush=True)
    if mode != "kill":
        (root / "fingerprints.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "one":
        run_one(sys.argv[2], Path(sys.argv[3]).resolve())
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
