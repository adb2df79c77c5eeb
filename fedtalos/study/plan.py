"""Planned runs: a grid file (:mod:`fedtalos.study.grid`) → validated runs with stable names → what is on disk.

Precedence, lowest first: the app's defaults < ``--base FILE`` < ``[base]`` < a block's constants < its axes <
``[scale]`` < ``--set KEY=VALUE``. Run names are ``<family>-<axis parts>-seed<k>`` (short names:
:data:`fedtalos.tracking.identity.SHORT_NAMES`); seed-major order, so an interrupted sweep already holds a complete
replicate. docs/sweeps.md § Grid file format has the details.

No run twice: runs of the same identity (:func:`sharing_key`) planned by several families, or already on disk
under another name, are run once, in the directory of the first; the others *share* it (``PlannedRun.shares``)
and their family's manifest names that directory (``"run"``), so every family that plans the run reads it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedtalos.config import ConfigError, RunConfig, read_overrides
from fedtalos.config.kinds import for_kind
from fedtalos.fsutil import atomic_write_bytes, locked
from fedtalos.run.phases import Kind, run_phases, total_units
from fedtalos.study.files_needed import missing_base_file, missing_mask_file
from fedtalos.study.grid import MASK_FROM, SWEEP_OWNED, EditStep, GridFile, ScaleRule, is_int, is_number, load_grid
from fedtalos.tracking.identity import format_value, run_label
from fedtalos.tracking.metrics import read_rows
from fedtalos.tracking.rundir import CONFIG_FILE, SUMMARY_FILE, is_this_run, read_record

# Where a sweep keeps its per-run TOML files, logs and manifest: <output-root>/_sweeps/<family>/.
SWEEPS_DIR = "_sweeps"
MANIFEST = "manifest.json"
# Where a family's [[edit]] steps write their mask files: <output-root>/_masks/<family>/<name>-seed<k>.safetensors.
MASKS_DIR = "_masks"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its name, the overrides it runs with (validated) and where its outputs go."""

    name: str
    label: str
    family: str
    kind: str
    seed: int
    point: dict[str, Any]
    derived: dict[str, Any]
    overrides: dict[str, Any]
    config: RunConfig
    mask_agreement_clients: int = 0
    grid_file: Path | None = field(default=None, compare=False)
    shares: str = ""  # the directory name of the identical run this one shares ('' = its own directory)
    needs: tuple[str, ...] = ()  # names of the runs that must finish first (the [[edit]] steps whose files it uses)
    edit: str = ""  # an [[edit]] step: the name of the mask file it writes ('' = a run of the family)

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()

    @property
    def sweep_dir(self) -> Path:
        """``<output-root>/_sweeps/<family>``: the per-run TOML files, logs and the manifest."""
        return self.config.resolved_output_root() / SWEEPS_DIR / self.family

    @property
    def toml_path(self) -> Path:
        return self.sweep_dir / f"{self.name}.toml"

    @property
    def log_path(self) -> Path:
        return self.sweep_dir / f"{self.name}.log"

    @property
    def total_steps(self) -> int:
        """Rows the run logs when complete: rounds over all phases (federated) or epochs (centralized)."""
        return expected_steps(self.config, self.kind)

    def settings(self) -> str:
        """The grid point and the derived keys, ``key=value`` (what tells this run from its neighbours)."""
        if self.edit:
            return f"writes the mask file {self.config.mask_save_path} (step 0 and calibration, no fine-tuning)"
        parts = [f"{k}={_literal(v)}" for k, v in {**self.point, **self.derived}.items()]
        shared = f" (shares {self.shares}: run once)" if self.shares else ""
        return (" ".join(parts) if parts else "(base configuration)") + shared


def phase_rounds(config: RunConfig) -> dict[str, int]:
    """Rounds of each phase of a federated run, in order (as the server runs them): [head] [calibration] train."""
    return {phase.name: phase.units for phase in run_phases(config, "federated")}


