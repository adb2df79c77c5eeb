"""Run directories read into configurations: a configuration is the runs of one grid point over its seeds.

Run directories are the folders directly under the runs directory that hold a ``config.json``; unfinished ones
(no ``summary.json``) are kept apart. A *configuration* is a run name without its ``-seed<k>`` suffix; the family
comes from the sweep manifests in ``<runs>/_sweeps`` (else from the name's first part). A run that several families
plan (run once, shared: :func:`fedtalos.study.plan.planned_as`) belongs to each of their configurations, with each
family's grid point; the ``[[edit]]`` steps that write a family's mask files are not results and are left out.

Per run (:meth:`RunData.metrics`), from its ``metrics.jsonl`` (training rows: ``phase`` 'train'): final test
accuracy and loss (last row with a test evaluation), final and best validation accuracy, uploaded and downloaded
bytes over all phases, mean client drift over the training rounds, wall time; from its outputs: mask density and
the mask-agreement analysis. Per configuration (:meth:`Group.stat`): mean and sample standard deviation
(ddof = 1) over its seeds; a configuration with one seed has no std.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtalos.config import ConfigError, RunConfig
from fedtalos.run.phases import SENSITIVITY_RULES, fine_tunes_sparsely, fine_tuning_head
from fedtalos.study.grid import MASK_FROM
from fedtalos.study.plan import planned_as
from fedtalos.tracking.identity import partition_label, short_label, split_name
from fedtalos.tracking.mask_artifact import read_mask_source
from fedtalos.tracking.metrics import best_row, last_with, read_rows
from fedtalos.tracking.rundir import CONFIG_FILE, SUMMARY_FILE

# Settings shown first per configuration when they vary (by their short names, identity.short_label); the CSV has them
# all. 'partition' is partitioning and classes-per-client together: 'iid' or 'Nc=5'.
LEADING_SETTINGS = (
    "partition",
    "local-steps",
    "num-server-rounds",
    "epochs",
    "mask-rule",
    "sparsity",
    "calibration-rounds",
    "lr-schedule",
    "head",
    "strategy",
    "mask-path",
)
# Keys that never tell configurations apart in the table (run bookkeeping, evaluation cadence): outside the result's
# identity, except the run lengths.
_NOT_SETTINGS = {k for k, f in RunConfig.facts().items() if not f.result and not f.length} | {"seed"}


@dataclass
class RunData:
    """One run directory, read."""

    path: Path
    name: str
    family: str
    label: str
    seed: int
    kind: str
    config: dict[str, Any]
    run_config: RunConfig  # ``config`` validated (keys this version does not know are left out)
    rows: list[dict[str, Any]]
    finished: bool
    point: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] | None = None
    mask_source: dict[str, Any] | None = None  # ``mask_source.json``: the mask file a mask-path run fine-tuned with
    _metrics: dict[str, float | None] | None = field(default=None, repr=False, compare=False)

    def train_rows(self) -> list[dict[str, Any]]:
        """The fine-tuning rows (``phase`` 'train'), without the head and calibration rows."""
        return [r for r in self.rows if r.get("phase") == "train"]

    def metrics(self) -> dict[str, float | None]:
        """The per-run numbers of the table (None where the run has no such value); computed once."""
        if self._metrics is None:
            self._metrics = self._compute_metrics()
        return self._metrics

    def _compute_metrics(self) -> dict[str, float | None]:
        rows = self.train_rows()
        tested, validated, best = last_with(rows, "test_acc"), last_with(rows, "val_acc"), best_row(rows)
        drifts = [r["drift"] for r in rows if r.get("drift") is not None]
        mask = _mask_density(self)
        return {
            "final_test_acc": tested["test_acc"] if tested else None,
            "final_test_loss": tested.get("test_loss") if tested else None,
            "final_val_acc": validated["val_acc"] if validated else None,
            "best_val_acc": best["val_acc"] if best else None,
            "uploaded_gb": sum(r.get("bytes_up") or 0 for r in self.rows) / 1e9 if self.kind == "federated" else None,
            "downloaded_gb": (
                sum(r.get("bytes_down") or 0 for r in self.rows) / 1e9 if self.kind == "federated" else None
            ),
            "mean_drift": sum(drifts) / len(drifts) if drifts else None,
            "mask_density": mask,
            "mask_jaccard": self.agreement.get("mean_jaccard") if self.agreement else None,  # outside the cohort
            "mask_jaccard_cohort": self.agreement.get("cohort_mean_jaccard") if self.agreement else None,
            "mask_jaccard_floor": self.agreement.get("noise_floor_jaccard") if self.agreement else None,
            "wall_min": sum(r.get("wall_s") or 0.0 for r in self.rows) / 60.0,
            "run_min": _run_minutes(self),
        }


def _run_minutes(run: RunData) -> float | None:
    """The whole wall time of the launch that finished the run, start-up included (``summary.json``'s
    ``run_wall_s``, written by the launcher); None for runs started otherwise (e.g. a plain ``flwr run``)."""
    summary_file = run.path / SUMMARY_FILE
    if summary_file.is_file():
        seconds = json.loads(summary_file.read_text()).get("run_wall_s")
        if isinstance(seconds, int | float):
            return float(seconds) / 60.0
    return None


def _mask_density(run: RunData) -> float | None:
    summary_file = run.path / SUMMARY_FILE
    if summary_file.is_file():
        mask = json.loads(summary_file.read_text()).get("mask")
        if isinstance(mask, dict) and mask.get("density") is not None:
            return float(mask["density"])
    densities = [r["mask_density"] for r in run.rows if r.get("mask_density") is not None]
    return densities[-1] if densities else None


@dataclass
class Group:
    """A configuration: its runs (one per seed), sharing everything but the seed."""

    family: str
    label: str
    kind: str
    runs: list[RunData]

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def run_config(self) -> RunConfig:
        """The stored config, validated (keys this version does not know are left out)."""
        return self.runs[0].run_config

    @property
    def sparse(self) -> bool:
        """Whether the configuration fine-tunes under a mask (its own or a mask file's): :func:`fine_tunes_sparsely`."""
        return fine_tunes_sparsely(self.run_config)

    @property
    def head(self) -> str:
        """The head it fine-tunes with (:func:`fine_tuning_head`; a mask-path run's from its mask file)."""
        return fine_tuning_head(self.run_config, (self.runs[0].mask_source or {}).get("head"))

    def stat(self, metric: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std (ddof = 1; None for one value), n) of ``metric`` over the seeds that have it."""
        return mean_std([r.metrics()[metric] for r in self.runs])

    def run_names(self, metric: str) -> list[str]:
        """The runs that have a value of ``metric`` (those behind :meth:`stat`)."""
        return [r.name for r in self.runs if r.metrics()[metric] is not None]

    def paired(self, reference: Group, metric: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std, n) over seeds of this configuration's ``metric`` minus the reference's at the same
        seed: the seeds are paired (same cohorts, batches and calibration draws), so the per-seed difference
        leaves out the variation the two share. Only seeds both have count."""
        theirs = {r.seed: r.metrics()[metric] for r in reference.runs}
        diffs = [
            value - theirs[r.seed]
            for r in self.runs
            if (value := r.metrics()[metric]) is not None and theirs.get(r.seed) is not None
        ]
        return mean_std(diffs)

    def setting(self, key: str) -> Any:
        if key == "partition":
            return partition_label(self.config)
        if key == "mask-path":
            return self.mask_file_text()
        return self.config.get(key)

    def mask_file_text(self) -> str | None:
        """Where its mask file comes from (:func:`mask_source_label`); for a family that writes its own file per
        seed (an ``[[edit]]`` step its block names in ``mask-from``) the step: ``federated mask federated-s0.9, a
        file per seed``. None for a configuration that calibrates its own mask (or has none)."""
        step = self.runs[0].point.get(MASK_FROM)
        if not step:
            return mask_source_label(self.runs[0])
        calibrated = (self.runs[0].mask_source or {}).get("calibrated")
        return f"{f'{calibrated} mask ' if calibrated else ''}{step}, a file per seed"


def mask_source_label(run: RunData) -> str | None:
    """``federated mask federated-s0.9 (1a2b3c4d)``: where a mask-path run's mask was calibrated, the file's name and
    the start of its hash; None for a run that calibrated its own mask (or none)."""
    source = run.mask_source
    if not source:
        return None
    name = Path(str(source.get("path", ""))).name.split(".safetensors")[0]
    return f"{source.get('calibrated')} mask {name} ({str(source.get('hash', ''))[:8]})"


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof = 1) of the values that are not None; std None for n < 2."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None, 0
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs)


