"""The run configuration: every key, its default, its check and its facts (`keys.KeyFacts`), declared once.

Keys are kebab-case, as in Flower's ``[tool.flwr.app.config]``. The federated app reads them from
``Context.run_config``; the centralized command maps its ``--flags`` onto the same keys. ``RunConfig.from_mapping``
validates *all* keys at once and raises one :class:`ConfigError` that lists every problem, before any compute.
How a key is declared and checked is :mod:`fedtalos.config.keys`; a run's name is :mod:`fedtalos.tracking.identity`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedtalos.config import strategy_keys as sk
from fedtalos.config.keys import (
    ConfigError,
    KeyFacts,
    choice,
    device_spec,
    did_you_mean,
    directory_name,
    in_range,
    opt,
    positive_pixels,
    read_overrides,
    read_toml,
    type_name,
)
from fedtalos.task.backbones import BACKBONES, DEFAULT_BACKBONE, image_size_problem
from fedtalos.task.lr_schedule import SCHEDULES, STATELESS
from fedtalos.tracking.identity import run_name

__all__ = ["ConfigError", "KeyFacts", "RunConfig", "read_overrides", "read_toml"]

MODELS = tuple(BACKBONES)
PARTITIONINGS = ("iid", "noniid")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
HEADS = ("train", "ridge", "probe")
# 'none' and the names of editing/masks.py's RULES, listed here because the editing package imports this module.
MASK_RULES = ("none", "least-sensitive", "most-sensitive", "lowest-magnitude", "highest-magnitude", "random")
FISHER_TARGETS = ("logit", "log-prob")
MASK_SCOPES = ("global", "local")
FREEZE = ("none", "backbone")
TRANSPORTS = ("auto", "message", "shared-memory")

Kind = Literal["federated", "centralized"]


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration. Attribute names are the kebab-case keys with '_' for '-'."""

    # --- identity, outputs, resume
    run_name: str = opt(
        "", "run directory name; empty = derived from the config, stable across restarts", directory_name, result=False
    )
    output_root: str = opt(
        "",
        "absolute path for run directories; empty = $FEDTALOS_OUTPUT_ROOT or ~/fedtalos/runs",
        result=False,
        path=True,
    )
    seed: int = opt(0, "seeds the split, the shards, the cohorts, the batches and the head init", in_range(0))
    resume: bool = opt(
        True, "continue from the last good checkpoint; false = start over (the old directory is renamed)", result=False
    )
    checkpoint_keep: int = opt(
        2, "how many recent checkpoints to keep (the best one is kept as well)", in_range(1), result=False
    )
    checkpoint_every_steps: int = opt(
        0,
        "also checkpoint every N steps inside an epoch (0 = only at epoch ends)",
        in_range(0),
        scope="centralized",
        result=False,
    )
    tensorboard: bool = opt(False, "also write TensorBoard event files into the run directory", result=False)
    wandb: bool = opt(False, "also log to Weights & Biases (needs `pip install wandb` and a login)", result=False)
    wandb_project: str = opt("fedtalos", "W&B project name", result=False)
    progress: bool = opt(True, "show progress bars", result=False)

    # --- data
    dataset_root: str = opt(
        "",
        "absolute path holding cifar-100-python/ (or the .tar.gz); empty = $FEDTALOS_DATA or ~/fedtalos/data",
        result=False,
        path=True,
    )
    dataset_download: bool = opt(True, "download CIFAR-100 from the official URL if it is not on disk", result=False)
    dataset_verify: bool = opt(True, "check the MD5 sums of the CIFAR-100 files (false only for generated test data)")
    val_fraction: float = opt(
        0.1,
        "fraction of the train set held out (stratified) for validation",
        in_range(0.0, 1.0, lo_open=True, hi_open=True),
    )
    num_clients: int = opt(100, "K: number of clients (= simulated SuperNodes); the shards are made for K", in_range(1))
    partitioning: str = opt("iid", "client sharding: 'iid' or 'noniid'", choice(*PARTITIONINGS), scope="federated")
    classes_per_client: int = opt(
        10, "Nc: distinct classes per client when partitioning='noniid'", in_range(1, 100), scope="federated"
    )
    batch_size: int = opt(32, "training batch size (images per local step)", in_range(1))
    eval_batch_size: int = opt(256, "evaluation batch size", in_range(1), result=False)

    # --- model and compute
    model: str = opt(
        DEFAULT_BACKBONE,
        "the backbone, a timm name of task/backbones.py, or 'vit-tiny-test' (for tests)",
        choice(*MODELS),
    )
    pretrained: bool = opt(True, "start from the model's pretrained weights (false = random init)")
    weights_path: str = opt(
        "", "local weights file of the model (.safetensors or .pth); empty = download via timm", path=True
    )
    image_size: int = opt(
        224,
        "input resolution in pixels, a multiple of the model's patch size (CIFAR images are resized)",
        positive_pixels,
    )
    device: str = opt(
        "auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'", device_spec(*DEVICES)
    )
    precision: str = opt(
        "auto", "'auto' (bf16 on CUDA from compute capability 8.0, else fp32), 'fp32' or 'bf16'", choice(*PRECISIONS)
    )
    channels_last: bool = opt(False, "use channels-last memory format for images (GPU)")
    num_threads: int = opt(
        0, "torch CPU threads per process; 0 = the CPUs Ray gives the actor (or all)", in_range(0), result=False
    )
    # Bit-level only: GPU summation orders (like `transport`); CPU results are the same either way.
    deterministic: bool = opt(False, "deterministic GPU kernels: bit-identical GPU resumes, slower", result=False)
    allow_device_change: bool = opt(
        False, "resume a run on another device, precision or GPU model (its numbers change)", result=False
    )

    # --- optimisation (client side in FL, the whole run centrally)
    lr: float = opt(0.01, "learning rate of SGD with momentum", in_range(0.0, lo_open=True))
    lr_min: float = opt(0.0, "final learning rate of the cosine schedules", in_range(0.0))
    lr_schedule: str = opt(
        "cosine",
        ", ".join(STATELESS) + " or 'plateau' (centrally only); over epochs, or server rounds in FL",
        choice(*SCHEDULES),
    )
    warmup: int = opt(0, "linear warm-up length for 'warmup-cosine' (epochs centrally, rounds in FL)", in_range(0))
    lr_step_size: int = opt(10, "'step': decay every N epochs (rounds in FL)", in_range(1))
    lr_gamma: float = opt(0.1, "'step'/'exponential'/'plateau': decay factor", in_range(0.0, 1.0, lo_open=True))
    lr_patience: int = opt(
        2,
        "'plateau': evaluations without a lower val loss before the lr is multiplied by lr-gamma",
        in_range(0),
        scope="centralized",
    )
    momentum: float = opt(0.9, "SGD momentum", in_range(0.0, 1.0, hi_open=True))
    weight_decay: float = opt(0.0, "L2 weight decay", in_range(0.0))
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy", in_range(0.0, 1.0, hi_open=True))
    freeze: str = opt(
        "none", "'none' = full fine-tuning, 'backbone' = train the head only", choice(*FREEZE), scope="centralized"
    )

    # --- centralized baseline
    epochs: int = opt(
        10,
        "number of epochs (0 only with mask-save-path: a run that only edits)",
        in_range(0),
        scope="centralized",
        result=False,
        length=True,
    )

    # --- federated
    num_server_rounds: int = opt(
        100,
        "FedAvg rounds of fine-tuning (0 only with mask-save-path: a run that only edits)",
        in_range(0),
        scope="federated",
        result=False,
        length=True,
    )
    fraction_train: float = opt(
        0.1, "C: fraction of the K clients sampled each round", in_range(0.0, 1.0, lo_open=True), scope="federated"
    )
    min_train_clients: int = opt(
        1, "fewest successful replies a round may be aggregated from", in_range(1), scope="federated"
    )
    local_steps: int = opt(4, "J: local SGD steps per client per round", in_range(1), scope="federated")
    strategy: str = sk.STRATEGY
    server_lr: float = opt(
        0.0,
        "fedavgm: server lr; fedadam/fedyogi/fedadagrad: eta; 0 = the strategy's default: "
        + ", ".join(f"{k} {v:g}" for k, v in sk.SERVER_LR_DEFAULTS.items()),
        in_range(0.0),
        scope="federated",
    )
    server_momentum: float = opt(0.9, "fedavgm: server momentum", in_range(0.0, 1.0, hi_open=True), scope="federated")
    proximal_mu: float = opt(0.01, "fedprox: weight of the proximal term", in_range(0.0), scope="federated")
    server_beta1: float = opt(
        0.9,
        "fedadam/fedyogi: first-moment decay (fedadagrad: 0, as Flower's)",
        in_range(0.0, 1.0, hi_open=True),
        scope="federated",
    )
    server_beta2: float = opt(
        0.99, "fedadam/fedyogi: second-moment decay", in_range(0.0, 1.0, hi_open=True), scope="federated"
    )
    server_tau: float = opt(
        1e-3, "fedadam/fedyogi/fedadagrad: adaptivity tau", in_range(0.0, lo_open=True), scope="federated"
    )
    # --- robust aggregation and differential privacy (their facts and checks: config/strategy_keys.py)
    num_malicious_nodes: int = sk.NUM_MALICIOUS_NODES
    num_nodes_to_select: int = sk.NUM_NODES_TO_SELECT
    beta: float = sk.BETA
    q: float = sk.Q
    dp: str = sk.DP
    clipping_norm: float = sk.CLIPPING_NORM
    noise_multiplier: float = sk.NOISE_MULTIPLIER
    initial_clipping_norm: float = sk.INITIAL_CLIPPING_NORM
    target_clipped_quantile: float = sk.TARGET_CLIPPED_QUANTILE
    clip_norm_lr: float = sk.CLIP_NORM_LR
    clipped_count_stddev: float = sk.CLIPPED_COUNT_STDDEV
    eval_every: int = opt(
        5,
        "evaluate on the validation split every N rounds/epochs",
        in_range(1),
        result=False,
        defaults_in={"centralized": 1},
    )
    test_every_eval: bool = opt(
        False, "also evaluate on the test split at every evaluation (not only at the end)", result=False
    )
    federated_eval_fraction: float = opt(
        0.0,
        "fraction of clients that also evaluate on their own shard at each evaluation (0 = off)",
        in_range(0.0, 1.0),
        scope="federated",
    )
    round_timeout: float = opt(
        3600.0,
        "seconds to wait for a round's replies before going on without the rest",
        in_range(0.0, lo_open=True),
        scope="federated",
        result=False,
    )
    transport: str = opt(
        "auto",
        "how weights travel: 'message', 'shared-memory' (/dev/shm, one machine), 'auto' (shm in simulation)",
        choice(*TRANSPORTS),
        scope="federated",
        result=False,
    )

    # --- model editing (TaLoS)
    head: str = opt(
        "train",
        "step 0: 'train' (trains with the rest), 'ridge' (closed form) or 'probe' (linear probing)",
        choice(*HEADS),
        defaults_in={"edit": "ridge"},
    )
    ridge_lambda: float = opt(
        1e-4,
        "head='ridge': (ΦᵀΦ + λ·n·I)W = ΦᵀY, λ relative to the n samples; then a temperature on val",
        in_range(0.0, lo_open=True),
    )
    probe_rounds: int = opt(10, "head='probe': FedAvg rounds on the head alone (centrally: epochs)", in_range(1))
    mask_rule: str = opt(
        "none",
        "'none' = dense fine-tuning, else the calibration rule: " + ", ".join(MASK_RULES[1:]),
        choice(*MASK_RULES),
        defaults_in={"edit": "least-sensitive"},
    )
    sparsity: float = opt(
        0.9, "fraction of scored weights frozen (0.9 = 10 % trainable)", in_range(0.0, 1.0, hi_open=True)
    )
    calibration_rounds: int = opt(4, "R': mask calibration rounds", in_range(1))
    calibration_fraction: float = opt(
        0.1, "fraction of clients that score in each calibration round", in_range(0.0, 1.0, lo_open=True)
    )
    calibration_redraw: bool = opt(
        False, "false (TaLoS): one calibration cohort and sample set, re-scored each round; true: new ones each round"
    )
    fisher_samples: int = opt(
        64, "calibration samples per client (centrally: this × the calibration cohort size)", in_range(1)
    )
    fisher_target: str = opt("logit", "'logit' (TaLoS) or 'log-prob' (textbook Fisher)", choice(*FISHER_TARGETS))
    mask_scope: str = opt(
        "global", "'global' (one threshold over all tensors) or 'local' (per tensor)", choice(*MASK_SCOPES)
    )
    mask_path: str = opt(
        "", "a mask file of `fedtalos edit`: skip step 0 and calibration, fine-tune with its mask and head", path=True
    )
    mask_any_weights: bool = opt(
        False, "accept a mask-path file scored on other starting weights (same model and shapes)", result=False
    )
    mask_save_path: str = opt(
        "",
        "write the calibrated mask, its head and their provenance to this mask file at the end",
        result=False,
        path=True,
    )
    mask_any_split: bool = opt(
        False,
        "accept a mask-path file whose head was fitted on another seed's (or val-fraction's) train split",
        result=False,
    )

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """All run-config keys, kebab-case, in declaration order."""
        return [f.name.replace("_", "-") for f in dataclasses.fields(cls)]

    @classmethod
    def facts(cls) -> dict[str, KeyFacts]:
        """Key → what it is (:class:`KeyFacts`: help, check, scope, role in the run's identity), in order."""
        return {f.name.replace("_", "-"): f.metadata["facts"] for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Key → default value (the federated app's)."""
        return {f.name.replace("_", "-"): f.default for f in dataclasses.fields(cls)}

    @classmethod
    def defaults_in(cls, command: str) -> dict[str, Any]:
        """Key → default, for the keys whose default differs in ``command`` ('centralized' or 'edit')."""
        return {k: f.defaults_in[command] for k, f in cls.facts().items() if command in f.defaults_in}

    @classmethod
    def help(cls) -> dict[str, str]:
        """Key → one-line description."""
        return {k: f.help for k, f in cls.facts().items()}

    @classmethod
    def path_keys(cls) -> list[str]:
        """Keys that hold filesystem paths (absolute or '~'; a command line may resolve relative ones first)."""
        return [k for k, f in cls.facts().items() if f.path]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, allow_unknown: bool = False) -> RunConfig:
        """Validate ``values`` (kebab-case keys; missing keys take defaults) and build a config.

        Raises :class:`ConfigError` listing every problem: unknown keys, wrong types, values out of range,
        and combinations that cannot work.
        """
        problems: list[str] = []
        fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            f = fields.get(key)
            if f is None:
                if not allow_unknown:
                    problems.append(f"unknown key {key!r}" + did_you_mean(key, fields))
                continue
            expected = type(f.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not expected:
                problems.append(f"{key} = {value!r}: must be {type_name(expected)}, got {type_name(type(value))}")
                continue
            facts: KeyFacts = f.metadata["facts"]
            message = facts.check(value) if facts.check else None
            if not message and facts.length and value == 0 and not values.get("mask-save-path"):
                message = "must be at least 1 (0 only in a run that edits and saves its mask: mask-save-path)"
            if message:
                problems.append(f"{key} = {value!r}: {message}")
                continue
            kwargs[f.name] = value
        if problems:
            raise ConfigError(problems)
        config = cls(**kwargs)
        config._check_combinations()
        return config

    def _check_combinations(self) -> None:
        problems = []
        size_problem = image_size_problem(self.model, self.image_size)
        if size_problem:
            problems.append(f"image-size = {self.image_size} with model = {self.model!r}: {size_problem}")
        if self.partitioning == "noniid" and self.classes_per_client * self.num_clients < 100:
            problems.append(
                f"classes-per-client = {self.classes_per_client} with num-clients = {self.num_clients}: "
                f"K·Nc = {self.classes_per_client * self.num_clients} < 100 classes, so some class would be "
                "left out; raise one of them"
            )
        if self.min_train_clients > self.cohort_size:
            problems.append(
                f"min-train-clients = {self.min_train_clients}: larger than the {self.cohort_size} clients "
                f"sampled per round (fraction-train = {self.fraction_train} of num-clients = {self.num_clients})"
            )
        if self.mask_rule != "none" and self.head == "train":
            problems.append(
                f"mask-rule = {self.mask_rule!r} needs a frozen head (step 0): set head = 'ridge' or 'probe'"
            )
        if self.freeze == "backbone" and self.head != "train":
            problems.append(
                f"freeze = 'backbone' with head = {self.head!r}: the head is frozen after step 0 and the backbone "
                "by freeze, so nothing would be fine-tuned; use freeze = 'none' (or head = 'train' for a linear probe)"
            )
        problems += self._mask_file_problems()
        problems += sk.strategy_problems(self)
        if self.lr_min > self.lr:
            problems.append(f"lr-min = {self.lr_min}: must not exceed lr = {self.lr}")
        if problems:
            raise ConfigError(problems)

    def _mask_file_problems(self) -> list[str]:
        problems = []
        if self.mask_path and (self.mask_rule != "none" or self.head != "train"):
            problems.append(
                f"mask-path with mask-rule = {self.mask_rule!r}, head = {self.head!r}: the mask file brings the mask "
                "and the frozen head, so the run skips step 0 and calibration; leave mask-rule and head unset"
            )
        if self.mask_path and self.freeze == "backbone":
            problems.append(
                "mask-path with freeze = 'backbone': the mask file's head is frozen, so nothing would train"
            )
        if self.mask_save_path and not self.editing:
            problems.append("mask-save-path needs a run that calibrates a mask: set mask-rule (and head)")
        if self.mask_path and self.mask_save_path:
            problems.append("mask-path and mask-save-path together: the run calibrates no mask of its own to save")
        return problems

    # ------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Key (kebab-case) → value."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some keys changed (kebab- or snake-case names), validated again."""
        values = self.to_dict()
        values.update({k.replace("_", "-"): v for k, v in changes.items()})
        return RunConfig.from_mapping(values)

    def result_dict(self) -> dict[str, Any]:
        """The keys that decide a run's numbers (``KeyFacts.result``), and the run lengths too when the
        learning-rate schedule depends on them (``KeyFacts.length``)."""
        facts = self.facts()
        horizon = self.lr_schedule != "constant"
        values = {k: v for k, v in self.to_dict().items() if facts[k].result or (facts[k].length and horizon)}
        # the server lr in effect: an unset key and the same value set explicitly compute the same thing
        values["server-lr"] = self.resolved_server_lr
        return sk.without_added_defaults(values)

    def result_hash(self) -> str:
        """A short hash of ``result_dict()``: two runs with equal hashes compute the same thing."""
        blob = json.dumps(self.result_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def cohort_size(self) -> int:
        """Clients sampled per training round: max(1, round(C·K))."""
        return max(1, round(self.fraction_train * self.num_clients))

    @property
    def calibration_cohort_size(self) -> int:
        """Clients sampled per calibration round: max(1, round(calibration-fraction · K))."""
        return max(1, round(self.calibration_fraction * self.num_clients))

    @property
    def federated_eval_cohort_size(self) -> int:
        """Clients sampled per federated evaluation: max(1, round(federated-eval-fraction · K))."""
        return max(1, round(self.federated_eval_fraction * self.num_clients))

    @property
    def resolved_server_lr(self) -> float:
        """``server-lr``, or when it is 0 the strategy's default (``strategy_keys.SERVER_LR_DEFAULTS``; else 1.0)."""
        return self.server_lr or sk.SERVER_LR_DEFAULTS.get(self.strategy, 1.0)

    @property
    def editing(self) -> bool:
        """True when the run calibrates a mask and fine-tunes sparsely."""
        return self.mask_rule != "none"

    @property
    def head_frozen(self) -> bool:
        """True when the head comes from step 0 or a mask file and stays frozen while fine-tuning."""
        return self.head != "train" or bool(self.mask_path)

    def resolved_output_root(self) -> Path:
        """The absolute output root (never dependent on the current directory)."""
        root = self.output_root or os.environ.get("FEDTALOS_OUTPUT_ROOT") or "~/fedtalos/runs"
        return Path(root).expanduser()

    def resolved_dataset_root(self) -> Path:
        """The absolute dataset root."""
        root = self.dataset_root or os.environ.get("FEDTALOS_DATA") or "~/fedtalos/data"
        return Path(root).expanduser()

    def resolved_run_name(self, kind: Kind = "federated", *, edit: bool = False) -> str:
        """``run-name``, or the name derived for this kind of run (:func:`fedtalos.tracking.identity.run_name`);
        ``edit``: the run of ``fedtalos edit``."""
        return run_name(self.to_dict(), self.result_hash(), kind, edit=edit)

    def run_dir(self, kind: Kind = "federated") -> Path:
        """``<output-root>/<run-name>``."""
        return self.resolved_output_root() / self.resolved_run_name(kind)
