"""Parallel sweeps: the same tiny runs with `fedtalos sweep --parallel 1` (serial) and `--parallel N`.

    python bench/sweep_parallel.py                          # 4 tiny runs (vit-tiny-test, 16 px), serial vs 2 slots
    python bench/sweep_parallel.py --slots 1,2,4 --gpus 0 \\
        --model vit_small_patch16_224.dino --image-size 224 --clients 10 --rounds 20   # on a GPU: 1, 2, 4 slots

Each setting runs the whole sweep as the real command (its own process, private SuperLinks, one Ray per slot) on
generated CIFAR-format data, into a fresh output root, and reports its wall time (start-up included: for tiny
runs Ray's start dominates, which is what overlapping slots hide), runs per hour, the peak resident memory of each
slot's process tree (its SuperLink, simulations and Ray, sampled twice a second) and, where ``nvidia-smi`` exists,
the mean GPU utilisation while the sweep ran. It also checks that every run's final test accuracy is the same in
every setting. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtalos.launch.superlink import descendants  # noqa: E402
from fedtalos.testing.synthetic import write_fake_cifar100  # noqa: E402

GRID = """
[sweep]
kind = "federated"
family = "bench"
seeds = {seeds}

[base]
dataset-root = "{cifar}"
dataset-verify = false
dataset-download = false
model = "{model}"
pretrained = false
image-size = {image_size}
num-clients = {clients}
fraction-train = 1.0
batch-size = {batch}
num-server-rounds = {rounds}
eval-every = {rounds}
lr-schedule = "constant"
progress = false

[grid]
local-steps = [1, 2]
"""


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _guards(sweep_pid: int) -> dict[int, str]:
    """The SuperLink guards the sweep started: pid → slot home (from the command line)."""
    out = {}
    for pid in descendants(sweep_pid):
        try:
            cmd = psutil.Process(pid).cmdline()
        except psutil.Error:
            continue
        if "fedtalos.launch.superlink" in cmd:
            home = next((c for c in cmd if c.endswith("superlink.db")), str(pid))
            out[pid] = home
    return out


class Sampler(threading.Thread):
    """Peak RSS per slot (process tree under each SuperLink guard) and GPU utilisation, twice a second."""

    def __init__(self, sweep_pid: int) -> None:
        super().__init__(daemon=True)
        self.sweep_pid = sweep_pid
        self.peaks: dict[str, int] = {}
        self.gpu_util: list[float] = []
        self.stopped = threading.Event()
        self.smi = shutil.which("nvidia-smi")

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            for guard, home in _guards(self.sweep_pid).items():
                total = sum(_rss(p) for p in [guard, *descendants(guard)])
                self.peaks[home] = max(self.peaks.get(home, 0), total)
            if self.smi:
                out = subprocess.run(
                    [self.smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.split()
                if out:
                    self.gpu_util.append(statistics.mean(float(x) for x in out))


def run_sweep(grid: Path, root: Path, parallel: int, gpus: str | None, device_args: list[str]) -> dict:
    command = [sys.executable, "-m", "fedtalos.cli", "sweep", str(grid), "--output-root", str(root)]
    command += ["--parallel", str(parallel), "--no-analysis", *device_args]
    if gpus:
        command += ["--gpus", gpus]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(process.pid)
    sampler.start()
    output = process.communicate()[0]
    wall = time.monotonic() - start
    sampler.stopped.set()
    sampler.join()
    finals = {}
    for summary in sorted(root.glob("bench-*/summary.json")):
        finals[summary.parent.name] = json.loads(summary.read_text())["final"].get("test_acc")
    return {
        "parallel": parallel,
        "returncode": process.returncode,
        "wall_s": round(wall, 1),
        "runs": len(finals),
        "runs_per_hour": round(3600 * len(finals) / wall, 1),
        "peak_rss_per_slot_gb": [round(v / 2**30, 2) for v in sampler.peaks.values()],
        "gpu_util_mean_pct": round(statistics.mean(sampler.gpu_util), 1) if sampler.gpu_util else None,
        "final_test_acc": finals,
        "tail": output.splitlines()[-3:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", default="1,2", help="slot counts to compare, the first is the reference")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per configuration (2 configurations)")
    parser.add_argument("--model", default="vit-tiny-test")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gpus", help="passed to --gpus (e.g. 0)")
    parser.add_argument("--federation-config", default="client-resources-num-cpus=1")
    args = parser.parse_args()
    slots = [int(s) for s in args.slots.split(",")]
    work = Path(tempfile.mkdtemp(prefix="fedtalos-bench-sweep-"))
    try:
        cifar = write_fake_cifar100(work / "cifar", train_per_class=20, test_per_class=5)
        grid = work / "bench.toml"
        grid.write_text(
            GRID.format(
                seeds=list(range(args.seeds)),
                cifar=cifar,
                model=args.model,
                image_size=args.image_size,
                clients=args.clients,
                rounds=args.rounds,
                batch=args.batch,
            )
        )
        device = ["--federation-config", args.federation_config] if args.federation_config else []
        results = [run_sweep(grid, work / f"runs-p{n}", n, args.gpus, device) for n in slots]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reference = results[0]
    report = {
        "benchmark": "sweep_parallel",
        "model": args.model,
        "image_size": args.image_size,
        "clients": args.clients,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "results": results,
        "wall_ratio_vs_first": {r["parallel"]: round(reference["wall_s"] / r["wall_s"], 2) for r in results},
        "same_results": all(r["final_test_acc"] == reference["final_test_acc"] for r in results),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
