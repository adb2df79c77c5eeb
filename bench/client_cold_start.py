"""Cold start of one deployed message: what a fresh ClientApp process spends before its first training step.

    python bench/client_cold_start.py               # ViT-S/16 and the tiny test model, 7 fresh processes each
    python bench/client_cold_start.py --quick       # tiny model only, 2 processes, a small data set: a smoke run

On Flower's Deployment Engine every message starts a new ClientApp process, so each message pays Python's imports,
the node's data, the model and the global weights again. Each run here is a fresh ``python`` subprocess that does
what the ClientApp does for a train message, timing each part:

- ``import_torch``: ``import torch`` (outside the app's control);
- ``import_flower``: ``flwr.app`` and ``flwr.clientapp`` (Flower's process has imported them before it loads the app);
- ``import_app``: ``import fedtalos.client_app`` on top of both;
- ``import_dynamo``: ``torch._dynamo``, torch's compiler stack: torchvision (through timm) imports it, and so does
  a client's first optimizer step without it, so it is torch's share, not the app's;
- ``import_timm``: timm (which imports torchvision), the model's library, imported on its own to show its share;
- ``setup``: the run config and the per-process resources, without the two parts below;
- ``data``: the node's shard in memory (reading CIFAR's files, the split, the partition, the shard's rows);
- ``model``: building the architecture (ViT-S/16 without a pretrained download; the client never needs one);
- ``weights``: the global weights from a shared-memory slot (as the transport delivers them in simulation) into
  the model.

``app_s`` is the app's part, everything after torch's and Flower's imports, timm's import included.
Medians over the runs. The data is generated (:mod:`fedtalos.testing.synthetic`) in CIFAR-100's on-disk format
at the real set's size (500 train and 100 test images per class) unless ``--per-class`` says otherwise; K = 100
partitions, the node holds partition 0. The first run builds whatever the app caches on disk; it is reported apart
(``first``) and left out of the medians. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WEIGHTS_SEQUENCE = 1  # the slot's payload (any non-zero number the reader is told)
MODELS = {"vit-s16": "vit_small_patch16_224.dino", "tiny": "vit-tiny-test"}
PARTS = (
    "import_torch",
    "import_flower",
    "import_app",
    "import_dynamo",
    "import_timm",
    "setup",
    "data",
    "model",
    "weights",
)
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "OMP_NUM_THREADS": "1",
}


def run_config_values(model: str, root: Path, image_size: int, clients: int) -> dict:
    """The run-config values of a client of a run on the generated data at ``root``."""
    return {
        "model": model,
        "image-size": image_size,
        "dataset-root": str(root),
        "dataset-verify": False,
        "dataset-download": False,
        "device": "cpu",
        "num-clients": clients,
    }


def child(values: dict, weights_file: str, pid: int) -> dict[str, float]:
    """One cold start, in this (fresh) process: seconds per part."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    import torch

    times["import_torch"] = time.perf_counter() - t
    t = time.perf_counter()
    import flwr.app
    import flwr.clientapp  # noqa: F401

    times["import_flower"] = time.perf_counter() - t
    t = time.perf_counter()
    import fedtalos.client_app as client_app

    times["import_app"] = time.perf_counter() - t

    import fedtalos.task.resources as resources_module
    from fedtalos.config import RunConfig
    from fedtalos.federation import transport

    spent = {"data": 0.0, "model": 0.0}

    def timed(part: str, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start

        return wrapper

    resources_module.load_cifar100 = timed("data", resources_module.load_cifar100)
    resources_module.build_model = timed("model", resources_module.build_model)
    t = time.perf_counter()
    import torch._dynamo  # noqa: F401

    times["import_dynamo"] = time.perf_counter() - t
    t = time.perf_counter()
    import timm  # noqa: F401

    times["import_timm"] = time.perf_counter() - t
    t = time.perf_counter()
    config = RunConfig.from_mapping(values)
    resources = getattr(client_app, "client_resources", client_app.get_resources)(config)
    data_in_setup = spent["data"]  # the whole data set, where resources load it eagerly
    times["setup"] = time.perf_counter() - t - data_in_setup - spent["model"]
    t = time.perf_counter()
    images, labels = resources.client_data(pid)
    times["data"] = data_in_setup + time.perf_counter() - t
    times["model"] = spent["model"]
    t = time.perf_counter()
    delivery = {transport.WEIGHTS_FILE: weights_file, transport.SEQUENCE: WEIGHTS_SEQUENCE}
    with transport.received(None, delivery) as delivered:
        client_app.staging.load(resources.model, delivered.tensors, key=delivered.key)
    times["weights"] = time.perf_counter() - t
    assert len(labels) == len(images) > 0
    return times


def cold_starts(values: dict, weights_file: Path, runs: int) -> list[dict[str, float]]:
    """``runs`` cold starts, each in a fresh interpreter."""
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = []
    for _ in range(runs):
        args = [sys.executable, __file__, "--child", json.dumps(values), str(weights_file)]
        result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"the cold-start child failed:\n{result.stderr}")
        out.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return out


def summary(runs: list[dict[str, float]]) -> dict:
    """Per-part medians (ms) of ``runs`` and the app's part."""
    for r in runs:
        r["app_s"] = sum(r[p] for p in PARTS if p not in ("import_torch", "import_flower", "import_dynamo"))
    return {k: round(1000 * statistics.median(r[k] for r in runs), 1) for k in (*PARTS, "app_s")}


def write_weights(values: dict, path: Path) -> None:
    """The model's state dict in a slot, as the server would deliver it (random weights: only their size matters)."""
    import torch

    from fedtalos.config import RunConfig
    from fedtalos.federation.shared_memory import Slot
    from fedtalos.task.model import build_model

    config = RunConfig.from_mapping(values)
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=100, image_size=config.image_size, pretrained=False)
    slot = Slot(path, create=True)
    slot.write(model.state_dict(), WEIGHTS_SEQUENCE)
    slot.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 run after the first, 20/4 per class")
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per model (after the first)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["vit-s16", "tiny"])
    parser.add_argument("--per-class", type=int, default=500, help="train images per class (test: a fifth)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--child", nargs=2, metavar=("VALUES", "WEIGHTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child[0]), args.child[1], pid=0)))
        return
    if args.quick:
        args.runs, args.models, args.per_class = 1, ["tiny"], 20
    from fedtalos.testing.synthetic import write_fake_cifar100

    report: dict = {
        "benchmark": "client_cold_start",
        "runs": args.runs,
        "per_class": args.per_class,
        "clients": args.clients,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="fedtalos-cold-") as tmp:
        root = write_fake_cifar100(Path(tmp) / "data", args.per_class, max(1, args.per_class // 5))
        for name in args.models:
            values = run_config_values(MODELS[name], root, args.image_size, args.clients)
            weights = Path(tmp) / f"{name}.slot"
            write_weights(values, weights)
            first, *steady = cold_starts(values, weights, 1 + args.runs)
            report[name] = {"first": summary([first]), "median": summary(steady)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
