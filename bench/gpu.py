"""The GPU benchmark: one command, one JSON object (``bench/gpu.sh`` runs it; ≤ 8 minutes on one GPU).

    bash bench/gpu.sh              # ViT-S/16 (random init) at 224 px on cuda:0
    bash bench/gpu.sh --quick      # tiny ViT at 32 px on the CPU, no federated rounds: a smoke run

Nothing is downloaded: the model is DINO ViT-S/16's architecture with random weights (the speed is the same) and
the data are generated CIFAR-100-format files. Measured:

- ``train``: training images/s of ``task.train.train_steps`` at batch 32 in fp32 and in bf16 autocast, with
  the peak GPU memory of one such client (``torch.cuda.max_memory_allocated``, weights and optimizer included);
- ``fisher``: Fisher scores of ``--fisher-samples`` samples, per-layer hooks vs the per-sample backward loop, at
  the same image size, with their max relative difference and peak memory;
- ``rounds``: ``bench/round_overhead.py`` with 1, 2 and 4 client actors sharing the GPU (``client-resources-num-
  gpus`` = 1/actors): the steady FedAvg round vs the pure compute of the same cohort, the per-client overhead,
  and the peak GPU memory of each actor process (``nvidia-smi``, CUDA context included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtalos.editing.fisher import fisher_scores, per_sample_loop_scores  # noqa: E402
from fedtalos.seeds import make_generator  # noqa: E402
from fedtalos.task.batches import ImageTransform, iterate_batches  # noqa: E402
from fedtalos.task.model import DINO_VIT_S16, TINY_TEST_VIT, build_model  # noqa: E402
from fedtalos.task.train import train_steps  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def train_throughput(model_name: str, size: int, device: torch.device, steps: int, dtype: torch.dtype | None) -> dict:
    """Images/s of ``steps`` training steps at batch 32 (after 2 warm-up steps), and the peak memory."""
    _peak_reset(device)
    torch.manual_seed(0)
    model = build_model(model_name, image_size=size, pretrained=False).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = 32
    images = torch.randint(0, 256, (batch * (steps + 2), 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 100, (batch * (steps + 2),), device=device)
    transform = ImageTransform(size, train=True)

    def batches(n: int, seed: int):
        return iterate_batches(
            images, labels, transform, batch_size=batch, generator=make_generator(seed, 0), num_steps=n
        )

    train_steps(model, optimizer, batches(2, 1), autocast_dtype=dtype)
    _sync(device)
    t0 = time.perf_counter()
    train_steps(model, optimizer, batches(steps, 2), autocast_dtype=dtype)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "images_per_s": batch * steps / seconds,
        "step_ms": 1000 * seconds / steps,
        "peak_memory_gb": _peak_gb(device),
    }


def fisher(model_name: str, size: int, device: torch.device, samples: int) -> dict:
    """Seconds of the hooks method and of the per-sample loop for ``samples`` samples, and their agreement."""
    torch.manual_seed(0)
    model = build_model(model_name, image_size=size, pretrained=False).to(device)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.05)
    data = list(torch.randn(samples, 3, size, size, device=device).split(16))
    out: dict[str, float | None] = {"samples": samples}
    results = {}
    for method in ("hooks", "loop"):
        _peak_reset(device)

        def run(method: str = method) -> dict[str, torch.Tensor]:
            generator = torch.Generator().manual_seed(0)
            if method == "loop":
                return per_sample_loop_scores(model, data, generator=generator)
            return fisher_scores(model, data, generator=generator, method="hooks")

        run()  # warm-up (kernels, allocator)
        _sync(device)
        t0 = time.perf_counter()
        results[method] = run()
        _sync(device)
        out[f"{method}_s"] = time.perf_counter() - t0
        out[f"{method}_peak_memory_gb"] = _peak_gb(device)
    out["speedup"] = out["loop_s"] / out["hooks_s"]
    out["max_rel_diff"] = max(
        float((results["hooks"][n] - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        for n, ref in results["loop"].items()
    )
    return out


class GpuMemorySampler(threading.Thread):
    """Peak used GPU memory per process (``nvidia-smi``, GiB), sampled twice a second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[int, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        while not self.stopped.wait(0.5):
            try:
                lines = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.splitlines()
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in lines:
                pid, _, mib = line.partition(",")
                if pid.strip().isdigit() and mib.strip().isdigit():
                    self.peak[int(pid)] = max(self.peak.get(int(pid), 0.0), int(mib) / 1024)


def rounds(actors: int, size: int, device: str, rounds_n: int) -> dict:
    """``bench/round_overhead.py`` with ``actors`` actors sharing one GPU; its JSON plus per-process GPU peaks."""
    cpus = max(1, (os.cpu_count() or 1) // (actors + 1))  # leave cores for the server
    command = [
        sys.executable,
        str(ROOT / "bench" / "round_overhead.py"),
        f"--rounds={rounds_n}",
        f"--image-size={size}",
        f"--device={device}",
        f"--cpus-per-client={cpus}",
        f"--gpus-per-client={1 / actors:.4f}",
        "--per-class=100",
    ]
    sampler = GpuMemorySampler()
    sampler.start()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    finally:
        sampler.stopped.set()
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"status": "failed", "stderr_tail": done.stderr[-2000:]}
    report["gpu_peak_gb_by_process"] = sorted(sampler.peak.values(), reverse=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny ViT, 32 px, on the CPU, no federated rounds")
    parser.add_argument("--actors", default=None, help="comma-separated actor counts (default 1,2,4; quick: none)")
    parser.add_argument("--image-size", type=int, default=None, help="default 224 (quick: 32)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; quick: 2)")
    parser.add_argument("--fisher-samples", type=int, default=None, help="default 32 (quick: 4)")
    parser.add_argument("--rounds", type=int, default=5, help="FedAvg rounds per actor count (3 are steady)")
    args = parser.parse_args()
    quick = args.quick
    device = torch.device("cpu" if quick or not torch.cuda.is_available() else "cuda:0")
    if quick:
        torch.set_num_threads(1)
    model = TINY_TEST_VIT if quick else DINO_VIT_S16
    size = args.image_size or (32 if quick else 224)
    steps = args.steps or (2 if quick else 20)
    actors = [int(a) for a in (args.actors if args.actors is not None else ("" if quick else "1,2,4")).split(",") if a]
    started = time.perf_counter()
    report: dict = {
        "benchmark": "gpu",
        "quick": quick,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "model": model,
        "image_size": size,
        "batch_size": 32,
    }
    report["train"] = {
        "fp32": train_throughput(model, size, device, steps, None),
        "bf16": train_throughput(model, size, device, steps, torch.bfloat16),
    }
    report["fisher"] = fisher(model, size, device, args.fisher_samples or (4 if quick else 32))
    report["rounds"] = {
        str(a): rounds(a, size, "cuda" if device.type == "cuda" else "cpu", args.rounds) for a in actors
    }
    report["wall_s"] = time.perf_counter() - started
    print(json.dumps(report))


if __name__ == "__main__":
    main()
