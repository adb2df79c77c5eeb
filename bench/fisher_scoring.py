"""Benchmark: Fisher scoring with per-layer hooks, with torch.func (vmap), and with the per-sample autograd loop.

For each model, the three scorers see the same N random inputs (32 px unless ``--image-size``) and draw the same
labels (equal generator seeds). Prints one JSON object to stdout:

    {"benchmark": "fisher_scoring", "torch": ..., "threads": 2 (--threads), "device": "cpu", "quick": ..., "cpus": ...,
     "loadavg_start": [1, 5, 15 min], "loadavg_end": [...], "results": [
        {"model": ..., "scored_entries": ..., "image_size": ..., "samples": N, "batch_size": ..., "repeat": ...,
         "loop_s": ..., "loop_cpu_s": ...,
         "vmap_chunk_size": ..., "vmap_s": ..., "vmap_cpu_s": ..., "vmap_speedup": loop_s / vmap_s,
         "vmap_max_rel_diff": ..., and the same five "hooks_*" keys}, ...]}

Times are the minimum over ``--repeat`` runs (default 10 for the tiny ViT, 3 for ViT-S: the machine may be
shared): ``*_s`` wall-clock seconds, ``*_cpu_s`` CPU seconds of this process (all threads, including threads
spinning while they wait for a core). ``*_max_rel_diff`` is the largest, over scored tensors, of
max|method − loop| / max|loop|. Every scorer gets one warm-up call on a
couple of samples first (one-time costs are not timed). Models: the tiny test ViT and, unless ``--quick``, the
DINO ViT-S/16 architecture with random init (no download; a random non-zero head, since timm zero-initialises new
heads and a zero head gives all-zero backbone gradients).

    python bench/fisher_scoring.py [--quick] [--samples N] [--batch-size B] [--vmap-chunk-size C]
        [--hooks-chunk-size C] [--repeat K] [--methods vmap,hooks] [--models vit-tiny-test,...] [--image-size P]
        [--threads T]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch

from fedtalos.editing.fisher import DEFAULT_CHUNK_SIZES, fisher_scores, per_sample_loop_scores
from fedtalos.task.model import DINO_VIT_S16, TINY_TEST_VIT, backbone_parameters, build_model

Scorer = Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]


def _best_time(fn: Scorer, data: list[torch.Tensor], repeat: int) -> tuple[float, float, dict[str, torch.Tensor]]:
    """Minimum wall and CPU time over ``repeat`` runs (robust to other processes on a shared machine), the result."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn(data)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu), result


def _max_rel_diff(fast: dict[str, torch.Tensor], slow: dict[str, torch.Tensor]) -> float:
    return max(float((fast[n] - slow[n]).abs().max() / slow[n].abs().max().clamp_min(1e-30)) for n in slow)


def bench_model(
    name: str,
    samples: int,
    batch_size: int,
    chunk_sizes: dict[str, int],
    repeat: int,
    methods: list[str],
    image_size: int = 32,
    seed: int = 0,
) -> dict[str, object]:
    torch.manual_seed(seed)
    model = build_model(name, image_size=image_size, pretrained=False)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.05)
    inputs = torch.randn(samples, 3, image_size, image_size)
    batches = list(inputs.split(batch_size))

    def scorer(method: str) -> Scorer:
        def run(data: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            generator = torch.Generator().manual_seed(seed)
            return fisher_scores(model, data, generator=generator, chunk_size=chunk_sizes[method], method=method)

        return run

    def loop(data: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return per_sample_loop_scores(model, data, generator=torch.Generator().manual_seed(seed))

    result: dict[str, object] = {
        "model": name,
        "scored_entries": sum(p.numel() for _, p in backbone_parameters(model)),
        "image_size": image_size,
        "samples": samples,
        "batch_size": batch_size,
        "repeat": repeat,
    }
    loop([inputs[:2]])
    loop_s, loop_cpu_s, reference = _best_time(loop, batches, repeat)
    result |= {"loop_s": round(loop_s, 4), "loop_cpu_s": round(loop_cpu_s, 4)}
    for method in methods:
        run = scorer(method)
        run([inputs[:2]])
        seconds, cpu_s, scores = _best_time(run, batches, repeat)
        result |= {
            f"{method}_chunk_size": chunk_sizes[method],
            f"{method}_s": round(seconds, 4),
            f"{method}_cpu_s": round(cpu_s, 4),
            f"{method}_speedup": round(loop_s / seconds, 2),
            f"{method}_max_rel_diff": _max_rel_diff(scores, reference),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only, few samples (a smoke run)")
    parser.add_argument("--samples", type=int, default=None, help="samples to score (default 100; quick: 16)")
    parser.add_argument("--batch-size", type=int, default=50, help="samples per batch (one label-sampling forward)")
    parser.add_argument("--vmap-chunk-size", type=int, default=DEFAULT_CHUNK_SIZES["vmap"], help="samples per vmap")
    parser.add_argument(
        "--hooks-chunk-size", type=int, default=DEFAULT_CHUNK_SIZES["hooks"], help="samples per hooks backward pass"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed runs per scorer; the minimum is kept (default: 10 for the tiny ViT, 3 for ViT-S; quick: 1)",
    )
    parser.add_argument("--methods", default="vmap,hooks", help="comma-separated methods to compare with the loop")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--image-size", type=int, default=32, help="input resolution in pixels")
    parser.add_argument("--models", default=None, help=f"comma-separated (default {TINY_TEST_VIT},{DINO_VIT_S16})")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = args.samples or (16 if args.quick else 100)
    default_models = [TINY_TEST_VIT] if args.quick else [TINY_TEST_VIT, DINO_VIT_S16]
    models = args.models.split(",") if args.models else default_models
    methods = [m for m in args.methods.split(",") if m]
    chunk_sizes = {"vmap": args.vmap_chunk_size, "hooks": args.hooks_chunk_size}

    def repeat(model: str) -> int:
        if args.repeat:
            return args.repeat
        return 1 if args.quick else 10 if model == TINY_TEST_VIT else 3

    loadavg_start = list(os.getloadavg())
    results = [
        bench_model(m, samples, args.batch_size, chunk_sizes, repeat(m), methods, args.image_size) for m in models
    ]
    report = {
        "benchmark": "fisher_scoring",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "loadavg_start": loadavg_start,
        "loadavg_end": list(os.getloadavg()),
        "results": results,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