def expected_steps(config: RunConfig, kind: Kind) -> int:
    """Federated: the server's final ``step`` (rounds over all phases); centralized: the fine-tuning epochs, the
    progress that :func:`steps_done` reads from the rows (the head and calibration phases log no ``epoch``)."""
    if kind == "centralized":
        return run_phases(config, kind)[-1].units
    return total_units(config, kind)


def plan(
    grid: GridFile,
    *,
    seeds: Sequence[int] | None = None,
    output_root: str | Path | None = None,
    base_overrides: Mapping[str, Any] | None = None,
    sets: Mapping[str, Any] | None = None,
) -> list[PlannedRun]:
    """Expand ``grid`` into its runs, seed-major, each validated; raises one :class:`ConfigError` for all problems.

    ``base_overrides`` go under the grid's own values (``--base``), ``sets`` over everything (``--set``).
    ``output_root``: where the runs go (default: the output root the grid's configuration resolves to, i.e.
    ``[base] output-root``, else ``$FEDTALOS_OUTPUT_ROOT``, else ``~/fedtalos/runs``). It is made absolute and set
    explicitly in every run, so the Flower processes write where this process looks, whatever their environment.
    """
    seeds = tuple(grid.seeds if seeds is None else seeds)
    if not seeds or any(not is_int(s) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError([f"seeds {list(seeds)}: need at least one seed, integers >= 0, no repeats"])
    # a --base file (e.g. a best.toml that names its trial) may hold keys the sweep owns: the sweep's win
    base = {**{k: v for k, v in (base_overrides or {}).items() if k not in SWEEP_OWNED}, **grid.base}
    sets = dict(sets or {})
    problems = []
    for key in SWEEP_OWNED:
        if key in sets:
            problems.append(f"--set {key}: the sweep sets it (use --output-root / --seeds)")
    if problems:
        raise ConfigError(problems)
    root = _resolve_root(output_root, base.get("output-root"))
    base.pop("output-root", None)
    points: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []  # (constants, point, derived)
    for block in grid.blocks:
        for point in block.points():
            merged = {**base, **block.constants, **point}
            derived = {}
            for rule in grid.scale:
                derived[rule.key] = _scaled(rule, merged, problems, grid.path)
            points.append((block.constants, point, derived))
    runs: dict[str, PlannedRun] = {}
    errors: dict[str, list[str]] = {}
    for seed in seeds:
        edits = {step.name: _edit_run(grid, step, seed, base, sets, root, errors) for step in grid.edits}
        for step in grid.edits:
            if edits[step.name] is not None:
                runs[edits[step.name].name] = edits[step.name]  # type: ignore[union-attr]
        for constants, point, derived in points:
            source = {**constants, **point}.get(MASK_FROM)
            edit = edits.get(source) if source is not None else None
            named = {(k if k != MASK_FROM else "mask-path"): v for k, v in point.items()}  # names as mask-path's
            label = run_label(grid.family, named)
            name = f"{label}-seed{seed}"
            overrides = {
                **base,
                **constants,
                **point,
                **{k: v for k, v in derived.items() if v is not None},
                **sets,
                "seed": seed,
                "run-name": name,
                "output-root": str(root),
            }
            overrides.pop(MASK_FROM, None)
            if edit is not None:
                overrides["mask-path"] = edit.config.mask_save_path
            if not _NAME.match(name):
                problems.append(f"run name {name!r}: use values made of letters, digits, '.', '_' and '-'")
                continue
            try:
                config = for_kind(RunConfig.from_mapping(overrides), grid.kind)
            except ConfigError as e:
                for problem in e.problems:
                    errors.setdefault(problem, []).append(name)
                continue
            if edit is None and config.mask_path and not Path(config.mask_path).expanduser().is_file():
                errors.setdefault(missing_mask_file(config), []).append(name)
            run = PlannedRun(
                name=name,
                label=label,
                family=grid.family,
                kind=grid.kind,
                seed=seed,
                point=dict(point),
                derived={k: v for k, v in derived.items() if v is not None},
                overrides=overrides,
                config=config,
                mask_agreement_clients=grid.mask_agreement_clients,
                grid_file=grid.path,
                needs=(edit.name,) if edit is not None else (),
            )
            if name in runs and runs[name].overrides != overrides:
                problems.append(
                    f"{grid.path}: two grid points are both named {name!r} with different settings; "
                    "make one of the differing keys an axis (a list) so that the names differ"
                )
            runs.setdefault(name, run)
    for problem, names in errors.items():
        where = names[0] if len(names) == 1 else f"{len(names)} runs, e.g. {names[0]}"
        problems.append(f"{grid.path} ({where}): {problem}")
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return list(runs.values())


def with_needs(selected: Sequence[PlannedRun], planned: Sequence[PlannedRun]) -> list[PlannedRun]:
    """``selected`` (e.g. by ``--only``) and the planned runs they need (``[[edit]]`` steps), in plan order."""
    names = {r.name for r in selected} | {n for r in selected for n in r.needs}
    return [r for r in planned if r.name in names]


def mask_file_path(root: Path, family: str, step: str, seed: int) -> Path:
    """The mask file an ``[[edit]]`` step of ``family`` writes for ``seed``."""
    return root / MASKS_DIR / family / f"{step}-seed{seed}.safetensors"


def _edit_run(
    grid: GridFile,
    step: EditStep,
    seed: int,
    base: Mapping[str, Any],
    sets: Mapping[str, Any],
    root: Path,
    errors: dict[str, list[str]],
) -> PlannedRun | None:
    """The run of ``fedtalos edit`` (``--central``) that writes ``step``'s mask file for ``seed``: step 0 and the
    calibration, no fine-tuning; the editing defaults (ridge head, least-sensitive) under ``[base]``."""
    kind = "centralized" if step.central else "federated"
    label = f"{grid.family}-edit-{step.name}"
    name = f"{label}-seed{seed}"
    overrides = {
        **RunConfig.defaults_in("edit"),
        **base,
        **step.values,
        **sets,
        "mask-save-path": str(mask_file_path(root, grid.family, step.name, seed)),
        "epochs" if step.central else "num-server-rounds": 0,
        "seed": seed,
        "run-name": name,
        "output-root": str(root),
    }
    if not step.central:
        overrides.pop("epochs", None)  # a federated run takes rounds; a centralized one epochs
    try:
        config = for_kind(RunConfig.from_mapping(overrides), kind)
    except ConfigError as e:
        for problem in e.problems:
            errors.setdefault(problem, []).append(name)
        return None
    return PlannedRun(
        name=name,
        label=label,
        family=grid.family,
        kind=kind,
        seed=seed,
        point={},
        derived={},
        overrides=overrides,
        config=config,
        grid_file=grid.path,
        edit=step.name,
    )


def _resolve_root(output_root: str | Path | None, from_config: Any) -> Path:
    if output_root is not None:
        return Path(output_root).expanduser().resolve()
    config = RunConfig.from_mapping({"output-root": from_config} if isinstance(from_config, str) else {})
    return config.resolved_output_root().resolve()


def _scaled(rule: ScaleRule, merged: Mapping[str, Any], problems: list[str], path: Path) -> Any:
    per = merged.get(rule.per, RunConfig.defaults().get(rule.per))
    default = RunConfig.defaults().get(rule.key)
    if not is_number(per) or per <= 0:
        problems.append(f"{path}: [scale] {rule.key}: per = {rule.per!r} is not a positive number here ({per!r})")
        return None
    value = rule.product / per
    if isinstance(default, int) and not isinstance(default, bool):
        if abs(value - round(value)) > 1e-9:
            problems.append(
                f"{path}: [scale] {rule.key} = {rule.product:g} / {rule.per} = {value:g} at {rule.per} = {per}: "
                "not a whole number; choose a product divisible by every value"
            )
            return None
        return round(value)
    return value


def plan_files(
    paths: Sequence[str | Path],
    *,
    seeds: Sequence[int] | None = None,
    output_root: str | Path | None = None,
    base_files: Sequence[str | Path] = (),
    sets: Mapping[str, Any] | None = None,
) -> list[PlannedRun]:
    """:func:`plan` for several grid files (families run in the order given); one ConfigError for all of them."""
    base: dict[str, Any] = {}
    problems: list[str] = []
    for path in base_files:
        if not Path(path).expanduser().is_file():
            problems.append(missing_base_file(Path(path)))
            continue
        try:
            base.update(read_overrides(Path(path).expanduser(), f"--base {path}"))
        except ConfigError as e:
            problems += e.problems
    runs: list[PlannedRun] = []
    families: dict[str, Path] = {}
    for path in paths:
        try:
            grid = load_grid(path)
            if grid.family in families:
                problems.append(f"{path}: family {grid.family!r} is also the family of {families[grid.family]}")
            families[grid.family] = Path(path)
            runs += plan(grid, seeds=seeds, output_root=output_root, base_overrides=base, sets=sets)
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(problems)
    return share_identical(runs)


def sharing_key(kind: str, config: RunConfig) -> tuple[Any, ...]:
    """What makes two runs one: the same kind, output root and result identity (``RunConfig.result_hash``), the
    same length and the same evaluations (what their metric rows hold)."""
    return (
        kind,
        str(config.resolved_output_root().resolve()),
        config.result_hash(),
        expected_steps(config, kind),  # type: ignore[arg-type]
        config.eval_every,
        config.test_every_eval,
    )


def share_identical(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """``runs`` with every run whose :func:`sharing_key` an earlier run (or a run directory on disk) has turned
    into one that shares that run's directory (``shares``): it keeps its name, family, label and grid point."""
    on_disk = _runs_on_disk({r.config.resolved_output_root() for r in runs})
    owners: dict[tuple[Any, ...], PlannedRun] = {}
    out = []
    for run in runs:
        key = sharing_key(run.kind, run.config)
        owner = owners.get(key)
        if owner is None:
            names = on_disk.get(key, [])
            if names and run.name not in names:  # run before under another name (an earlier sweep)
                config = run.config.replace(run_name=names[0])
                run = dataclasses.replace(run, config=config, overrides={**run.overrides, "run-name": names[0]})
                run = dataclasses.replace(run, shares=names[0])
            owners[key] = run
            out.append(run)
            continue
        out.append(dataclasses.replace(run, config=owner.config, overrides=owner.overrides, shares=owner.run_dir.name))
    return out


def _runs_on_disk(roots: set[Path]) -> dict[tuple[Any, ...], list[str]]:
    """:func:`sharing_key` → names of the run directories under ``roots`` with it, sorted."""
    found: dict[tuple[Any, ...], list[str]] = {}
    for root in sorted(roots):
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if ".old-" in path.name or not (path / CONFIG_FILE).is_file():
                continue
            try:
                stored = read_record(path) or {}
                config = RunConfig.from_mapping({**stored.get("config", {}), "output-root": str(root)})
            except (ValueError, ConfigError):
                continue  # unreadable, or of another version: never shared
            found.setdefault(sharing_key(stored.get("kind", "federated"), config), []).append(path.name)
    return found


def run_toml(run: PlannedRun) -> str:
    """The run's overrides as the TOML file the run command reads (flat ``key = value`` lines)."""
    header = f"# {run.name}: generated by `fedtalos sweep` from {run.grid_file or 'a grid'}; {run.settings()}\n"
    return header + tomli_w.dumps(run.overrides)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return format_value(value)


# ---------------------------------------------------------------------------------------------------------------
# What is on disk.

NEW, PARTIAL, DONE, CONFLICT = "new", "resume", "done", "conflict"


def run_state(run: PlannedRun) -> tuple[str, str]:
    """(state, detail): ``new`` (nothing there), ``resume`` (started, unfinished: the same command continues it),
    ``done`` (``summary.json`` of a complete run of this configuration) or ``conflict`` (the directory holds a
    run of another configuration; the sweep leaves it alone)."""
    path = run.run_dir
    if not path.exists():
        return NEW, ""
    try:
        stored = read_record(path)
    except ValueError:
        return PARTIAL, "unreadable config.json"
    if stored is None:
        return PARTIAL, "no config.json yet"
    if not is_this_run(stored, run.config, run.kind):
        return CONFLICT, (
            f"{path} holds a {stored.get('kind', '?')} run of another configuration (hash "
            f"{stored.get('result_hash')}, planned {run.config.result_hash()}): move it away or change the grid"
        )
    summary_file = path / SUMMARY_FILE
    done_steps = steps_done(read_rows(path), run.kind)
    if not summary_file.is_file():
        return PARTIAL, f"{done_steps}/{run.total_steps} {'epochs' if run.kind == 'centralized' else 'rounds'}"
    if done_steps < run.total_steps:  # a finished shorter run extended by a larger num-server-rounds / epochs
        return PARTIAL, f"finished at {done_steps}, extended to {run.total_steps}"
    return DONE, ""


def steps_done(rows: Sequence[dict[str, Any]], kind: str) -> int:
    """Progress from a run's metric rows: fine-tuning epochs done (centralized) or rounds done over all phases."""
    if kind == "centralized":
        epochs = [r.get("epoch") for r in rows if r.get("phase") == "train" and r.get("epoch") is not None]
        return int(max(epochs, default=0))
    return int(max((r.get("step", 0) for r in rows), default=0))


def write_manifest(runs: Sequence[PlannedRun]) -> list[Path]:
    """``<output-root>/_sweeps/<family>/manifest.json`` per family: its runs, labels, seeds and grid points, so
    that ``fedtalos summarize`` knows the families and axes without parsing names."""
    written = []
    by_family: dict[Path, list[PlannedRun]] = {}
    for run in runs:
        by_family.setdefault(run.sweep_dir, []).append(run)
    for directory, members in by_family.items():
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / MANIFEST
        with locked(directory / f"{MANIFEST}.lock"):  # sweeps sharing a root each add their runs, none lost
            _update_manifest(path, members)
        written.append(path)
    return written


def _update_manifest(path: Path, members: Sequence[PlannedRun]) -> None:
    previous = json.loads(path.read_text()) if path.is_file() else {}
    known = {r["name"]: r for r in previous.get("runs", [])}
    for run in members:  # a later sweep with more seeds adds to the manifest, never drops runs
        known[run.name] = {
            "name": run.name,
            "label": run.label,
            "seed": run.seed,
            "point": run.point,
            "run": run.run_dir.name,  # the directory that holds it (another family's when shared)
        }
        if run.edit:  # writes a mask file the family's runs use; trains nothing (not a result to plot)
            known[run.name]["edit"] = run.edit
    record = {
        "family": members[0].family,
        "kind": next((r.kind for r in members if not r.edit), members[0].kind),
        "grid_file": str(members[0].grid_file),
        "axes": list(dict.fromkeys(k for r in members for k in r.point)),
        "runs": list(known.values()),
    }
    atomic_write_bytes(path, json.dumps(record, indent=1).encode(), durable=False)  # a reader never sees half


def planned_as(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Run directory name → every manifest entry that plans it under ``root`` (a shared run: several families);
    each entry as :func:`read_manifests` gives it. The entry of the directory's own name comes first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, entry in read_manifests(root).items():
        out.setdefault(entry.get("run", name), []).append(entry)
    for directory, entries in out.items():
        entries.sort(key=lambda e: e["name"] != directory)
    return out


def read_manifests(root: Path) -> dict[str, dict[str, Any]]:
    """Run name → {family, label, seed, point, axes} from every manifest under ``root/_sweeps``."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(root) / SWEEPS_DIR).glob(f"*/{MANIFEST}")):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        for entry in record.get("runs", []):
            out[entry["name"]] = {**entry, "family": record.get("family"), "axes": record.get("axes", [])}
    return out
