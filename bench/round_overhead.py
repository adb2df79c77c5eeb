"""Round overhead of the federated app: `flwr run .` vs the pure compute of the same cohort in one process.

    python bench/round_overhead.py                # ViT-S/16 at 32 px, K=100, C=0.1, J=4, batch 32
    python bench/round_overhead.py --clients 1000 --fraction 0.01  # scaling in K: same 10-client cohort
    python bench/round_overhead.py --quick        # tiny model, K=10, 4 rounds: a smoke run

Both sides run the same cohorts (sampled from (seed, round)) on the same generated CIFAR-format data. The pure
side loads the global weights into one model and runs each client's J SGD steps on its batches, accumulating the
weighted average, in one plain PyTorch process with all cores, before and after the Flower run; a second pure side
runs with the actors' parallelism (P processes × T threads, P = cores ÷ cpus-per-client, each taking the next
client as it frees up, as actors do).

Per-client overhead, two ways: (a) ``per_client_overhead_ms``, instrumented: the median over the steady rounds of
the time a client update spends outside its J optimizer steps (``fedtalos.federation.timing``: delivery, set-up,
reply, accept: the check and the fold into the mean, as the reply arrives) plus its share of the aggregation;
split into ``app_share_ms`` (set-up, accept, aggregation share) and ``flower_share_ms`` (delivery and reply: Flower's
and Ray's message path); (b) ``per_client_overhead_vs_pure_ms``: (steady round − the same-parallelism pure round) ÷
cohort. ``weights_copy_ms`` is one ``copy_`` of the model's weights on this machine, the scale of the limit.
``server_ms_per_round``: the server's time per round outside the clients (configure, the checks left after the last
reply, aggregate, checkpoint hand-off); ``server_work_ms_per_round``: all its work, the checks it does while clients
train included. The Flower side is
the real app through the local SuperLink and the Ray simulation engine; its steady-state round time is the median
of the server's per-round wall time over the rounds after the first (actors warming up) and before the last (test
evaluation). Ray start-up is excluded. Peak resident memory of the whole process tree and of the simulation driver
is sampled twice a second. The scaling comparison keeps the cohort at 10 clients (C·K fixed), so that only K
changes between the two runs.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtalos.config import RunConfig  # noqa: E402
from fedtalos.federation.cohort import sample_cohort  # noqa: E402
from fedtalos.launch.flwr_run import flwr_run  # noqa: E402
from fedtalos.seeds import FEDERATED_STREAMS, make_generator  # noqa: E402
from fedtalos.task.resources import get_resources  # noqa: E402
from fedtalos.task.train import train_steps  # noqa: E402
from fedtalos.testing.processes import private_simulation_superlink, processes_under  # noqa: E402
from fedtalos.testing.synthetic import write_fake_cifar100  # noqa: E402


def _rss_bytes(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


class MemorySampler(threading.Thread):
    """Peak RSS of the process tree under a FLWR_HOME, and of the simulation driver in it."""

    def __init__(self, fragment: str) -> None:
        super().__init__(daemon=True)
        self.fragment = fragment
        self.peak_total = self.peak_driver = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            pids = processes_under(self.fragment)
            self.peak_total = max(self.peak_total, sum(_rss_bytes(p) for p in pids))
            for pid in pids:
                try:
                    cmd = " ".join(psutil.Process(pid).cmdline())
                except psutil.Error:
                    continue
                if "flwr-simulation" in cmd:
                    self.peak_driver = max(self.peak_driver, _rss_bytes(pid))


def pure_compute(config: RunConfig, rounds: list[int]) -> list[float]:
    """Seconds per round for the cohort's J steps per client in one process (weights reloaded per client)."""
    torch.set_num_threads(os.cpu_count() or 1)
    res = get_resources(config)
    start = res.weights()
    times = []
    for r in rounds:
        cohort = sample_cohort(config.seed, "train", r, config.num_clients, config.cohort_size)
        t0 = time.perf_counter()
        total: dict[str, torch.Tensor] = {}
        for pid in cohort:
            res.model.load_state_dict(start)
            opt = torch.optim.SGD(res.model.parameters(), lr=config.lr, momentum=config.momentum)
            images, labels = res.client_data(pid)
            batches = res.train_batches(
                images, labels, make_generator(config.seed, FEDERATED_STREAMS["train"], r, pid), config.local_steps
            )
            train_steps(res.model, opt, batches)
            for k, v in res.model.state_dict().items():
                if k in total:
                    total[k].add_(v, alpha=len(labels))
                else:
                    total[k] = v.detach().mul(len(labels))
        times.append(time.perf_counter() - t0)
    return times


_WORKER: dict = {}


def _worker_init(values: dict, threads: int) -> None:
    torch.set_num_threads(threads)
    config = RunConfig.from_mapping(values)
    res = get_resources(config)
    _WORKER.update(config=config, res=res, start=res.weights())


