"""Flower's share of a client update in simulation: delivery and reply per client, Flower as installed and with a
benchmark-only patch of its message path (:mod:`bench.flower_patch`).

    python bench/flower_share.py                                   # tiny model, K=100, cohort 5, J=4, 10 rounds
    python bench/flower_share.py --variants none,wake              # only these
    python bench/flower_share.py --model vit_small_patch16_224.dino --rounds 6

Each variant is one ``flwr run .`` of the real app on its own local SuperLink (two 1-CPU actors on this machine),
on the same generated CIFAR-format data. Per variant: the medians over the steady rounds (after the first, before
the last) of the per-client ``delivery``, ``setup``, ``reply``, ``accept`` and ``steps`` in ms
(:mod:`fedtalos.federation.timing`), ``flower_ms`` = delivery + reply, the round's wall time and its ``clients_s``,
and the modules the patch reports it patched (a patched variant whose patch did not apply is an error).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import flower_patch  # noqa: E402
from bench.round_overhead import round_config  # noqa: E402

PARTS = ("delivery", "setup", "reply", "accept", "steps")


def summarize(rows: list[dict[str, Any]], steady: list[int]) -> dict[str, Any]:
    """Medians over the train rounds in ``steady`` of the per-client parts (ms), Flower's share (delivery +
    reply, ms), the round's wall time and time with the clients (s). A part no row has is left out."""
    chosen = [r for r in rows if r.get("phase", "train") == "train" and r.get("round") in steady]

    def median(key: str) -> float | None:
        values = [r[key] for r in chosen if isinstance(r.get(key), int | float)]
        return statistics.median(values) if values else None

    per_client = {f"{p}_ms": 1000 * v for p in PARTS if (v := median(f"client_{p}_s")) is not None}
    shares = [1000 * (r["client_delivery_s"] + r["client_reply_s"]) for r in chosen if "client_reply_s" in r]
    return {
        "rounds": len(chosen),
        "per_client_ms": per_client,
        "flower_ms": statistics.median(shares) if shares else None,
        "round_wall_s": median("wall_s"),
        "clients_s": median("clients_s"),
    }


def run_variant(variant: str, work: Path, overrides: dict[str, Any], clients: int, steady: list[int]) -> dict:
    """One ``flwr run`` of the app with ``variant`` of the patch; its :func:`summarize` and patched modules."""
    from fedtalos.launch.flwr_run import flwr_run
    from fedtalos.launch.superlink import private_superlink
    from fedtalos.testing.processes import stop_local_superlink

    home, mark = work / f"flwr-home-{variant}", work / f"patched-{variant}.txt"
    env = {"HF_HUB_OFFLINE": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    env |= flower_patch.install(work / f"patch-{variant}", variant, mark)
    overrides = {**overrides, "run-name": f"bench-{variant}"}
    try:
        with private_superlink(home, env=env) as run_env:
            result = flwr_run(
                ROOT, overrides, f"num-supernodes={clients} client-resources-num-cpus=1", env=run_env, echo=False
            )
    finally:
        stop_local_superlink(home)
    report: dict[str, Any] = {"variant": variant, "status": result.status}
    if not result.ok:
        return report | {"tail": result.tail}
    metrics = Path(overrides["output-root"]) / f"bench-{variant}" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    report |= summarize(rows, steady)
    report["patched"] = flower_patch.patched_modules(mark)
    if variant != "none" and not report["patched"]:
        report["status"] = "error: the patch was not applied"
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(flower_patch.VARIANTS), help="comma-separated, in order")
    parser.add_argument("--model", default="vit-tiny-test")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=100, help="generated train images per class")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in flower_patch.VARIANTS:
            parser.error(f"unknown variant {v!r}; one of {', '.join(flower_patch.VARIANTS)}")

    with tempfile.TemporaryDirectory(prefix="fedtalos-flower-share-") as tmp:
        report = measure(Path(tmp), variants, args)
    print(json.dumps(report))
    if any(r["status"] != "finished:completed" for r in report["variants"]):
        sys.exit(1)


def measure(work: Path, variants: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Generate the data under ``work`` and run each variant; the report."""
    from fedtalos.testing.synthetic import write_fake_cifar100

    write_fake_cifar100(work / "data", train_per_class=args.per_class, test_per_class=10)
    overrides = {
        **round_config(work / "data", args.model, args.image_size, args.clients, args.fraction, args.rounds),
        "output-root": str(work / "runs"),
    }
    steady = list(range(2, args.rounds))
    results = [run_variant(v, work, overrides, args.clients, steady) for v in variants]
    return {
        "benchmark": "flower_share",
        "model": args.model,
        "image_size": args.image_size,
        "clients": args.clients,
        "cohort": max(1, round(args.fraction * args.clients)),
        "local_steps": 4,
        "batch_size": 32,
        "steady_rounds": steady,
        "variants": results,
    }


if __name__ == "__main__":
    main()
