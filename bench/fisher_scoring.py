"""Benchmark: Fisher scoring with torch.func (vmap over per-sample gradients) vs. the per-sample autograd loop.

For each model, both scorers see the same N random inputs (32 px) and draw the same labels (equal generator
seeds). Prints one JSON object to stdout:

    {"benchmark": "fisher_scoring", "torch": ..., "threads": 2, "device": "cpu", "quick": ..., "results": [
        {"model": ..., "scored_entries": ..., "samples": N, "batch_size": ..., "chunk_size": ..., "repeat": ...,
         "vectorized_s": ..., "loop_s": ..., "speedup": loop_s / vectorized_s, "max_rel_diff": ...}, ...]}

Times are the minimum over ``--repeat`` runs (the machine may be shared). ``max_rel_diff`` is the largest,
over scored tensors, of max|vectorized − loop| / max|loop|. Both scorers get one warm-up call on a couple of
samples first (one-time costs are not timed). Models: the tiny test ViT and, unless ``--quick``, the DINO
ViT-S/16 architecture with random init (no download; a random non-zero head, since timm zero-initialises new
heads and a zero head gives all-zero backbone gradients).

    python bench/fisher_scoring.py [--quick] [--samples N] [--batch-size B] [--chunk-size C] [--repeat K]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch

from fedtalos.editing.fisher import fisher_scores, per_sample_loop_scores
from fedtalos.task.model import DINO_VIT_S16, TINY_TEST_VIT, backbone_parameters, build_model


def _best_time(fn, data: list[torch.Tensor], repeat: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Minimum wall time over ``repeat`` runs (robust to other processes on a shared machine) and the result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(data)
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_model(
    name: str, samples: int, batch_size: int, chunk_size: int, repeat: int, seed: int = 0
) -> dict[str, object]:
    torch.manual_seed(seed)
    model = build_model(name, image_size=32, pretrained=False)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.05)
    inputs = torch.randn(samples, 3, 32, 32)
    batches = list(inputs.split(batch_size))

    def vectorized(data: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return fisher_scores(model, data, generator=torch.Generator().manual_seed(seed), chunk_size=chunk_size)

    def loop(data: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return per_sample_loop_scores(model, data, generator=torch.Generator().manual_seed(seed))

    vectorized([inputs[:2]])
    loop([inputs[:2]])
    vectorized_s, fast = _best_time(vectorized, batches, repeat)
    loop_s, slow = _best_time(loop, batches, repeat)
    rel = max(float((fast[n] - slow[n]).abs().max() / slow[n].abs().max().clamp_min(1e-30)) for n in slow)
    return {
        "model": name,
        "scored_entries": sum(p.numel() for _, p in backbone_parameters(model)),
        "samples": samples,
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "repeat": repeat,
        "vectorized_s": round(vectorized_s, 4),
        "loop_s": round(loop_s, 4),
        "speedup": round(loop_s / vectorized_s, 2),
        "max_rel_diff": rel,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only, few samples (a smoke run)")
    parser.add_argument("--samples", type=int, default=None, help="samples to score (default 100; quick: 16)")
    parser.add_argument("--batch-size", type=int, default=50, help="samples per batch (one label-sampling forward)")
    parser.add_argument("--chunk-size", type=int, default=32, help="samples per vmap call")
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed runs per scorer; the minimum is kept (3; quick: 1)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    samples = args.samples or (16 if args.quick else 100)
    models = [TINY_TEST_VIT] if args.quick else [TINY_TEST_VIT, DINO_VIT_S16]
    repeat = args.repeat or (1 if args.quick else 3)
    results = [bench_model(m, samples, args.batch_size, args.chunk_size, repeat) for m in models]
    report = {
        "benchmark": "fisher_scoring",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "quick": args.quick,
        "results": results,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
