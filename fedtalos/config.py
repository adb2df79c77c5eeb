"""The run configuration: every key, its default, its allowed values and its error message, in one place.

Keys are kebab-case, as in Flower's ``[tool.flwr.app.config]``. The federated app reads them from
``Context.run_config``; the centralized command maps its ``--flags`` onto the same keys. ``RunConfig.from_mapping``
validates *all* keys at once and raises one :class:`ConfigError` that lists every problem, before any compute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtalos.task.backbones import BACKBONES, DEFAULT_BACKBONE, image_size_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MODELS = tuple(BACKBONES)
PARTITIONINGS = ("iid", "noniid")
LR_SCHEDULES = ("constant", "cosine", "warmup-cosine", "step", "exponential", "plateau")
STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad")
# server-lr when the key is left at 0: the defaults of Flower's classes (flwr.serverapp.strategy, 1.42). Adaptive
# steps of 1.0 would move each weight by up to ~1 per round and wreck a pretrained model. fedavg and fedprox take
# no server step; 1.0 is the value their configs have always hashed with (RunConfig.result_dict).
SERVER_LR_DEFAULTS = {"fedavgm": 1.0, "fedadam": 0.1, "fedyogi": 0.01, "fedadagrad": 0.1}
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
HEADS = ("train", "ridge", "probe")
MASK_RULES = ("none", "least-sensitive", "most-sensitive", "lowest-magnitude", "highest-magnitude", "random")
FISHER_TARGETS = ("logit", "log-prob")
MASK_SCOPES = ("global", "local")
FREEZE = ("none", "backbone")
# Fine-tuning lengths that may be 0 only in a run that only edits (step 0 + calibration, then mask-save-path).
_EDIT_ONLY_ZERO = ("epochs", "num-server-rounds")
_RUN_NAME = re.compile(r"[A-Za-z0-9._+=-]{1,128}")

# Keys whose values do not change the numbers a run produces (its weights and metric values): a resumed run
# may change them freely. Every other key is part of the run's identity, `RunConfig.result_hash()`.
NON_RESULT_KEYS = frozenset(
    {
        "run-name",
        "output-root",
        "resume",
        "num-server-rounds",
        "epochs",
        "eval-every",
        "test-every-eval",
        "eval-batch-size",
        "checkpoint-keep",
        "checkpoint-every-steps",
        "tensorboard",
        "wandb",
        "wandb-project",
        "round-timeout",
        "transport",
        "num-threads",
        "dataset-download",
        "dataset-root",
        "progress",
        "mask-save-path",
        "mask-any-weights",
        # Bit-level only: GPU summation orders (like `transport`); CPU results are the same either way.
        "deterministic",
        "allow-device-change",
    }
)


class ConfigError(ValueError):
    """One or more run-config values are invalid; ``problems`` lists them, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid run configuration ({len(problems)} problem(s)):\n{lines}")


def read_toml(path: str | Path, label: str) -> dict[str, Any]:
    """The TOML file at ``path``; one that cannot be read or parsed raises ConfigError, its line led by ``label``."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError([f"{label}: cannot read it ({e.strerror or e})"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{label}: not valid TOML ({e})"]) from None


def read_overrides(path: str | Path, label: str) -> dict[str, Any]:
    """A flat TOML file of run-config keys (``key = value`` lines, no tables), e.g. a search's ``best.toml``."""
    values = read_toml(path, label)
    tables = [k for k, v in values.items() if isinstance(v, dict)]
    if tables:
        raise ConfigError([f"{label}: [{t}] is a table; write run-config keys as `key = value` lines" for t in tables])
    return values


Check = Callable[[Any], "str | None"]


def _opt(default: Any, help: str, check: Check | None = None) -> Any:
    return field(default=default, metadata={"help": help, "check": check})


def _choice(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(repr(c) for c in choices)}"


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"

    def check(v: float) -> str | None:
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number in {interval}"
        if (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi)
        ):
            return f"must be in {interval}"
        return None

    return check