def partition_order(partition: str) -> tuple[int, int]:
    """Sort key of a :func:`partition_label`: Nc ascending, iid last (the mildest heterogeneity)."""
    m = re.match(rf"{re.escape(short_label('classes-per-client'))}=(\d+)$", partition)
    return (0, int(m.group(1))) if m else (1, 0)


def collect(root: str | Path | Sequence[str | Path]) -> tuple[list[Group], list[RunData], list[str]]:
    """(configurations with at least one finished run, unfinished runs, warnings) under ``root``.

    ``root`` may be several output roots (e.g. copies from machines that each ran a ``--shard``): their runs are
    pooled; a run found in more than one root counts once (the first finished copy, in the order given).
    """
    roots = [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]
    planned = _planned(roots)
    finished: list[RunData] = []
    unfinished: list[RunData] = []
    warnings: list[str] = []
    seen: dict[str, Path] = {}
    paths = [p for r in roots for p in sorted(p for p in r.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())]
    finished_names = {p.name for p in paths if (p / SUMMARY_FILE).is_file()}
    for path in paths:
        if ".old-" in path.name:
            continue  # a run set aside by resume=false
        if path.name in seen or (path.name in finished_names and not (path / SUMMARY_FILE).is_file()):
            if path.name in seen:
                warnings.append(f"{path.name}: also in {path.parent}, counted once (from {seen[path.name]})")
            continue
        seen[path.name] = path.parent
        entries = planned.get(path.name, [])
        if entries and all("edit" in e for e in entries):
            continue  # an [[edit]] step: it writes a mask file, trains nothing
        try:
            stored = json.loads((path / CONFIG_FILE).read_text())
        except ValueError:
            warnings.append(f"{path}: unreadable config.json, skipped")
            continue
        try:
            settings = RunConfig.from_mapping(stored.get("config", {}), allow_unknown=True)
        except ConfigError as error:
            warnings.append(f"{path}: config.json does not validate ({'; '.join(error.problems)}), skipped")
            continue
        label, seed = split_name(path.name)
        agreement_file = path / "analysis" / "mask_agreement.json"
        run = RunData(
            path=path,
            name=path.name,
            family=path.name.split("-")[0],
            label=label,
            seed=int(stored.get("config", {}).get("seed", seed or 0)),
            kind=stored.get("kind", "federated"),
            config=stored.get("config", {}),
            run_config=settings,
            rows=read_rows(path),
            finished=(path / SUMMARY_FILE).is_file(),
            agreement=json.loads(agreement_file.read_text()) if agreement_file.is_file() else None,
            mask_source=read_mask_source(path),
        )
        # one RunData per family that plans the run (its own entry first), each with that family's label and point
        members = [
            dataclasses.replace(
                run, family=e.get("family") or run.family, label=e.get("label") or label, point=e.get("point", {})
            )
            for e in entries
            if "edit" not in e
        ] or [run]
        if run.finished:
            finished += members
        else:
            unfinished.append(members[0])
    groups: dict[tuple[str, str], Group] = {}
    for run in finished:
        key = (run.family, run.label)
        if key not in groups:
            groups[key] = Group(run.family, run.label, run.kind, [])
        groups[key].runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: r.seed)
        reference = identity_settings(group.runs[0].config)
        # a family that writes a mask file per seed (mask-from an [[edit]] step) differs in mask-path on purpose
        per_seed = {"mask-path"} if len({r.point.get(MASK_FROM) for r in group.runs} - {None}) == 1 else set()
        for run in group.runs[1:]:
            differing = sorted(
                k for k, v in identity_settings(run.config).items() if reference.get(k) != v and k not in per_seed
            )
            if differing:
                warnings.append(
                    f"{group.label}: {run.name} differs from {group.runs[0].name} in {', '.join(differing)} "
                    "(averaged anyway)"
                )
        seeds = group.seeds
        if len(set(seeds)) != len(seeds):
            warnings.append(f"{group.label}: repeated seeds {seeds}")
    ordered = sorted(groups.values(), key=lambda g: (g.family, _sort_key(g)))
    return ordered, unfinished, warnings


