"""Per-process resources for one run configuration: the data set, its split and shards, the model, the device.

Built once per process and cached (a Ray actor serves many clients; rebuilding per message would dominate a
round), rebuilt only when the configuration changes. Clients build the architecture without pretrained weights:
the server sends them the global weights every round, so only the server ever needs the DINO checkpoint. A
ClientApp's resources (``client=True``) leave the model's weights uninitialised (every message brings them) and
take the node's shard from :mod:`fedtalos.task.shard_cache` while the process has not loaded the whole data set.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedtalos.config import RunConfig
from fedtalos.task import shard_cache
from fedtalos.task.batches import ImageTransform, iterate_batches, to_device
from fedtalos.task.cifar import CIFAR_FOLDER, Cifar100, load_cifar100, read_classes
from fedtalos.task.device import precision_choice, resolve_device, set_deterministic, set_matmul_precision
from fedtalos.task.model import build_model, input_normalisation
from fedtalos.task.partition import make_partitions, split_train_val
from fedtalos.task.train import evaluate

Batch = tuple[torch.Tensor, torch.Tensor]
log = logging.getLogger(__name__)


@dataclass
class Resources:
    """Everything heavy that a process needs for ``config``; build with :func:`get_resources`."""

    config: RunConfig
    device: torch.device
    dtype: torch.dtype | None
    load_data: Callable[[], Cifar100]
    num_classes: int
    model: nn.Module
    train_transform: ImageTransform
    eval_transform: ImageTransform
    # The model's weights as built (CPU copies), kept when pretrained=True: the cached model is trained in place
    # by the centralized command, so a fresh run in the same process must not start from what it left behind.
    initial_weights: dict[str, torch.Tensor] | None = None
    # A ClientApp's: the model's weights are uninitialised until the first message's arrive; shards from files.
    weights_pending: bool = False
    use_shard_cache: bool = False
    _on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _partitions: list[np.ndarray] | None = None

    # -------------------------------------------------------------------------------------------- data
    @functools.cached_property
    def data(self) -> Cifar100:
        """The whole data set in memory (loaded on first use)."""
        return self.load_data()

    @functools.cached_property
    def _train_val(self) -> tuple[np.ndarray, np.ndarray]:
        return split_train_val(self.data.train_labels, self.config.val_fraction, self.config.seed)

    @property
    def train_idx(self) -> np.ndarray:
        """Indices of the train split (train minus validation) into the train set."""
        return self._train_val[0]

    @property
    def val_idx(self) -> np.ndarray:
        """Indices of the validation split into the train set."""
        return self._train_val[1]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, labels) of 'train' (train minus validation), 'val' or 'test', on the device."""
        if name not in self._on_device:
            if name == "test":
                images, labels = self.data.test_images, self.data.test_labels
            else:
                idx = torch.from_numpy(self.train_idx if name == "train" else self.val_idx)
                images, labels = self.data.train_images[idx], self.data.train_labels[idx]
            self._on_device[name] = (to_device(images, self.device), to_device(labels, self.device))
        return self._on_device[name]

    @property
    def partitions(self) -> list[np.ndarray]:
        """The K client shards: index arrays into the 'train' split."""
        if self._partitions is None:
            c = self.config
            labels = self.data.train_labels.numpy()[self.train_idx]
            self._partitions = make_partitions(labels, c.num_clients, c.partitioning, c.classes_per_client, c.seed)
        return self._partitions

    def client_data(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, labels) of client ``pid``'s shard, on the device."""
        if not 0 <= pid < self.config.num_clients:
            raise ValueError(f"partition-id {pid} outside 0..{self.config.num_clients - 1}")
        if not self.use_shard_cache or "data" in self.__dict__:  # in memory already: indexing it is cheaper
            return self._shard_in_memory(pid)
        c = self.config
        folder, identity = Path(c.resolved_dataset_root()) / CIFAR_FOLDER, self.shard_identity()
        hit = shard_cache.read_shard(folder, identity, pid, verified=c.dataset_verify)
        if hit is None:
            images, labels = self._shard_in_memory(pid)
            try:
                arrays = images.cpu().numpy(), labels.cpu().numpy()
                shard_cache.write_shard(folder, identity, pid, *arrays, self.num_classes, c.dataset_verify)
            except OSError as e:  # a read-only data folder: every process cuts its shard again
                log.debug("could not keep partition %d's shard in %s: %s", pid, folder, e)
            return images, labels
        images, labels, _ = hit  # a new copy-on-write map each call: a caller's writes never reach another's
        return to_device(torch.from_numpy(images), self.device), to_device(torch.from_numpy(labels), self.device)

    def shard_identity(self) -> dict[str, object]:
        """The settings that decide which rows of the train set each partition holds."""
        c = self.config
        return {
            "val-fraction": c.val_fraction,
            "seed": c.seed,
            "num-clients": c.num_clients,
            "partitioning": c.partitioning,
            "classes-per-client": c.classes_per_client,
        }

    def _shard_in_memory(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.split("train")
        idx = torch.from_numpy(self.partitions[pid]).to(self.device)
        return images[idx], labels[idx]

    def train_batches(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, num_steps: int | None = None
    ) -> Iterator[Batch]:
        """Augmented training batches (``num_steps`` full batches, or one shuffled pass)."""
        return iterate_batches(
            images,
            labels,
            self.train_transform,
            batch_size=self.config.batch_size,
            generator=generator,
            num_steps=num_steps,
        )

    def eval_batches(self, images: torch.Tensor, labels: torch.Tensor) -> Iterator[Batch]:
        """Un-augmented batches of ``eval-batch-size``, in order."""
        return iterate_batches(images, labels, self.eval_transform, batch_size=self.config.eval_batch_size)

    def evaluate(self, split: str) -> dict[str, float]:
        """``{split}_loss`` (mean cross-entropy, nats), ``{split}_acc`` (top-1 in [0, 1]) and ``{split}_top5``
        (top-5, as timm's ``eval_top5``) of the current model."""
        images, labels = self.split(split)
        stats = evaluate(self.model, self.eval_batches(images, labels), autocast_dtype=self.dtype)
        return {f"{split}_loss": stats.loss, f"{split}_acc": stats.accuracy, f"{split}_top5": stats.top5_accuracy}

    # -------------------------------------------------------------------------------------------- model
    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Copy ``weights`` into the cached model (strict: same keys and shapes)."""
        self.model.load_state_dict(weights, strict=True)
        self.weights_pending = False

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's weights as independent CPU tensors."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}


@functools.lru_cache(maxsize=2)  # a client's and, in-process, a server's
def get_resources(config: RunConfig, pretrained: bool = False, *, client: bool = False) -> Resources:
    """The cached resources of ``config`` for this process.

    ``pretrained=True`` loads the DINO weights (the server's initial model, the centralized run); clients use
    the default, the bare architecture, since they receive weights in every message. ``client=True``: a
    ClientApp's, whose every message brings the weights: the model's are left uninitialised
    (``weights_pending`` until loaded) and shards come from the shard cache.
    """
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    set_deterministic(config.deterministic)  # before any CUDA work: cuBLAS reads its workspace setting once
    device = resolve_device(config.device)
    dtype, precision = precision_choice(device, config.precision)
    # Only an accelerator has a choice to report; on the CPU it is always fp32 (and would be noise in a CLI check).
    log.log(logging.DEBUG if device.type == "cpu" else logging.INFO, "precision: %s", precision)
    set_matmul_precision(device, deterministic=config.deterministic)
    load_data = functools.partial(
        load_cifar100, config.resolved_dataset_root(), config.dataset_download, config.dataset_verify
    )
    meta = Path(config.resolved_dataset_root()) / CIFAR_FOLDER / "meta"
    if client and meta.is_file():
        num_classes = len(read_classes(meta.parent, verify=config.dataset_verify))
    else:
        num_classes = len(load_data().classes)
    torch.manual_seed(config.seed)  # the new head's initialisation (seeds.py: head initialisation)
    model = build_model(
        config.model,
        num_classes=num_classes,
        image_size=config.image_size,
        pretrained=pretrained and config.pretrained,
        weights_path=config.weights_path or None,
        initialise=not client,
    ).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if pretrained else None
    mean, std = input_normalisation(config.model)
    transform = functools.partial(
        ImageTransform, config.image_size, channels_last=config.channels_last, mean=mean, std=std
    )
    return Resources(
        config=config,
        device=device,
        dtype=dtype,
        load_data=load_data,
        num_classes=num_classes,
        model=model,
        train_transform=transform(train=True),
        eval_transform=transform(train=False),
        initial_weights=initial,
        weights_pending=client,
        use_shard_cache=client,
    )
