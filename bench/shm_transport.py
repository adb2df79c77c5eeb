"""One client update's shared-memory traffic by part, without training, Ray or Flower: the floor of the app's share.

    python bench/shm_transport.py            # ViT-S/16's 86.5 MB of weights, 10 clients a round, 6 rounds
    python bench/shm_transport.py --quick    # the tiny test ViT, 2 rounds: a smoke run

A server (this process) and a client (one spawned process, one torch thread, as a 1-CPU actor) exchange a cohort's
train payloads through the real transport (:mod:`fedtalos.federation.transport`): the server writes the global
weights (``configure``), the client loads them into its model (``load``: the slot's views into the parameters) and
writes its upload back (``send``), the server takes the upload's views (``inbound``), checks it with the drift's
squared distance (``check``) and folds it into the mean (``fold``). The client's "training" adds a constant, so
every upload differs from the weights. Milliseconds, medians over the clients of the rounds after the first;
``weights_copy_ms`` is one ``copy_`` of the same bytes, the unit of the floor. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _model(name: str) -> torch.nn.Module:
    from fedtalos.task.model import build_model

    return build_model(name, image_size=32, pretrained=False)


def client(conn, model_name: str) -> None:
    """The client's side of each payload: load the weights, 'train', upload; reports its laps."""
    torch.set_num_threads(1)
    from flwr.app import RecordDict

    from fedtalos.federation import transport
    from fedtalos.task.staging import WeightStaging

    staging, model = WeightStaging(), _model(model_name)
    while (job := conn.recv()) is not None:
        config, pid = job
        t0 = time.perf_counter()
        with transport.received(RecordDict(), config) as delivered:
            staging.load(model, delivered.tensors, key=delivered.key)
        t1 = time.perf_counter()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3)
        upload = {n: p.detach() for n, p in model.named_parameters()}
        t2 = time.perf_counter()
        transport.send(upload, config, pid)
        conn.send({"load_ms": 1000 * (t1 - t0), "send_ms": 1000 * (time.perf_counter() - t2)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 rounds")
    parser.add_argument("--model", default="vit_small_patch16_224.dino")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cohort", type=int, default=10)
    args = parser.parse_args()
    if args.quick:
        args.model, args.rounds, args.cohort = "vit-tiny-test", 2, 3
    torch.set_num_threads(1)
    from flwr.app import RecordDict

    from bench.round_overhead import copy_ms
    from fedtalos.federation import protocol as P
    from fedtalos.federation.aggregate import ClientUpdate, RunningMean
    from fedtalos.federation.transport import ServerTransport

    model = _model(args.model)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    process = context.Process(target=client, args=(there, args.model))
    process.start()
    cohort, sums, rows, configure = list(range(args.cohort)), {}, [], []
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="fedtalos-shm-bench-", dir=shm) as tmp:
        server = ServerTransport("shared-memory", "bench", Path(tmp))
        try:
            for r in range(args.rounds):
                t = time.perf_counter()
                _, config = server.outbound(weights, f"train-{r}", cohort)
                configure.append(1000 * (time.perf_counter() - t))
                mean = RunningMean(buffers=sums)
                for pid in cohort:
                    here.send((config, pid))
                    row = here.recv()
                    t0 = time.perf_counter()
                    tensors, _ = server.inbound(RecordDict(), f"train-{r}", pid)
                    t1 = time.perf_counter()
                    reference = {k: weights[k] for k in shapes}
                    distance = P.squared_distance(P.check_tensors(tensors, shapes, None), reference)
                    t2 = time.perf_counter()
                    mean.offer(ClientUpdate(pid, 1, tensors, {}, distance), reference, dict.fromkeys(cohort, 1))
                    t3 = time.perf_counter()
                    row |= {"inbound_ms": 1000 * (t1 - t0), "check_ms": 1000 * (t2 - t1), "fold_ms": 1000 * (t3 - t2)}
                    rows.append((r, row))
                server.done(f"train-{r}")
        finally:
            here.send(None)
            process.join()
            server.close()
    steady = [row for r, row in rows if r > 0] or [row for _, row in rows]
    numel = sum(v.numel() for v in weights.values())
    parts = {k: round(statistics.median(row[k] for row in steady), 2) for k in steady[0]}
    report = {
        "benchmark": "shm_transport",
        "model": args.model,
        "weights_mb": round(4 * numel / 1e6, 1),
        "cohort": args.cohort,
        "rounds": args.rounds,
        "configure_ms": round(statistics.median(configure[1:] or configure), 2),
        "client_ms": parts,
        "client_total_ms": round(parts["load_ms"] + parts["send_ms"], 2),
        "server_per_client_ms": round(parts["inbound_ms"] + parts["check_ms"] + parts["fold_ms"], 2),
        "weights_copy_ms": round(copy_ms(numel, repeats=9), 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
