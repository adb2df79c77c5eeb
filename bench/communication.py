"""Bytes on the wire per client and round: dense FedAvg vs sparse fine-tuning (the mask known to both sides).

    python bench/communication.py            # DINO ViT-S/16 architecture (random init) at 32 px, sparsity 0.9
    python bench/communication.py --quick    # the tiny test ViT

Runs the real ServerApp against the in-process grid (the real ClientApp, messages pickled as Flower would) for
three training rounds, once dense and once with a frozen ridge head and a `random` mask at the given sparsity,
and reads the payload bytes the server logs per round. The mask is content-addressed and sent to a node only the
first time it trains under it, so `bytes_down` of later rounds does not include it. Target: sparse upload per
client ≤ (1 − s) × dense + 1 %. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FEDTALOS_CACHE", tempfile.mkdtemp(prefix="fedtalos-bench-cache-"))

import torch  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedtalos.server_app import main as server_main  # noqa: E402
from fedtalos.testing.synthetic import write_fake_cifar100  # noqa: E402
from tests.support.fakegrid import FakeGrid  # noqa: E402


def run(overrides: dict) -> list[dict]:
    grid = FakeGrid(overrides["num-clients"], overrides)
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=overrides))
    path = Path(overrides["output-root"]) / overrides["run-name"] / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    work = Path(tempfile.mkdtemp(prefix="fedtalos-bench-"))
    write_fake_cifar100(work / "data", train_per_class=20, test_per_class=2)
    base = {
        "dataset-root": str(work / "data"),
        "dataset-verify": False,
        "dataset-download": False,
        "output-root": str(work / "runs"),
        "model": "vit-tiny-test" if args.quick else "vit_small_patch16_224.dino",
        "pretrained": False,
        "image-size": 32,
        "num-clients": 10,
        "fraction-train": 0.2,
        "local-steps": 1,
        "batch-size": 8,
        "num-server-rounds": 3,
        "eval-every": 3,
        "device": "cpu",
        "lr-schedule": "constant",
        "progress": False,
    }
    dense = [r for r in run(dict(base, **{"run-name": "dense"})) if r["phase"] == "train"]
    sparse_rows = run(
        dict(base, **{"run-name": "sparse", "head": "ridge", "mask-rule": "random", "sparsity": args.sparsity})
    )
    sparse = [r for r in sparse_rows if r["phase"] == "train"]
    per_client = lambda rows, key: [r[key] / r["clients_ok"] for r in rows]  # noqa: E731
    dense_up = per_client(dense, "bytes_up")[0]
    sparse_up = per_client(sparse, "bytes_up")[0]
    bound = (1 - args.sparsity) * dense_up * 1.01
    print(
        json.dumps(
            {
                "benchmark": "communication",
                "model": base["model"],
                "sparsity": args.sparsity,
                "dense_upload_bytes_per_client": dense_up,
                "sparse_upload_bytes_per_client": sparse_up,
                "upload_ratio": sparse_up / dense_up,
                "target_bytes": bound,
                "target_met": sparse_up <= bound,
                "dense_download_bytes_per_client": per_client(dense, "bytes_down"),
                "sparse_download_bytes_per_client_by_round": per_client(sparse, "bytes_down"),
                "note": "downloads carry the mask only to nodes that have not had it yet",
            }
        )
    )


if __name__ == "__main__":
    main()