def _worker_client(job: tuple[int, int]) -> float:
    """One client's weights in and J steps (as an actor does), in a pool worker; returns its seconds."""
    r, pid = job
    config, res = _WORKER["config"], _WORKER["res"]
    t0 = time.perf_counter()
    res.model.load_state_dict(_WORKER["start"])
    opt = torch.optim.SGD(res.model.parameters(), lr=config.lr, momentum=config.momentum)
    images, labels = res.client_data(pid)
    batches = res.train_batches(
        images, labels, make_generator(config.seed, FEDERATED_STREAMS["train"], r, pid), config.local_steps
    )
    train_steps(res.model, opt, batches)
    return time.perf_counter() - t0


def pure_parallel(values: dict, config: RunConfig, rounds: list[int], processes: int, threads: int) -> list[float]:
    """Seconds per round for the cohort's clients spread over ``processes`` workers of ``threads`` threads each."""
    import multiprocessing

    times = []
    with multiprocessing.get_context("spawn").Pool(processes, _worker_init, (values, threads)) as pool:
        pool.map(_worker_client, [(1, p) for p in range(processes)], chunksize=1)  # warm every worker
        for r in rounds:
            cohort = sample_cohort(config.seed, "train", r, config.num_clients, config.cohort_size)
            t0 = time.perf_counter()
            list(pool.imap_unordered(_worker_client, [(r, p) for p in cohort], chunksize=1))
            times.append(time.perf_counter() - t0)
    return times


def weights_copy_ms(config: RunConfig, repeats: int = 15) -> float:
    """Median milliseconds of one ``copy_`` of the model's weights (one flat buffer of their size)."""
    return copy_ms(sum(v.numel() for v in get_resources(config).model.state_dict().values()), repeats)


