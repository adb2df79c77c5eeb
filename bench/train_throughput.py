"""Training-step throughput: fedtalos's path vs a bare timm + torch loop on the same batches.

    python bench/train_throughput.py             # tiny test ViT and DINO ViT-S/16 (random init) at 32 px
    python bench/train_throughput.py --quick     # tiny model only, few steps

"bare": a plain loop over batches prepared in advance (already augmented, resized, normalised):
``loss = cross_entropy(model(x), y); zero_grad; backward; step``. "fedtalos_loop": ``task.train.train_steps`` over
the same prepared batches (``ratio_same_batches``: the loop's own cost). "fedtalos": ``train_steps`` over
``task.batches.iterate_batches`` from the uint8 images, i.e. with the batched augmentation done on the fly
(``ratio``: the whole centralized training path). Same model init, optimizer and batch size; the two are timed in
alternation (A, B, A, B, ...) and the median of each is reported, so load changes on the machine hit both alike.
Prints one JSON object with images/s and the ratio fedtalos / bare (target ≥ 0.97).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtalos.seeds import make_generator  # noqa: E402
from fedtalos.task.batches import ImageTransform, iterate_batches  # noqa: E402
from fedtalos.task.model import build_model  # noqa: E402
from fedtalos.task.train import train_steps  # noqa: E402


def measure(name: str, image_size: int, batch: int, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 100, (batch * steps,))
    transform = ImageTransform(image_size, train=True)
    prepared = [
        (transform(images[i : i + batch], make_generator(i)), labels[i : i + batch])
        for i in range(0, len(labels), batch)
    ]
    model = build_model(name, image_size=image_size, pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def bare() -> None:
        model.train()
        for x, y in prepared:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def ours() -> None:
        batches = iterate_batches(
            images, labels, transform, batch_size=batch, generator=make_generator(0), num_steps=steps
        )
        train_steps(model, opt, batches)

    def ours_same_batches() -> None:
        train_steps(model, opt, prepared)

    runners = {"bare": bare, "fedtalos_loop": ours_same_batches, "fedtalos": ours}
    for fn in runners.values():  # warm-up: allocations, kernels
        fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for label, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    per_s = {k: batch * steps / statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        "image_size": image_size,
        "batch_size": batch,
        "steps": steps,
        "repeats": repeats,
        "bare_img_per_s": per_s["bare"],
        "fedtalos_loop_img_per_s": per_s["fedtalos_loop"],
        "fedtalos_img_per_s": per_s["fedtalos"],
        "ratio_same_batches": per_s["fedtalos_loop"] / per_s["bare"],
        "ratio": per_s["fedtalos"] / per_s["bare"],
        "fedtalos_step_ms": 1000 * statistics.median(times["fedtalos"]) / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("vit-tiny-test", 32, 32, 20, 15)]
    if args.quick:
        cases = [("vit-tiny-test", 32, 16, 5, 2)]
    else:
        cases.append(("vit_small_patch16_224.dino", 32, 32, 8, 11))
    results = [measure(*case) for case in cases]
    print(
        json.dumps(
            {"benchmark": "train_throughput", "threads": args.threads, "torch": torch.__version__, "results": results}
        )
    )


if __name__ == "__main__":
    main()
