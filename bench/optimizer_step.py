"""One optimizer step over a ViT's parameters: aten operators dispatched and wall time, SparseSGDM vs torch SGD.

    python bench/optimizer_step.py           # DINO ViT-S/16 (random init) and the tiny test ViT
    python bench/optimizer_step.py --quick   # tiny model only, few steps

Cases (momentum 0.9, lr 0.01, random gradients, fp32 on the CPU): ``sgd_single`` / ``sgd_foreach`` are
``torch.optim.SGD(foreach=False / True)`` over every parameter; ``sparse_dense`` is SparseSGDM without masks (dense
FedAvg's client step); ``sparse_masked`` is SparseSGDM over the backbone with a random mask per tensor at sparsity
0.9 (sparse fine-tuning, head frozen). ``ops_per_step``: aten operators per step as Python dispatch sees them (a
foreach call counts once: on a GPU each operator is one or a few kernel launches, so this is what a GPU step pays in
launches); ``ms_per_step``: median over repeats (the CPU runs foreach calls tensor by tensor, so the time here shows
no launch savings, only that nothing got slower). ``bitwise_equal_to_sgd``: the dense SparseSGDM trajectory equals
``sgd_foreach``'s and ``sgd_single``'s bit for bit after the timed steps. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtalos.editing.optim import SparseSGDM  # noqa: E402
from fedtalos.task.model import backbone_parameters, build_model  # noqa: E402
from fedtalos.testing.dispatch import count_aten_ops  # noqa: E402


def measure(name: str, steps: int, repeats: int) -> dict:
    model = build_model(name, pretrained=False)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    backbone = {n for n, _ in backbone_parameters(model)}
    g = torch.Generator().manual_seed(0)
    start = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    grads = [{n: torch.randn(s, generator=g) for n, s in shapes.items()} for _ in range(steps)]
    masks = {n: torch.rand(shapes[n], generator=g) < 0.1 for n in backbone}

    def make(kind: str) -> tuple[torch.optim.Optimizer, dict[str, torch.nn.Parameter]]:
        names = sorted(backbone) if kind == "sparse_masked" else list(shapes)
        params = {n: torch.nn.Parameter(start[n].clone()) for n in names}
        options = {"lr": 0.01, "momentum": 0.9}
        if kind.startswith("sgd"):
            return torch.optim.SGD(params.values(), foreach=kind == "sgd_foreach", **options), params
        masks_of = [masks[n] for n in names] if kind == "sparse_masked" else None
        return SparseSGDM(list(params.values()), masks_of, **options), params

    def stepper(opt: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter]) -> Callable[[int], None]:
        def step(i: int) -> None:
            for n, p in params.items():
                p.grad = grads[i][n]
            opt.step()

        return step

    kinds = ["sgd_single", "sgd_foreach", "sparse_dense", "sparse_masked"]
    runs = {k: make(k) for k in kinds}
    steppers = {k: stepper(*runs[k]) for k in kinds}
    for step in steppers.values():  # the first step creates the momentum buffers: count a steady-state step
        step(0)
    ops = {k: sum(count_aten_ops(lambda s=s: s(1 % steps)).values()) for k, s in steppers.items()}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeats):
        for k, step in steppers.items():  # alternated, so load changes hit every case alike
            t0 = time.perf_counter()
            for i in range(steps):
                step(i)
            times[k].append((time.perf_counter() - t0) / steps)
    final = {k: runs[k][1] for k in kinds}
    bitwise = all(
        torch.equal(final["sparse_dense"][n].view(torch.int32), final[ref][n].view(torch.int32))
        for ref in ("sgd_single", "sgd_foreach")
        for n in shapes
    )
    return {
        "model": name,
        "tensors": len(shapes),
        "masked_tensors": len(backbone),
        "steps": steps,
        "repeats": repeats,
        "ops_per_step": ops,
        "ms_per_step": {k: 1000 * statistics.median(v) for k, v in times.items()},
        "bitwise_equal_to_sgd": bitwise,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = (
        [("vit-tiny-test", 3, 2)] if args.quick else [("vit-tiny-test", 20, 7), ("vit_small_patch16_224.dino", 5, 7)]
    )
    results = [measure(*case) for case in cases]
    print(
        json.dumps(
            {"benchmark": "optimizer_step", "threads": args.threads, "torch": torch.__version__, "results": results}
        )
    )


if __name__ == "__main__":
    main()