def _image_size(v: int) -> str | None:
    return None if v >= 1 else "must be a positive number of pixels (a multiple of the model's patch size)"


def _abs_path_or_empty(v: str) -> str | None:
    if v and not os.path.isabs(os.path.expanduser(v)):
        return (
            "must be an absolute path or start with '~' (a relative path would resolve against the "
            "directory the Flower SuperLink happens to run in)"
        )
    return None


def _run_name(v: str) -> str | None:
    # The name becomes <output-root>/<run-name>: a '/' or '..' would put the run (and, with resume = false, the
    # rename of an existing directory) outside the output root.
    if v and (not _RUN_NAME.fullmatch(v) or v.startswith(".")):
        return (
            "must be a plain directory name of at most 128 letters, digits, '.', '_', '+', '=' or '-', "
            "not starting with '.' (or empty for a name derived from the config)"
        )
    return None


def _device(v: str) -> str | None:
    base, _, index = v.partition(":")
    if base in DEVICES and (not index or (base == "cuda" and index.isdigit())):
        return None
    return "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration. Attribute names are the kebab-case keys with '_' for '-'."""

    # --- identity, outputs, resume
    run_name: str = _opt("", "run directory name; empty = derived from the config, stable across restarts", _run_name)
    output_root: str = _opt(
        "", "absolute path for run directories; empty = $FEDTALOS_OUTPUT_ROOT or ~/fedtalos/runs", _abs_path_or_empty
    )
    seed: int = _opt(0, "seeds the split, the shards, the cohorts, the batches and the head init", _range(0))
    resume: bool = _opt(
        True,
        "continue from the run directory's last good checkpoint; false = start over "
        "(the old directory is kept, renamed)",
    )
    checkpoint_keep: int = _opt(2, "how many recent checkpoints to keep (the best one is kept as well)", _range(1))
    checkpoint_every_steps: int = _opt(
        0, "centralized only: also checkpoint every N steps inside an epoch (0 = only at epoch ends)", _range(0)
    )
    tensorboard: bool = _opt(False, "also write TensorBoard event files into the run directory")
    wandb: bool = _opt(False, "also log to Weights & Biases (needs `pip install wandb` and a login)")
    wandb_project: str = _opt("fedtalos", "W&B project name")
    progress: bool = _opt(True, "show progress bars")

    # --- data
    dataset_root: str = _opt(
        "",
        "absolute path holding cifar-100-python/ (or the .tar.gz); empty = $FEDTALOS_DATA or ~/fedtalos/data",
        _abs_path_or_empty,
    )
    dataset_download: bool = _opt(True, "download CIFAR-100 from the official URL if it is not on disk")
    dataset_verify: bool = _opt(True, "check the MD5 sums of the CIFAR-100 files (false only for generated test data)")
    val_fraction: float = _opt(
        0.1,
        "fraction of the train set held out (stratified) for validation",
        _range(0.0, 1.0, lo_open=True, hi_open=True),
    )
    num_clients: int = _opt(100, "K: number of clients (= simulated SuperNodes); the shards are made for K", _range(1))
    partitioning: str = _opt("iid", "client sharding: 'iid' or 'noniid'", _choice(*PARTITIONINGS))
    classes_per_client: int = _opt(10, "Nc: distinct classes per client when partitioning='noniid'", _range(1, 100))
    batch_size: int = _opt(32, "training batch size (images per local step)", _range(1))
    eval_batch_size: int = _opt(256, "evaluation batch size", _range(1))

    # --- model and compute
    model: str = _opt(
        DEFAULT_BACKBONE,
        "backbone: "
        + ", ".join(f"'{b.name}' ({b.label})" for b in BACKBONES.values() if b.name != "vit-tiny-test")
        + ", or 'vit-tiny-test' (a 2-block random-init ViT for tests and CPU benchmarks)",
        _choice(*MODELS),
    )
    pretrained: bool = _opt(True, "start from the model's pretrained weights (false = random init)")
    weights_path: str = _opt(
        "",
        "local weights file of the chosen model (.safetensors or .pth); empty = download via timm",
        _abs_path_or_empty,
    )
    image_size: int = _opt(
        224,
        "input resolution in pixels (CIFAR images are resized up; a multiple of the model's patch size: 16, or 14 "
        "for DINOv2)",
        _image_size,
    )
    device: str = _opt("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'", _device)
    precision: str = _opt(
        "auto",
        "'auto' (bf16 autocast on CUDA from compute capability 8.0, fp32 elsewhere), 'fp32' or 'bf16'",
        _choice(*PRECISIONS),
    )
    channels_last: bool = _opt(False, "use channels-last memory format for images (GPU)")
    num_threads: int = _opt(0, "torch CPU threads per process; 0 = the CPUs Ray gives the actor (or all)", _range(0))
    deterministic: bool = _opt(
        False, "deterministic GPU kernels (math attention, fixed cuBLAS workspace): bit-identical GPU resumes, slower"
    )
    allow_device_change: bool = _opt(
        False, "resume a run on another device, precision or GPU model than it started on (its numbers change)"
    )

    # --- optimisation (client side in FL, the whole run centrally)
    lr: float = _opt(0.01, "learning rate of SGD with momentum", _range(0.0, lo_open=True))
    lr_min: float = _opt(0.0, "final learning rate of the cosine schedules", _range(0.0))
    lr_schedule: str = _opt(
        "cosine",
        "'constant', 'cosine', and centrally also 'warmup-cosine', 'step', "
        "'exponential', 'plateau'; in FL the schedule is over server rounds",
        _choice(*LR_SCHEDULES),
    )
    warmup: int = _opt(0, "linear warm-up length for 'warmup-cosine' (epochs centrally, rounds in FL)", _range(0))
    lr_step_size: int = _opt(10, "'step': decay every N epochs", _range(1))
    lr_gamma: float = _opt(0.1, "'step'/'exponential'/'plateau': decay factor", _range(0.0, 1.0, lo_open=True))
    lr_patience: int = _opt(
        2, "'plateau': evaluations without a lower validation loss before the lr is multiplied by lr-gamma", _range(0)
    )
    momentum: float = _opt(0.9, "SGD momentum", _range(0.0, 1.0, hi_open=True))
    weight_decay: float = _opt(0.0, "L2 weight decay", _range(0.0))
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy", _range(0.0, 1.0, hi_open=True))
    freeze: str = _opt("none", "'none' = full fine-tuning, 'backbone' = train the head only", _choice(*FREEZE))

    # --- centralized baseline
    epochs: int = _opt(
        10, "centralized: number of epochs (0 only with mask-save-path: a run that only edits)", _range(0)
    )

    # --- federated
    num_server_rounds: int = _opt(
        100, "number of FedAvg rounds (fine-tuning phase; 0 only with mask-save-path: a run that only edits)", _range(0)
    )
    fraction_train: float = _opt(0.1, "C: fraction of the K clients sampled each round", _range(0.0, 1.0, lo_open=True))
    min_train_clients: int = _opt(1, "fewest successful replies a round may be aggregated from", _range(1))
    local_steps: int = _opt(4, "J: local SGD steps per client per round", _range(1))
    strategy: str = _opt("fedavg", "server strategy: " + ", ".join(STRATEGIES), _choice(*STRATEGIES))
    server_lr: float = _opt(
        0.0,
        "fedavgm: server learning rate; fedadam/fedyogi/fedadagrad: eta; 0 = the strategy's default, Flower's: "
        + ", ".join(f"{k} {v:g}" for k, v in SERVER_LR_DEFAULTS.items()),
        _range(0.0),
    )
    server_momentum: float = _opt(0.9, "fedavgm: server momentum", _range(0.0, 1.0, hi_open=True))
    proximal_mu: float = _opt(0.01, "fedprox: weight of the proximal term", _range(0.0))
    server_beta1: float = _opt(
        0.9, "fedadam/fedyogi: first-moment decay (fedadagrad: 0, as Flower's)", _range(0.0, 1.0, hi_open=True)
    )
    server_beta2: float = _opt(0.99, "fedadam/fedyogi: second-moment decay", _range(0.0, 1.0, hi_open=True))
    server_tau: float = _opt(1e-3, "fedadam/fedyogi/fedadagrad: adaptivity tau", _range(0.0, lo_open=True))
    eval_every: int = _opt(5, "evaluate the global model on the validation split every N rounds/epochs", _range(1))
    test_every_eval: bool = _opt(False, "also evaluate on the test split at every evaluation (not only at the end)")
    federated_eval_fraction: float = _opt(
        0.0,
        "fraction of clients that evaluate the global model on their own shard at each evaluation (0 = off)",
        _range(0.0, 1.0),
    )
    round_timeout: float = _opt(
        3600.0, "seconds to wait for a round's replies before going on without the rest", _range(0.0, lo_open=True)
    )
    transport: str = _opt(
        "auto",
        "how weights travel: 'message' (inside Flower messages), 'shared-memory' (files in /dev/shm: server and "
        "clients on one machine), 'auto' (shared memory in simulation, messages when deployed)",
        _choice("auto", "message", "shared-memory"),
    )

    # --- model editing (TaLoS)
    head: str = _opt(
        "train",
        "step 0: 'train' (head trains with the rest), 'ridge' (closed form, frozen) or "
        "'probe' (federated linear probing, then frozen)",
        _choice(*HEADS),
    )
    ridge_lambda: float = _opt(
        1e-4,
        "head='ridge': regularisation relative to the number of samples n: (ΦᵀΦ + λ·n·I)W = ΦᵀY (the bias is not "
        "penalised). The head is then scaled by a temperature fitted on the server's validation split (labelled "
        "data the server holds); the head phase's val_loss is measured on that same split",
        _range(0.0, lo_open=True),
    )
    probe_rounds: int = _opt(10, "head='probe': FedAvg rounds on the head alone (centrally: epochs)", _range(1))
    mask_rule: str = _opt(
        "none", "'none' = dense FedAvg, else the calibration rule: " + ", ".join(MASK_RULES[1:]), _choice(*MASK_RULES)
    )
    sparsity: float = _opt(
        0.9, "fraction of scored weights frozen (0.9 = 10 % trainable)", _range(0.0, 1.0, hi_open=True)
    )
    calibration_rounds: int = _opt(4, "R': mask calibration rounds", _range(1))
    calibration_fraction: float = _opt(
        0.1, "fraction of clients that score in each calibration round", _range(0.0, 1.0, lo_open=True)
    )
    calibration_redraw: bool = _opt(
        False,
        "false (TaLoS): one calibration cohort and one sample set per client, drawn once (seeded) and re-scored in "
        "every calibration round; true: a new cohort and new samples each round. Fisher labels are re-sampled "
        "every round either way",
    )
    fisher_samples: int = _opt(
        64,
        "calibration samples per client (federated: each client of the calibration cohort scores min(this, its "
        "shard); centralized: this × the calibration cohort size, round(calibration-fraction · num-clients), "
        "train images, the same total as a federated run of the same config); the metrics record the total scored",
        _range(1),
    )
    fisher_target: str = _opt("logit", "'logit' (TaLoS) or 'log-prob' (textbook Fisher)", _choice(*FISHER_TARGETS))
    mask_scope: str = _opt(
        "global", "'global' (one threshold over all tensors) or 'local' (per tensor)", _choice(*MASK_SCOPES)
    )
    mask_path: str = _opt(
        "",
        "a mask file from `fedtalos edit`: skip step 0 and calibration, fine-tune with its mask and its (frozen) head",
        _abs_path_or_empty,
    )
    mask_any_weights: bool = _opt(
        False, "accept a mask-path file scored on other starting weights (same model and shapes, another hash)"
    )
    mask_save_path: str = _opt(
        "", "write the calibrated mask, its head and their provenance to this mask file at the end", _abs_path_or_empty
    )

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """All run-config keys, kebab-case, in declaration order."""
        return [f.name.replace("_", "-") for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Key → default value."""
        return {f.name.replace("_", "-"): f.default for f in dataclasses.fields(cls)}

    @classmethod
    def help(cls) -> dict[str, str]:
        """Key → one-line description."""
        return {f.name.replace("_", "-"): f.metadata["help"] for f in dataclasses.fields(cls)}

    @classmethod
    def path_keys(cls) -> list[str]:
        """Keys that hold filesystem paths (absolute or '~'; a command line may resolve relative ones first)."""
        return [f.name.replace("_", "-") for f in dataclasses.fields(cls) if f.metadata["check"] is _abs_path_or_empty]

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
                    problems.append(f"unknown key {key!r}" + _did_you_mean(key, fields))
                continue
            expected = type(f.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not expected:
                problems.append(f"{key} = {value!r}: must be {_type_name(expected)}, got {_type_name(type(value))}")
                continue
            check = f.metadata["check"]
            message = check(value) if check else None
            if not message and key in _EDIT_ONLY_ZERO and value == 0 and not values.get("mask-save-path"):
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
        """The keys that decide a run's numbers: everything but ``NON_RESULT_KEYS``, and the run length too when
        the learning-rate schedule depends on it (a cosine over 100 rounds differs from one over 200)."""
        horizon = {"num-server-rounds", "epochs"} if self.lr_schedule != "constant" else set()
        values = {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_KEYS or k in horizon}
        # the server lr in effect: an unset key and the same value set explicitly compute the same thing, and
        # configs from before the per-strategy default (then 1.0 for every strategy) keep their hash
        values["server-lr"] = self.resolved_server_lr
        return values

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
        """``server-lr``, or when it is 0 the strategy's default (``SERVER_LR_DEFAULTS``; 1.0 for the others)."""
        return self.server_lr or SERVER_LR_DEFAULTS.get(self.strategy, 1.0)

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

    def resolved_run_name(self, prefix: str = "") -> str:
        """``run-name``, or a name made of the main settings and the config hash (stable for a config)."""
        if self.run_name:
            return self.run_name
        part = "iid" if self.partitioning == "iid" else f"nc{self.classes_per_client}"
        edit = "" if not self.editing else f"-{self.mask_rule}-s{self.sparsity:g}"
        edit += "-maskfile" if self.mask_path else ""
        return f"{prefix}{self.strategy}-{part}-J{self.local_steps}{edit}-seed{self.seed}-{self.result_hash()[:6]}"

    def run_dir(self, prefix: str = "") -> Path:
        """``<output-root>/<run-name>``."""
        return self.resolved_output_root() / self.resolved_run_name(prefix)


def _type_name(t: type) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(t, t.__name__)


def _did_you_mean(key: str, known: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def toml_section(values: Mapping[str, Any] | None = None) -> str:
    """The ``[tool.flwr.app.config]`` body: every key with its help as a comment (``python -m fedtalos.config``)."""
    values = dict(RunConfig.defaults(), **(values or {}))
    helps = RunConfig.help()
    lines = []
    for key in RunConfig.keys():  # noqa: SIM118 (a classmethod, not a dict)
        value = values[key]
        if isinstance(value, bool):
            literal = str(value).lower()
        else:
            literal = json.dumps(value) if isinstance(value, str) else repr(value)
        lines.append(f"# {helps[key]}")
        lines.append(f"{key} = {literal}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(toml_section(), end="")
