"""What every tiny test run shares: generated CIFAR-format data (no download, no MD5 check) and the tiny test ViT
on the CPU at 32 px; the small federation most in-process tests use; Flower's task identity for Message objects."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# K=10 clients, 3 per round, 2 local steps of 16 images: fast, and it learns on the generated data.
TINY_FEDERATION = {
    "num-clients": 10,
    "fraction-train": 0.3,
    "local-steps": 2,
    "batch-size": 16,
    "lr": 0.05,
    "eval-batch-size": 250,
}


def offline_tiny(
    cifar_root: Path, output_root: Path | None = None, values: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Run-config values of a tiny run on the generated data at ``cifar_root``, with ``values`` on top."""
    config: dict[str, Any] = {
        "dataset-root": str(cifar_root),
        "dataset-verify": False,
        "dataset-download": False,
        "model": "vit-tiny-test",
        "image-size": 32,
        "device": "cpu",
    }
    if output_root is not None:
        config["output-root"] = str(output_root)
    return {**config, **(values or {})}


@contextmanager
def task_identity() -> Iterator[None]:
    """Let tests build flwr ``Message`` objects outside a Flower process (internal API, isolated here)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
