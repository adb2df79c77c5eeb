"""The GPU benchmark: one command, one JSON object (``bench/gpu.sh`` runs it; ≤ 8 minutes on one GPU).

    bash bench/gpu.sh                          # ViT-S/16 (random init) at 224 px on cuda:0, 1/2/4/8 actors
    bash bench/gpu.sh --actors 4,8 --rounds 8  # other actor counts, more steady rounds
    bash bench/gpu.sh --quick                  # tiny ViT at 32 px on the CPU, no federated rounds: a smoke run

Nothing is downloaded: the model is DINO ViT-S/16's architecture with random weights (the speed is the same) and
the data are generated CIFAR-100-format files. Measured:

- ``train``: training images/s of ``task.train.train_steps`` at batch 32 in fp32 and in bf16 autocast, with
  the peak GPU memory of one such client (``torch.cuda.max_memory_allocated``, weights and optimizer included);
- ``fisher``: Fisher scores of ``--fisher-samples`` samples, per-layer hooks vs the per-sample backward loop, at
  the same image size, with their max relative difference and peak memory;
- ``rounds``: per actor count A, ``bench/round_overhead.py`` (K = 100, cohort 10, J = 4, batch 32) with A client
  actors sharing the GPU (``client-resources-num-gpus`` = 1/A): the steady round vs the pure compute of the same
  cohort at the same parallelism (A processes) and their ratio (target ≤ 1.03), the per-client breakdown with the
  app's share (everything outside the J steps but Flower's delivery and reply) and Flower's share apart, the
  server's time per round vs its target, and the peak GPU memory of each process (``nvidia-smi``, CUDA context
  included; ``role``: actor, simulation (the ServerApp), bench (the pure side), pure_worker). An actor count whose
  estimated memory (``fedtalos.task.memory``) does not fit the free GPU memory is skipped, one that runs out of
  memory or past the time budget is recorded with its status, and the benchmark goes on;
- ``study_gpu_hours``: the GPU-hours of the study (``configs/*.toml`` planned as ``fedtalos sweep configs/*.toml
  --dry-run`` plans them; ``fedtalos.study.compute.study_gpu_hours``) priced from the measured times:
  ``from_rounds`` at the actor count with the fastest steady round (seconds per client-step from the
  same-parallelism pure round, the framework's time per client-round from the rest of the round, the measured
  start-up per run), ``from_train_step`` from the app's training step alone (bf16 where the card has it; the
  framework's time and the start-up assumed), beside ``assumed``, the dry run's own estimate.

Time on one H100 (an estimate until it runs: ViT-S/16 at 224 px trains at ≈ 1,500–3,000 img/s in bf16, so a
client update of 4 × 32 images is ≈ 45–85 ms and a cohort of 10 ≈ 0.5–1 s): imports, training and Fisher ≈ 30 s;
each actor count ≈ 60–90 s of start-up (process pools and Ray actors importing torch and starting CUDA, the
SuperLink) plus ≈ 5 passes over its steady rounds (Flower, pure and same-parallelism, before and after) of ≈ 1 s
each; 5 rounds (3 steady) for 4 actor counts ≈ 5–6.5 minutes. ``--budget-s`` (default 450) stops an actor count
that would run past it, so the JSON is always printed before ``bench/gpu.sh``'s 480 s limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtalos.config import RunConfig  # noqa: E402
from fedtalos.editing.fisher import fisher_scores, per_sample_loop_scores  # noqa: E402
from fedtalos.seeds import make_generator  # noqa: E402
from fedtalos.study.compute import CARDS, Cost, family_costs, study_gpu_hours  # noqa: E402
from fedtalos.study.plan import plan_files  # noqa: E402
from fedtalos.task.batches import ImageTransform, iterate_batches  # noqa: E402
from fedtalos.task.device import autocast_dtype  # noqa: E402
from fedtalos.task.memory import GIB, SERVER_BYTES, actor_peak_bytes  # noqa: E402
from fedtalos.task.model import DINO_VIT_S16, TINY_TEST_VIT, build_model  # noqa: E402
from fedtalos.task.train import train_steps  # noqa: E402

BATCH = 32
RATIO_TARGET = 1.03  # issue 23: a steady round vs the same cohort's pure compute at the same parallelism
FLOWER_PARTS = ("delivery_ms", "reply_ms")  # Flower's and Ray's message path; the rest but the steps is the app's
STEPS_PART = "steps_ms"


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
    images = torch.randint(0, 256, (BATCH * (steps + 2), 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 100, (BATCH * (steps + 2),), device=device)
    transform = ImageTransform(size, train=True)

    def batches(n: int, seed: int):
        return iterate_batches(
            images, labels, transform, batch_size=BATCH, generator=make_generator(seed, 0), num_steps=n
        )

    train_steps(model, optimizer, batches(2, 1), autocast_dtype=dtype)
    _sync(device)
    t0 = time.perf_counter()
    train_steps(model, optimizer, batches(steps, 2), autocast_dtype=dtype)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "images_per_s": BATCH * steps / seconds,
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


def process_role(cmdline: str) -> str:
    """What a process on the GPU is, from its command line (Ray names its actor processes ``ray::Class...``)."""
    for needle, role in (
        ("ClientAppActor", "actor"),
        ("flwr-simulation", "simulation"),
        ("round_overhead.py", "bench"),
        ("multiprocessing", "pure_worker"),
    ):
        if needle in cmdline:
            return role
    return "other"


class GpuMemorySampler(threading.Thread):
    """Peak used GPU memory per process (``nvidia-smi``, GiB) and its role, and of the whole card (a container
    may hide the processes), sampled twice a second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[int, float] = {}
        self.peak_total = 0.0
        self.roles: dict[int, str] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        device_query = ["nvidia-smi", "--id=0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while not self.stopped.wait(0.5):
            try:
                lines = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.splitlines()
                used = subprocess.run(device_query, capture_output=True, text=True, timeout=5).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return
            if used.isdigit():
                self.peak_total = max(self.peak_total, int(used) / 1024)
            for line in lines:
                pid_text, _, mib = line.partition(",")
                if not (pid_text.strip().isdigit() and mib.strip().isdigit()):
                    continue
                pid = int(pid_text)
                self.peak[pid] = max(self.peak.get(pid, 0.0), int(mib) / 1024)
                if pid not in self.roles:
                    try:
                        self.roles[pid] = process_role(" ".join(psutil.Process(pid).cmdline()))
                    except psutil.Error:
                        self.roles[pid] = "other"

    def by_process(self) -> list[dict]:
        rows = [{"pid": pid, "role": self.roles.get(pid, "other"), "gb": gb} for pid, gb in self.peak.items()]
        return sorted(rows, key=lambda row: -row["gb"])


def _run_bounded(command: list[str], timeout_s: float) -> tuple[int | None, str, str]:
    """Run ``command``; past ``timeout_s`` interrupt it (its clean-up stops its SuperLink and Ray), then kill
    whatever of its process tree is left. Returns (exit code or None on timeout, stdout, stderr)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout_s))
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        for child in tree:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(tree, timeout=10)
        return None, out, err


def memory_shortfall(actors: int, model: str, size: int, device: torch.device) -> dict | None:
    """On CUDA, a record of why ``actors`` actors would not fit the free GPU memory (estimated peaks of the
    actors, the pure side's process and the ServerApp: ``fedtalos.task.memory``), or None when they fit."""
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    need = (actors + 1) * actor_peak_bytes(RunConfig(model=model, image_size=size)) + SERVER_BYTES
    if need <= free:
        return None
    return {"status": "skipped: estimated memory does not fit", "need_gb": need / GIB, "free_gb": free / GIB}


def rounds(actors: int, size: int, device: str, rounds_n: int, timeout_s: float, quick: bool = False) -> dict:
    """``bench/round_overhead.py`` with ``actors`` actors sharing one GPU; its JSON (or a status) and the
    per-process GPU peaks. ``quick``: its tiny smoke configuration."""
    cpus = max(1, (os.cpu_count() or 1) // (actors + 1))  # leave cores for the server
    command = [
        sys.executable,
        str(ROOT / "bench" / "round_overhead.py"),
        f"--rounds={rounds_n}",
        f"--image-size={size}",
        f"--device={device}",
        f"--cpus-per-client={cpus}",
    ]
    if device != "cpu":  # a GPU share on a machine without one would leave Ray no actor to start
        command.append(f"--gpus-per-client={1 / actors:.4f}")
    command += ["--quick"] if quick else ["--per-class=100"]
    sampler = GpuMemorySampler()
    sampler.start()
    try:
        code, out, err = _run_bounded(command, timeout_s)
    finally:
        sampler.stopped.set()
    try:
        report = json.loads(out)
    except ValueError:
        report = {"status": "failed"}
    if code is None:
        report["status"] = "timeout"
    if code != 0:
        report["stderr_tail"] = err[-2000:]
        if "out of memory" in (err + str(report.get("tail", ""))).lower():
            report["status"] = "out_of_memory"
    report["gpu_peak_gb_by_process"] = sampler.by_process()
    report["gpu_peak_gb_total"] = sampler.peak_total or None
    return report


def summarize_rounds(actors: int, report: dict) -> dict:
    """One actor count's figures from ``bench/round_overhead.py``'s JSON (or a status record): the same keys
    whatever happened, None where nothing was measured."""
    cohort = report.get("cohort")
    round_s, same = report.get("flower_round_s"), report.get("pure_same_parallelism_round_s")
    ratio = round_s / same if round_s and same else None
    parts = report.get("per_client_breakdown_ms") or {}
    app_parts = sorted(k for k in parts if k not in (*FLOWER_PARTS, STEPS_PART))
    server, server_target = report.get("server_ms_per_round"), report.get("server_target_ms_per_round")
    peaks = report.get("gpu_peak_gb_by_process") or []
    actor_peaks = [row["gb"] for row in peaks if row["role"] == "actor"]
    return {
        "actors": actors,
        "status": report.get("status"),
        "cohort": cohort,
        "local_steps": report.get("local_steps"),
        "round_s": round_s,
        "pure_same_parallelism_round_s": same,
        "ratio_same_parallelism": ratio,
        "ratio_target": RATIO_TARGET,
        "ratio_target_met": ratio <= RATIO_TARGET if ratio is not None else None,
        "client_update_s": round_s / cohort if round_s and cohort else None,
        "per_client_breakdown_ms": parts or None,
        "app_ms": sum(parts[k] for k in app_parts) if parts else None,
        "app_parts": app_parts or None,
        "flower_ms": sum(parts.get(k, 0.0) for k in FLOWER_PARTS) if parts else None,
        "steps_ms": parts.get(STEPS_PART),
        "server_ms_per_round": server,
        "server_target_ms_per_round": server_target,
        "server_target_met": server <= server_target if server is not None and server_target else None,
        "startup_s": report.get("startup_s"),
        "gpu_peak_gb_per_actor": max(actor_peaks) if actor_peaks else None,
        "gpu_peak_gb_total": report.get("gpu_peak_gb_total"),
        "gpu_peak_gb_by_process": peaks,
        "round_overhead": report,
    }


def best_actors(summaries: dict[str, dict]) -> str | None:
    """The actor count with the fastest steady round (the same cohort at every count: the most client updates
    per GPU-second), among those measured."""
    measured = {a: s["round_s"] for a, s in summaries.items() if s["round_s"] and s["pure_same_parallelism_round_s"]}
    return min(measured, key=measured.__getitem__) if measured else None


def study_estimate(train_step_s: float, dtype: str, summary: dict | None) -> dict:
    """GPU-hours of ``configs/*.toml`` from the measured training step and, when measured, the best round."""
    grid_files = sorted(ROOT.glob("configs/*.toml"))
    with tempfile.TemporaryDirectory() as out:
        runs = plan_files(grid_files, output_root=out)  # planning only: nothing is written or run
    total = Cost()
    for cost in family_costs(runs).values():
        total.add(cost)
    card = CARDS[0]
    estimate: dict = {
        "grid_files": [str(p.relative_to(ROOT)) for p in grid_files],
        "runs_to_run": total.runs,
        "client_steps": total.client_steps,
        "client_rounds": total.client_rounds,
        "assumed": {"card": card.name, "images_per_s": card.images_per_s, "gpu_hours": total.gpu_hours(card)},
        "from_train_step": None,
        "from_rounds": None,
    }
    hours = study_gpu_hours(runs, train_step_s, batch_size=BATCH)
    estimate["from_train_step"] = {
        "client_step_s": train_step_s,
        "dtype": dtype,
        "framework_and_startup": "assumed (fedtalos/study/compute.py)",
        "gpu_hours": hours["total"],
        "gpu_hours_by_family": hours,
    }
    if summary is not None:
        steps = summary["cohort"] * summary["local_steps"]
        step_s = summary["pure_same_parallelism_round_s"] / steps  # a GPU shared by the actors: wall time per step
        overhead_s = max(0.0, summary["round_s"] - summary["pure_same_parallelism_round_s"]) / summary["cohort"]
        startup_s = summary["startup_s"]
        kwargs = {"client_round_overhead_s": overhead_s}
        if startup_s is not None:
            kwargs["run_startup_s"] = startup_s
        hours = study_gpu_hours(runs, step_s, batch_size=BATCH, **kwargs)
        estimate["from_rounds"] = {
            "actors": summary["actors"],
            "client_step_s": step_s,
            "client_round_overhead_s": overhead_s,
            "run_startup_s": startup_s,
            "gpu_hours": hours["total"],
            "gpu_hours_by_family": hours,
        }
    return estimate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny ViT, 32 px, on the CPU, no federated rounds")
    parser.add_argument(
        "--actors", default=None, help="comma-separated actor counts (default 1,2,4,8; quick: none, or tiny rounds)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="default 224 (quick: 32)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; quick: 2)")
    parser.add_argument("--fisher-samples", type=int, default=None, help="default 32 (quick: 4)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="FedAvg rounds per actor count (all but the first and the last are steady; quick: round_overhead's own 4)",
    )
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall seconds for the whole benchmark")
    args = parser.parse_args()
    started = time.perf_counter()
    quick = args.quick
    device = torch.device("cpu" if quick or not torch.cuda.is_available() else "cuda:0")
    if quick:
        torch.set_num_threads(1)
    model = TINY_TEST_VIT if quick else DINO_VIT_S16
    size = args.image_size or (32 if quick else 224)
    steps = args.steps or (2 if quick else 20)
    default_actors = "" if quick else "1,2,4,8"
    actors = [int(a) for a in (args.actors if args.actors is not None else default_actors).split(",") if a]
    report: dict = {
        "benchmark": "gpu",
        "quick": quick,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "model": model,
        "image_size": size,
        "batch_size": BATCH,
        "actors": actors,
        "rounds_per_actor_count": args.rounds,
        "budget_s": args.budget_s,
    }
    report["train"] = {
        "fp32": train_throughput(model, size, device, steps, None),
        "bf16": train_throughput(model, size, device, steps, torch.bfloat16),
    }
    report["fisher"] = fisher(model, size, device, args.fisher_samples or (4 if quick else 32))
    summaries = {}
    for a in actors:
        left = args.budget_s - (time.perf_counter() - started)
        if left < 60:
            raw: dict = {"status": "skipped: out of time (--budget-s)"}
        else:
            budget = left - 40  # time for its clean-up if it has to be stopped
            raw = memory_shortfall(a, model, size, device) or rounds(a, size, device.type, args.rounds, budget, quick)
        summaries[str(a)] = summarize_rounds(a, raw)
    report["rounds"] = summaries
    best = best_actors(summaries)
    report["best_actors"] = int(best) if best else None
    app_dtype = "bf16" if autocast_dtype(device) == torch.bfloat16 else "fp32"  # what a run's 'auto' trains in
    report["study_gpu_hours"] = study_estimate(
        report["train"][app_dtype]["step_ms"] / 1000, app_dtype, summaries[best] if best else None
    )
    report["wall_s"] = time.perf_counter() - started
    print(json.dumps(report))


if __name__ == "__main__":
    main()
