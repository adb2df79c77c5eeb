"""The facts of a run's life cycle that federated and centralized runs share: its phases, where a run stands in
them, when it evaluates, and what trains in each phase.

A run is a list of phases (``head``, ``calibration``, ``train``), each a number of units: rounds in a federated run,
epochs in a centralized one. The server loop and the centralized trainer walk :func:`remaining`; the study's plan
counts with :func:`run_phases` too, so a run's phase list lives here only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fedtalos.config import RunConfig

Row = dict[str, Any]  # one metric row: a unit's numbers, as metrics.csv / metrics.jsonl hold them
Kind = Literal["federated", "centralized"]
SENSITIVITY_RULES = ("least-sensitive", "most-sensitive")  # the mask rules that score in R' calibration rounds
# The keys that say how a mask is made or read: a run that fine-tunes densely computes nothing with them.
MASK_KEYS = (
    "mask-rule",
    "sparsity",
    "calibration-rounds",
    "calibration-fraction",
    "calibration-redraw",
    "fisher-samples",
    "fisher-target",
    "mask-scope",
    "mask-path",
)


@dataclass(frozen=True)
class PhaseSpec:
    """One phase of a run.

    Attributes:
        name: 'head', 'calibration' or 'train' (in the state, the metric rows and the checkpoints).
        units: its rounds (federated) or epochs (centralized); 0 for a run that only edits.
        frozen: what does not train in it: 'none', 'head' or 'backbone' (``task.model.set_trainable``);
            'all' for the phases that compute instead of training (ridge head, calibration).
        evaluates: it evaluates the global model at its eval-every units and its last unit.
        stream: the random stream of its units (``seeds.py``): 'probe' for linear probing, else the phase name.
    """

    name: str
    units: int
    frozen: str
    evaluates: bool
    stream: str

    @property
    def trains(self) -> bool:
        """True for the phases of SGD (linear probing, fine-tuning)."""
        return self.frozen != "all"


def calibration_rounds(config: RunConfig) -> int:
    """R' for the sensitivity rules; 1 for the magnitude and random rules (one step that reads no scores)."""
    return config.calibration_rounds if config.mask_rule in SENSITIVITY_RULES else 1


def run_phases(config: RunConfig, kind: Kind) -> list[PhaseSpec]:
    """The phases of a run, in order: [head] [calibration] train.

    The ridge head is one unit, linear probing ``probe-rounds`` units of the head alone; calibration is R' rounds
    federated (:func:`calibration_rounds`) and one step centrally (it scores the pooled samples R' times within it).
    Fine-tuning keeps the step-0 head (or the mask file's) frozen; centrally ``freeze = 'backbone'`` trains the head
    alone.
    """
    phases = []
    if config.head == "ridge":
        phases.append(PhaseSpec("head", 1, "all", evaluates=True, stream="head"))
    elif config.head == "probe":
        phases.append(PhaseSpec("head", config.probe_rounds, "backbone", evaluates=True, stream="probe"))
    if config.editing:
        rounds = calibration_rounds(config) if kind == "federated" else 1
        phases.append(PhaseSpec("calibration", rounds, "all", evaluates=False, stream="calibration"))
    length = config.num_server_rounds if kind == "federated" else config.epochs
    phases.append(PhaseSpec("train", length, fine_tuning_frozen(config, kind), evaluates=True, stream="train"))
    return phases


def fine_tuning_frozen(config: RunConfig, kind: Kind) -> str:
    """What stays frozen while fine-tuning: the step-0 (or mask-file) head; centrally also ``freeze``."""
    if config.head_frozen:
        return "head"
    return config.freeze if kind == "centralized" else "none"


def fine_tunes_sparsely(config: RunConfig) -> bool:
    """True for an editing run: it fine-tunes under a mask, calibrated by itself (``mask-rule``) or read from a mask
    file (``mask-path``; such a run stores mask-rule 'none'). False for dense fine-tuning."""
    return config.editing or bool(config.mask_path)


def fine_tuning_head(config: RunConfig, mask_file_head: str | None = None) -> str:
    """The head a run fine-tunes with: 'train' (trained with the backbone), else how its frozen head was made:
    'ridge' or 'probe' (step 0) or, for a mask-path run, the mask file's head (``mask_file_head``, as its
    ``mask_source.json`` records it; 'mask-file' when unknown)."""
    if config.mask_path:
        return mask_file_head or "mask-file"
    return config.head


def remaining(phases: Sequence[PhaseSpec], phase: str, done: int) -> Iterator[tuple[PhaseSpec, int]]:
    """The (phase, 1-based unit index) pairs still to run, from a position: ``done`` units of ``phase`` finished.

    Raises:
        ValueError: the position names a phase this run does not have (its config changed under it).
    """
    names = [p.name for p in phases]
    if phase not in names:
        raise ValueError(f"the run is in phase {phase!r}, which this configuration does not have ({names})")
    start = names.index(phase)
    for i, spec in enumerate(phases[start:]):
        first = done + 1 if i == 0 else 1
        for index in range(first, spec.units + 1):
            yield spec, index


def evaluation_due(config: RunConfig, spec: PhaseSpec, index: int) -> bool:
    """Whether unit ``index`` of ``spec`` ends with a validation: every ``eval-every`` units and at the phase's end."""
    return spec.evaluates and (index % config.eval_every == 0 or index == spec.units)


def total_units(config: RunConfig, kind: Kind) -> int:
    """Units over all phases: the federated server's final step (rounds of every phase), or the epochs of a
    centralized run's phases."""
    return sum(p.units for p in run_phases(config, kind))
