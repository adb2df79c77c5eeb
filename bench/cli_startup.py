"""Start-up of the ``fedtalos`` command: wall time and peak memory of ``--help``, argument errors and ``run --check``.

    python bench/cli_startup.py                 # 5 repeats of each command, and `run --check` on a tiny app config
    python bench/cli_startup.py --repeats 11    # more repeats on a loaded machine
    python bench/cli_startup.py --quick         # 1 repeat of the three quick commands: a smoke run

Each command runs as users run it, ``python -m fedtalos.cli ...`` in a fresh process (this checkout on
``PYTHONPATH``); the figure is the median wall time over the repeats, with the peak resident memory of the process.
``--help`` and argument errors answer before torch or Flower are imported (the target: under 0.5 s on the 2-core
development machine); ``run --check`` builds the data and the model (the tiny test ViT on generated CIFAR-format
data, no download). ``reference_flwr_help_s`` and ``reference_import_torch_s`` put the figures in scale.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name → arguments after `python -m fedtalos.cli`, and the exit status each must end with
COMMANDS: dict[str, tuple[list[str], int]] = {
    "fedtalos --help": (["--help"], 0),
    "fedtalos --version": (["--version"], 0),
    "fedtalos run --help": (["run", "--help"], 0),
    "fedtalos central --help": (["central", "--help"], 0),
    "fedtalos edit --help": (["edit", "--help"], 0),
    "fedtalos search --help": (["search", "--help"], 0),
    "fedtalos sweep --help": (["sweep", "--help"], 0),
    "fedtalos summarize --help": (["summarize", "--help"], 0),
    "fedtalos analyze --help": (["analyze", "--help"], 0),
    "fedtalos plot --help": (["plot", "--help"], 0),
    "fedtalos demo --help": (["demo", "--help"], 0),
    "fedtalos run . -c 'lr=fast' --check (argument error)": (["run", str(ROOT), "-c", "lr=fast", "--check"], 2),
    "fedtalos central --lr fast (argument error)": (["central", "--lr", "fast"], 2),
    "fedtalos bogus (unknown command)": (["bogus"], 2),
}


# What --quick runs: one of each kind that must answer without importing torch.
QUICK = ("fedtalos --help", "fedtalos run --help", "fedtalos run . -c 'lr=fast' --check (argument error)")


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak resident MB, exit status) of one run of ``command``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, process.returncode  # ru_maxrss is in KB on Linux


def measure(command: list[str], env: dict[str, str], repeats: int, expected: int) -> dict[str, float]:
    runs = [timed(command, env) for _ in range(repeats)]
    codes = {code for _, _, code in runs}
    if codes != {expected}:
        raise SystemExit(f"{command}: exit status {sorted(codes)}, expected {expected}")
    return {
        "median_s": round(statistics.median(w for w, _, _ in runs), 3),
        "min_s": round(min(w for w, _, _ in runs), 3),
        "peak_rss_mb": round(max(m for _, m, _ in runs), 1),
    }


def check_arguments(data_root: Path, output_root: Path) -> list[str]:
    """``run APP --check`` of a tiny run on generated data (no download, no MD5 check)."""
    settings = (
        f"model=vit-tiny-test pretrained=false image-size=32 device=cpu dataset-root={data_root} "
        f"dataset-download=false dataset-verify=false output-root={output_root} num-clients=10"
    )
    return ["run", str(ROOT), "--check", "-c", settings]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 repeat of three quick commands: a smoke run")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    python = [sys.executable, "-m", "fedtalos.cli"]
    commands = {k: v for k, v in COMMANDS.items() if k in QUICK} if args.quick else COMMANDS
    results = {name: measure([*python, *argv], env, repeats, code) for name, (argv, code) in commands.items()}
    report: dict[str, object] = {"benchmark": "cli_startup", "repeats": repeats, "commands": results}
    if not args.quick:
        from fedtalos.testing.synthetic import write_fake_cifar100

        with tempfile.TemporaryDirectory() as tmp:
            data = write_fake_cifar100(Path(tmp) / "data", train_per_class=20, test_per_class=5)
            check = check_arguments(data, Path(tmp) / "runs")
            results["fedtalos run . --check (tiny model, generated data)"] = measure([*python, *check], env, repeats, 0)
        flwr = str(Path(sys.executable).parent / "flwr")
        report["reference_flwr_help_s"] = measure([flwr, "--help"], env, repeats, 0)["median_s"]
        report["reference_import_torch_s"] = measure([sys.executable, "-c", "import torch"], env, repeats, 0)[
            "median_s"
        ]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