def _planned(roots: Sequence[Path]) -> dict[str, list[dict[str, Any]]]:
    """Run directory name → the manifest entries that plan it (:func:`planned_as`), over several roots; an entry
    (a run name) found under more than one root counts once, from the first root that has it."""
    out: dict[str, list[dict[str, Any]]] = {}
    named: set[str] = set()
    for r in roots:
        for directory, entries in planned_as(r).items():
            fresh = [e for e in entries if e["name"] not in named]
            named |= {e["name"] for e in fresh}
            out.setdefault(directory, []).extend(fresh)
    return out


def identity_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a stored config that tell configurations apart: its result identity and run lengths, no seed."""
    return {k: v for k, v in config.items() if k not in _NOT_SETTINGS}


def _sort_key(group: Group) -> tuple:
    c = group.config
    return (
        partition_order(partition_label(c)),
        c.get("mask-rule", ""),
        c.get("sparsity", 0) if c.get("mask-rule", "none") != "none" else 0,
        c.get("calibration-rounds", 0) if c.get("mask-rule", "none") != "none" else 0,
        c.get("local-steps", 0),
        str(c.get("lr-schedule", "")),
        group.label,
    )


def varied_settings(groups: Sequence[Group]) -> list[str]:
    """The keys (and 'partition') that differ between these configurations, in a readable order."""
    keys = []
    for key in (*LEADING_SETTINGS, *sorted({k for g in groups for k in identity_settings(g.config)})):
        if key in keys or key in ("partitioning", "classes-per-client"):
            continue
        if len({json.dumps(g.setting(key)) for g in groups}) > 1:
            keys.append(key)
    return keys


def settings_text(group: Group, keys: Sequence[str]) -> str:
    """``Nc=5, J=8, rounds=200``: the group's values of ``keys``."""
    parts = []
    for key in keys:
        value = group.setting(key)
        name = short_label(key)
        if key == "mask-rule" and value == "none":
            value = "dense"
        rule = group.config.get("mask-rule", "none")
        if key == "sparsity" and rule == "none":
            continue  # a dense run has no sparsity
        if key == "calibration-rounds" and rule not in SENSITIVITY_RULES:
            continue  # only the sensitivity rules calibrate in rounds
        if key == "mask-path" and value is None:
            continue  # the run calibrated its own mask (or has none)
        text = value if isinstance(value, str) else _fmt_value(value)
        parts.append(f"{name}={text}" if name else str(text))
    return ", ".join(parts)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    return str(value).lower() if isinstance(value, bool) else str(value)
