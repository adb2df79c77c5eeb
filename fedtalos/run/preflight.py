"""Will this run start? Every check on bad input that needs the data or the model, before a run directory exists."""

from __future__ import annotations

from fedtalos.config import ConfigError, RunConfig
from fedtalos.run.phases import Kind
from fedtalos.task.lr_schedule import STATELESS
from fedtalos.task.model import ModelError, WeightsError
from fedtalos.task.resources import Resources, get_resources
from fedtalos.tracking.mask_artifact import check_mask_files
from fedtalos.tracking.rundir import validate_output_root


def preflight(config: RunConfig, kind: Kind) -> Resources:
    """Check ``config`` for a run of ``kind`` against the file system, the data and the model; returns the resources
    it loaded (cached by :func:`get_resources` for the run).

    Checks, in order: the plateau schedule (federated runs: it needs per-epoch validation), the output root, the
    data and the weights, the mask file (fits this model and its starting weights), a non-empty validation split,
    and (federated runs) the shards every client will cut.

    Raises:
        ConfigError: one of the above, naming the key.
        DatasetNotFoundError, DatasetIntegrityError, RuntimeError: data or device missing.
    """
    if kind == "federated" and config.lr_schedule == "plateau":
        raise ConfigError(
            [
                "lr-schedule = 'plateau': depends on per-epoch validation; use it with fedtalos central "
                f"(federated runs allow {', '.join(repr(s) for s in STATELESS)})"
            ]
        )
    validate_output_root(config)
    try:
        resources = get_resources(config, pretrained=True)
    except WeightsError as e:
        raise ConfigError([f"weights-path = {config.weights_path!r}: {e}"]) from None
    except ModelError as e:
        raise ConfigError([f"model = {config.model!r}: {e}"]) from None
    assert resources.initial_weights is not None, "get_resources(..., pretrained=True) keeps them"
    check_mask_files(config, resources.initial_weights)
    # Values that are valid on their own but do not fit the data set would otherwise only fail in the clients
    # (every node refusing to identify itself) or at the first evaluation, after the run directory exists.
    train, val = len(resources.train_idx), len(resources.val_idx)
    if val == 0:
        raise ConfigError(
            [
                f"val-fraction = {config.val_fraction}: leaves no validation image out of {train} training images; "
                f"must be at least {1 / train:.2g}"
            ]
        )
    if kind == "federated":
        try:
            _ = resources.partitions  # the K shards, as every client will cut them
        except ValueError as e:
            raise ConfigError(
                [
                    f"num-clients = {config.num_clients}, partitioning = {config.partitioning!r}, classes-per-client = "
                    f"{config.classes_per_client}: cannot shard the {train} training images ({e}); lower num-clients"
                    + (" or classes-per-client" if config.partitioning == "noniid" else "")
                ]
            ) from None
    return resources
