"""The compute a planned study costs, per family: client-steps, Fisher samples, forwards, and estimated GPU-hours.

Counted from each run's configuration (:class:`~fedtalos.study.plan.PlannedRun`), once per run directory (a run
shared by two families counts for the first). The GPU-hours are an *estimate* from assumed throughputs
(:data:`CARDS`), not a measurement: a training image pass costs 1 unit, a per-sample Fisher gradient 1 unit, an
evaluation or ridge forward 1/3; each client-round adds a fixed framework overhead and each run a start-up. The
sweep prints the measured time of every run: trust that over this once runs exist. :func:`study_gpu_hours` prices
the same work at a measured seconds per client-step instead (``bench/gpu.sh``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from fedtalos.config import RunConfig
from fedtalos.run.phases import SENSITIVITY_RULES, calibration_rounds, run_phases
from fedtalos.study.plan import PlannedRun

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
FORWARD_UNITS = 1 / 3  # a forward pass against a training pass (forward + backward)
CLIENT_ROUND_OVERHEAD_S = 0.04  # framework time per client and round (docs/performance.md: ≈ 0.4 s per 10 clients)
RUN_STARTUP_S = 30.0  # Ray and the SuperLink per run


@dataclass(frozen=True)
class Card:
    """An assumed throughput: training images per second for DINO ViT-S/16 at 224 px, batch 32."""

    name: str
    images_per_s: float
    note: str


CARDS = (
    Card("A100/H100", 1250.0, "bf16 autocast; ≈ 1,000–1,500 img/s, typical ViT-S/16 training throughput"),
    Card("Colab T4", 150.0, "fp32 (no bf16 on a T4); ≈ 8 TFLOPS at ~40 % use for ≈ 14 GFLOPs per training image"),
)


@dataclass
class Cost:
    """What runs compute: client-steps (batches of ``batch-size``), images trained, per-sample Fisher gradients,
    forwards (evaluation and ridge features), client-rounds (federated message round trips) and runs."""

    runs: int = 0
    client_steps: int = 0
    train_images: int = 0
    fisher_samples: int = 0
    forwards: int = 0
    client_rounds: int = 0

    def add(self, other: Cost) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def units(self) -> float:
        """Training-pass equivalents."""
        return self.train_images + self.fisher_samples + FORWARD_UNITS * self.forwards

    def gpu_hours(
        self,
        card: Card,
        client_round_overhead_s: float = CLIENT_ROUND_OVERHEAD_S,
        run_startup_s: float = RUN_STARTUP_S,
    ) -> float:
        seconds = self.units() / card.images_per_s
        return (seconds + client_round_overhead_s * self.client_rounds + run_startup_s * self.runs) / 3600


def run_cost(run: PlannedRun) -> Cost:
    """The compute of one run, from its configuration."""
    c, cost = run.config, Cost(runs=1)
    train = round(CIFAR_TRAIN * (1 - c.val_fraction))
    val = CIFAR_TRAIN - train
    phases = {p.name: p.units for p in run_phases(c, run.kind)}  # type: ignore[arg-type]
    if c.head == "ridge" and not c.mask_path:
        cost.forwards += train  # features of the whole train split, once
    if c.editing and c.mask_rule in SENSITIVITY_RULES:
        per_round = c.fisher_samples * c.calibration_cohort_size
        cost.fisher_samples += per_round * calibration_rounds(c)  # centrally R' scorings within one unit
    if run.kind == "centralized":
        epochs = phases.get("train", 0)
        steps_per_epoch = math.ceil(train / c.batch_size)
        cost.client_steps += epochs * steps_per_epoch
        # a key the grid leaves unset takes the centralized command's default (eval-every 1), not the app's
        eval_every = run.overrides.get("eval-every", RunConfig.defaults_in("centralized").get("eval-every", 1))
        evaluations = epochs // eval_every
        cost.forwards += evaluations * (val + (CIFAR_TEST if c.test_every_eval else 0)) + CIFAR_TEST * (epochs > 0)
    else:
        probe = phases.get("head", 0) if c.head == "probe" else 0  # rounds of the head alone
        rounds = phases.get("train", 0) + probe
        cost.client_steps += rounds * c.cohort_size * c.local_steps
        cost.client_rounds += rounds * c.cohort_size + phases.get("calibration", 0) * c.calibration_cohort_size
        if c.head == "ridge" and not c.mask_path:
            cost.client_rounds += c.num_clients  # the ridge head queries every client once
        evaluations = phases.get("train", 0) // c.eval_every
        cost.forwards += evaluations * (val + (CIFAR_TEST if c.test_every_eval else 0)) + CIFAR_TEST * (rounds > 0)
    cost.train_images = cost.client_steps * c.batch_size
    return cost


def family_costs(runs: Sequence[PlannedRun]) -> dict[str, Cost]:
    """Family → its cost, counting each run directory once (shared runs count for the family that runs them)."""
    costs: dict[str, Cost] = {}
    seen = set()
    for run in runs:
        costs.setdefault(run.family, Cost())
        if run.run_dir in seen:
            continue
        seen.add(run.run_dir)
        costs[run.family].add(run_cost(run))
    return costs


def study_gpu_hours(
    runs: Sequence[PlannedRun],
    client_step_s: float,
    *,
    batch_size: int = 32,
    client_round_overhead_s: float = CLIENT_ROUND_OVERHEAD_S,
    run_startup_s: float = RUN_STARTUP_S,
) -> dict[str, float]:
    """Family → GPU-hours of ``runs``, and ``"total"``, at a measured ``client_step_s`` seconds per training step
    of ``batch_size`` images (the card's throughput, Fisher samples and forwards priced in the same units as
    :meth:`Cost.units`) and the given framework time per client-round and start-up per run."""
    if client_step_s <= 0:
        raise ValueError(f"client_step_s must be positive, got {client_step_s}")
    card = Card("measured", batch_size / client_step_s, f"{1000 * client_step_s:.1f} ms per step of {batch_size}")
    hours = {
        family: cost.gpu_hours(card, client_round_overhead_s, run_startup_s)
        for family, cost in family_costs(runs).items()
    }
    hours["total"] = sum(hours.values())
    return hours


def compute_table(runs: Sequence[PlannedRun]) -> list[str]:
    """Lines of the compute table (per family and in total) that ``fedtalos sweep --dry-run`` prints."""
    costs = family_costs(runs)
    planned = {f: sum(r.family == f for r in runs) for f in costs}
    total = Cost()
    for cost in costs.values():
        total.add(cost)
    cards = " | ".join(f"GPU-h {card.name}" for card in CARDS)
    lines = [
        "compute (an estimate; assumptions: fedtalos/study/compute.py):",
        f"  {'family':<12} {'planned':>7} {'to run':>6} {'client-steps':>13} {'Fisher':>9} {'forwards (M)':>13}"
        f" | {cards}",
    ]
    rows = [(f, planned[f], c) for f, c in costs.items()] + [("total", len(runs), total)]
    for family, count, cost in rows:
        hours = " | ".join(f"{cost.gpu_hours(card):>{len(card.name) + 6}.1f}" for card in CARDS)
        lines.append(
            f"  {family:<12} {count:>7} {cost.runs:>6} {cost.client_steps:>13,} {cost.fisher_samples:>9,} "
            f"{cost.forwards / 1e6:>13.2f} | {hours}"
        )
    lines += [f"  {card.name}: {card.images_per_s:,.0f} training images/s assumed ({card.note})" for card in CARDS]
    return lines