def copy_ms(numel: int, repeats: int = 15) -> float:
    """Median milliseconds of one ``copy_`` of ``numel`` float32 values, one flat buffer to another."""
    src, dst = torch.randn(numel), torch.empty(numel)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def round_config(data: Path, model: str, image_size: int, clients: int, fraction: float, rounds: int) -> dict[str, Any]:
    """The run config of the round benchmarks (this one and ``bench/flower_share.py``): generated data at ``data``,
    J = 4, batch 32, a constant lr, evaluation only at the last round, random weights, on the CPU."""
    return {
        "dataset-root": str(data),
        "dataset-verify": False,
        "dataset-download": False,
        "model": model,
        "pretrained": False,
        "image-size": image_size,
        "num-clients": clients,
        "fraction-train": fraction,
        "local-steps": 4,
        "batch-size": 32,
        "num-server-rounds": rounds,
        "eval-every": rounds,
        "device": "cpu",
        "lr-schedule": "constant",
        "eval-batch-size": 500,
    }


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, K=10, 4 rounds")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument(
        "--fraction", type=float, default=0.1, help="fraction-train C; keep C*K fixed to compare K at equal work"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--model", default="vit_small_patch16_224.dino")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--gpus-per-client", type=float, default=0.0, help="GPU fraction per actor (with --device)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps: the clients', server's and pure side's")
    parser.add_argument("--per-class", type=int, default=400, help="generated train images per class")
    parser.add_argument("--extra", default="", help="extra run-config overrides, TOML 'k=v' pairs")
    args = parser.parse_args()
    if args.quick:
        args.model, args.clients, args.rounds, args.per_class = "vit-tiny-test", 10, 4, 40

    work = Path(tempfile.mkdtemp(prefix="fedtalos-bench-"))
    write_fake_cifar100(work / "data", train_per_class=args.per_class, test_per_class=10)
    overrides = {
        **round_config(work / "data", args.model, args.image_size, args.clients, args.fraction, args.rounds),
        "output-root": str(work / "runs"),
        "run-name": "bench",
        "device": args.device,
    }
    if args.extra:
        from flwr.common.config import parse_config_args

        overrides.update(parse_config_args([args.extra]))
    config = RunConfig.from_mapping(overrides)
    steady = list(range(2, args.rounds))

    # The pure side runs before and after the Flower run (round 1 warms up and is not counted), so a slow phase of
    # a shared machine weighs on both sides alike.
    pure = pure_compute(config, [1, *steady])[1:]
    processes = max(1, (os.cpu_count() or 1) // args.cpus_per_client)
    if args.gpus_per_client:  # as many actors as the GPU fractions allow, if the cores do
        processes = min(processes, int(1 / args.gpus_per_client + 1e-9))
    same = pure_parallel(overrides, config, steady, processes, args.cpus_per_client)
    copy_ms = weights_copy_ms(config)

    home = work / "flwr-home"
    with private_simulation_superlink(home) as env:
        env.update({"HF_HUB_OFFLINE": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"})
        sampler = MemorySampler(str(home))
        sampler.start()
        started = time.perf_counter()
        federation = f"num-supernodes={args.clients} client-resources-num-cpus={args.cpus_per_client}"
        if args.gpus_per_client:
            federation += f" client-resources-num-gpus={args.gpus_per_client}"
        try:
            result = flwr_run(ROOT, overrides, federation, env=env, echo=False)
        finally:
            sampler.stopped.set()
    total_s = time.perf_counter() - started
    pure += pure_compute(config, steady)
    same += pure_parallel(overrides, config, steady, processes, args.cpus_per_client)
    if not result.ok:
        print(json.dumps({"benchmark": "round_overhead", "status": result.status, "tail": result.tail}))
        sys.exit(1)
    rows = [json.loads(line) for line in (work / "runs" / "bench" / "metrics.jsonl").read_text().splitlines()]
    flower = [r["wall_s"] for r in rows if r["round"] in steady]
    steady_rows = [r for r in rows if r["round"] in steady]
    breakdown = {
        k: statistics.median(r.get(k, 0.0) for r in steady_rows)
        for k in ("configure_s", "clients_s", "aggregate_s", "eval_s", "checkpoint_s")
    }
    cohort = config.cohort_size
    per_client = {  # ms per client update, medians over the steady rounds
        k.removeprefix("client_").removesuffix("_s") + "_ms": 1000 * v
        for k in ("client_delivery_s", "client_setup_s", "client_reply_s", "client_accept_s", "client_steps_s")
        if (v := _median(steady_rows, k)) is not None
    }
    per_client["aggregate_share_ms"] = 1000 * breakdown["aggregate_s"] / cohort
    setup_parts = {  # of setup_ms: the global weights into the model, the upload out (the rest is everything else)
        k.removeprefix("client_").removesuffix("_s") + "_ms": 1000 * v
        for k in ("client_weights_s", "client_upload_s")
        if (v := _median(steady_rows, k)) is not None
    }
    overhead_a = [
        1000 * (r["client_overhead_s"] + r.get("aggregate_s", 0.0) / cohort)
        for r in steady_rows
        if r.get("client_overhead_s") is not None
    ]
    app_share = sum(per_client.get(k, 0.0) for k in ("setup_ms", "accept_ms", "aggregate_share_ms"))
    flower_share = sum(per_client.get(k, 0.0) for k in ("delivery_ms", "reply_ms"))
    own = ("configure_s", "aggregate_s", "checkpoint_s")
    server = [1000 * (sum(r.get(k, 0) for k in own) + r.get("after_last_reply_s", 0)) for r in steady_rows]
    server_work = [1000 * (sum(r.get(k, 0) for k in own) + cohort * r.get("client_accept_s", 0)) for r in steady_rows]
    summary = json.loads((work / "runs" / "bench" / "summary.json").read_text())
    report = {
        "benchmark": "round_overhead",
        "status": result.status,
        "model": args.model,
        "image_size": args.image_size,
        "clients": args.clients,
        "cohort": config.cohort_size,
        "local_steps": 4,
        "batch_size": 32,
        "cpus_per_client": args.cpus_per_client,
        "cpu_count": os.cpu_count(),
        "steady_rounds": steady,
        "flower_round_s": statistics.median(flower) if flower else None,
        "pure_round_s": statistics.median(pure),
        "ratio": statistics.median(flower) / statistics.median(pure) if flower else None,
        "pure_same_parallelism_round_s": statistics.median(same),
        "pure_same_parallelism": f"{processes} processes x {args.cpus_per_client} threads",
        "pure_same_parallelism_rounds_s": same,
        "per_client_overhead_ms": statistics.median(overhead_a) if overhead_a else None,
        "per_client_overhead_vs_pure_ms": (
            1000 * (statistics.median(flower) - statistics.median(same)) / cohort if flower else None
        ),
        "weights_copy_ms": copy_ms,
        "per_client_breakdown_ms": per_client,
        "setup_parts_ms": setup_parts,
        "app_share_ms": app_share,
        "flower_share_ms": flower_share,
        "server_ms_per_round": statistics.median(server) if server else None,
        "server_work_ms_per_round": statistics.median(server_work) if server_work else None,
        "server_target_ms_per_round": 5 * cohort + 50,
        "run_wall_s": summary.get("run_wall_s"),
        "startup_s": summary.get("startup_s"),
        "startup_breakdown_s": summary.get("startup"),
        "flower_round_breakdown_s": breakdown,
        "flower_rounds_s": flower,
        "pure_rounds_s": pure,
        "flwr_run_total_s": total_s,
        "peak_rss_total_gb": sampler.peak_total / 2**30,
        "peak_rss_driver_gb": sampler.peak_driver / 2**30,
        "bytes_up_per_client": rows[-1]["bytes_up"] / rows[-1]["clients_ok"] if rows else None,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
