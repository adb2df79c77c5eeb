"""Mask agreement across clients: would a client alone have picked the parameters the federation picked?

Each analysed client re-runs the run's whole calibration on its own shard only (its samples, label draws and soft
zeroing as in the federated calibration, from the same global weights) and its mask is compared with the run's
aggregated mask by the Jaccard index; the clients of the calibration cohort, whose samples built that mask, are
averaged apart (``cohort_mean_jaccard``) from the others (``mean_jaccard``). The noise floor is out-of-sample: an
iid subset of the pooled calibration samples, of one client's size, calibrated alone, against the aggregate of the
pooled samples it left out (:func:`split_pool`). Every calibration goes through
:func:`fedtalos.editing.calibration.calibrate`; ``docs/editing.md`` (mask agreement) has the reference levels and
how the calibration weights are rebuilt.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedtalos.config import RunConfig
from fedtalos.editing.calibration import ScoreRound, calibrate, sum_scores
from fedtalos.editing.masks import Mask, mask_stats
from fedtalos.fsutil import atomic_write_bytes
from fedtalos.run.codec import checkpoint_weights
from fedtalos.run.phases import SENSITIVITY_RULES
from fedtalos.seeds import AGREEMENT, LABELS, derive_seed
from fedtalos.study.results import mean_std
from fedtalos.tracking.checkpoint import CheckpointStore
from fedtalos.tracking.mask_report import read_run_mask

OUTPUT_JSON = "analysis/mask_agreement.json"
OUTPUT_CSV = "analysis/mask_agreement.csv"
OUTPUT_FLOOR_CSV = "analysis/mask_agreement_noise_floor.csv"
OUTPUT_PNG = "plots/mask_agreement.png"
# The label draws of a floor subset's left-out aggregate: the subset's own stream (seeds.agreement_label_seed) + this.
LEFT_OUT = 2


# ---------------------------------------------------------------------------------------------------------------
# Overlap measures.


def jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """|a ∧ b| / |a ∨ b| over all entries of all tensors (same keys and shapes); 1.0 when both are empty."""
    if set(a) != set(b):
        raise KeyError("masks with different tensors: " + ", ".join(sorted(set(a) ^ set(b))[:5]))
    both = either = 0
    for name, m in a.items():
        other = b[name]
        if m.shape != other.shape:
            raise ValueError(f"{name}: shapes {tuple(m.shape)} and {tuple(other.shape)} differ")
        m, other = m.bool(), other.bool().to(m.device)
        both += int((m & other).sum())
        either += int((m | other).sum())
    return both / either if either else 1.0


def chance_jaccard(density_a: float, density_b: float) -> float:
    """Jaccard of two independent uniformly random masks of these densities (the large-N limit):
    P(both) / P(either) = ab / (a + b − ab)."""
    either = density_a + density_b - density_a * density_b
    return density_a * density_b / either if either > 0 else 1.0


def mean_pairwise_jaccard(masks: Sequence[Mapping[str, torch.Tensor]]) -> float | None:
    """Mean Jaccard over all unordered pairs of ``masks`` (None for fewer than two)."""
    values = [jaccard(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------------------------------------------
# Calibration on single clients.


class Calibrator:
    """Scores clients' calibration samples (the ClientApp's :func:`client_scores`) for the weights of one run."""

    def __init__(self, config: RunConfig, weights: Mapping[str, torch.Tensor]) -> None:
        from fedtalos.task.model import HEAD_PREFIX
        from fedtalos.task.resources import get_resources

        self.config = config
        self.resources = get_resources(config)
        self.resources.load_weights(weights)
        self.shapes = {k: tuple(v.shape) for k, v in weights.items() if not k.startswith(HEAD_PREFIX)}
        self._first_round: dict[int, dict[str, torch.Tensor]] = {}  # round-1 scores need no mask: shared

    def scores(self, pid: int, round_index: int, soft_mask: Mask | None) -> dict[str, torch.Tensor]:
        """Client ``pid``'s score sums in calibration round ``round_index`` (1-based), CPU float32."""
        from fedtalos.editing.scoring import client_scores

        if soft_mask is None and round_index == 1 and pid in self._first_round:
            return self._first_round[pid]
        scores, _ = client_scores(self.config, self.resources, pid, round_index, soft_mask)
        scores = {k: v.cpu() for k, v in scores.items()}
        if soft_mask is None and round_index == 1:
            self._first_round[pid] = scores
        return scores

    def _calibrate(self, score_round: ScoreRound) -> Mask:
        c = self.config
        return calibrate(score_round, self.shapes, c.mask_rule, c.sparsity, c.calibration_rounds, c.mask_scope)

    def pooled_samples(self, round_index: int) -> torch.Tensor:
        """The images the federated calibration scored in round ``round_index``, its cohort's in partition order."""
        from fedtalos.editing.scoring import calibration_samples
        from fedtalos.federation.cohort import calibration_cohort

        pool = []
        for pid in calibration_cohort(self.config, round_index):
            images, labels = self.resources.client_data(pid)
            pool.append(images[calibration_samples(self.config, len(labels), round_index, pid).to(images.device)])
        return torch.cat(pool)

    def subset_masks(self, subset: int, size: int) -> tuple[Mask, Mask]:
        """(the mask of iid subset ``subset``, the mask of the rest of the pool): ``size`` of the pooled calibration
        samples (the same positions in every round's pool, :func:`split_pool`) calibrated alone with their own label
        draws, and the pooled samples it left out calibrated together, the subset's out-of-sample aggregate."""
        from fedtalos.editing.scoring import sample_scores
        from fedtalos.seeds import agreement_label_seed, agreement_subset_generator

        c = self.config

        def score_round(left_out: bool, r: int, alive: Mask | None) -> dict[str, torch.Tensor]:
            pool = self.pooled_samples(r)
            pick, rest = split_pool(len(pool), size, agreement_subset_generator(c.seed, subset))
            if left_out:
                label_seed = derive_seed(c.seed, AGREEMENT, subset, r, LABELS, LEFT_OUT)
                images = pool[rest.to(pool.device)]
            else:
                label_seed = agreement_label_seed(c.seed, subset, r)
                images = pool[pick.to(pool.device)]
            return {k: v.cpu() for k, v in sample_scores(c, self.resources, images, label_seed, alive).items()}

        alone = self._calibrate(lambda r, alive: score_round(False, r, alive))
        return alone, self._calibrate(lambda r, alive: score_round(True, r, alive))

    def client_mask(self, pid: int) -> Mask:
        """The mask client ``pid`` would calibrate alone: every round on its own samples, with its own mask."""
        return self._calibrate(lambda r, alive: self.scores(pid, r, alive))

    def federated_mask(self) -> Mask:
        """The federated calibration again: per round the sampled cohort's summed scores (server order)."""
        from fedtalos.federation.cohort import calibration_cohort

        def score_round(r: int, alive: Mask | None) -> dict[str, torch.Tensor]:
            return sum_scores((self.scores(pid, r, alive) for pid in calibration_cohort(self.config, r)), self.shapes)

        return self._calibrate(score_round)


def split_pool(pool_size: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(``size`` positions of a pool of ``pool_size`` samples, the other positions): a disjoint split, one
    permutation drawn from ``generator``."""
    order = torch.randperm(pool_size, generator=generator)
    return order[:size], order[size:]


def cohort_members(config: RunConfig) -> set[int]:
    """The partition ids that scored in any calibration round (their samples built the aggregated mask)."""
    from fedtalos.federation.cohort import calibration_cohort

    return {pid for r in range(1, config.calibration_rounds + 1) for pid in calibration_cohort(config, r)}


def client_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std of the clients' Jaccard: of the clients outside the calibration cohort (``mean_jaccard``,
    out-of-sample) and of the cohort's members apart (``cohort_mean_jaccard``: in-sample)."""
    outside = [r["jaccard"] for r in rows if not r["in_cohort"]]
    inside = [r["jaccard"] for r in rows if r["in_cohort"]]
    mean, std, n = mean_std(outside)
    cohort_mean, cohort_std, cohort_n = mean_std(inside)
    return {
        "mean_jaccard": mean,
        "std_jaccard": std,
        "clients_outside_cohort": n,
        "cohort_mean_jaccard": cohort_mean,
        "cohort_std_jaccard": cohort_std,
        "clients_in_cohort": cohort_n,
    }


def floor_row(subset: int, samples: int, alone: Mask, left_out: Mask, aggregated: Mask) -> dict[str, Any]:
    """One noise-floor subset: its mask against the aggregate that left it out (``jaccard``, the floor) and, for
    reference, against the run's aggregate, which its samples helped build (``jaccard_in_sample``)."""
    return {
        "subset": subset,
        "samples": samples,
        "density": mask_stats(alone)["density"],
        "jaccard": jaccard(alone, left_out),
        "jaccard_in_sample": jaccard(alone, aggregated),
    }


def calibration_weights(run_dir: Path, config: RunConfig) -> tuple[dict[str, torch.Tensor], str]:
    """The global weights the run calibrated with, and where they came from (see the module docstring)."""
    from fedtalos.task.model import HEAD_PREFIX
    from fedtalos.task.resources import get_resources

    store = CheckpointStore(run_dir / "checkpoints", config.result_hash(), keep=10**9)
    latest = None
    for step in reversed(store.steps()):
        checkpoint = store.load(step)
        latest = latest or checkpoint
        if checkpoint.meta.get("phase") == "calibration":
            weights = checkpoint_weights(checkpoint)
            return weights, f"checkpoint of step {step} (calibration phase)"
    if latest is None or latest.meta.get("phase") not in ("calibration", "train", "done"):
        raise ValueError(f"{run_dir}: no checkpoint after the head phase; the run has not calibrated a mask yet")
    final = checkpoint_weights(latest)
    # built afresh, not from the per-process cache: a cached model may hold weights loaded since (e.g. by a server
    # that ran in this process)
    initial = get_resources.__wrapped__(config, pretrained=True).weights()
    weights = {k: (final[k] if k.startswith(HEAD_PREFIX) else v) for k, v in initial.items()}
    return weights, f"initial backbone + frozen head of checkpoint {latest.step}"


def mask_agreement(
    run_dir: str | Path,
    clients: int | None = 10,
    device: str | None = None,
    check: bool = True,
    subsets: int = 5,
) -> dict[str, Any]:
    """Jaccard of single-client masks with the run's aggregated mask, and the noise floor; writes JSON, CSV and a
    figure.

    Args:
        run_dir: a run directory with ``config.json`` and its mask (least- or most-sensitive rule).
        clients: how many clients to analyse (partition ids 0..clients−1); None = all of them.
        device: override the run's device (e.g. 'cpu'); None = the run's own setting.
        check: also repeat the federated calibration and compare it with the run's mask.
        subsets: how many iid subsets of the pooled calibration samples, each as large as one client's, give the
            noise floor (0 = none).

    Returns:
        The record written to ``analysis/mask_agreement.json``.
    """
    run_dir = Path(run_dir)
    stored = json.loads((run_dir / "config.json").read_text())
    values = dict(stored["config"])
    if device:
        values["device"] = device
    config = RunConfig.from_mapping(values)
    if config.mask_rule not in SENSITIVITY_RULES:
        raise ValueError(
            f"{run_dir}: mask-rule = {config.mask_rule!r}; the agreement analysis applies to the sensitivity rules "
            "(magnitude and random masks do not depend on client data)"
        )
    aggregated = read_run_mask(run_dir)
    aggregated_density = mask_stats(aggregated)["density"]
    weights, source = calibration_weights(run_dir, config)
    calibrator = Calibrator(config, weights)
    pids = list(range(config.num_clients if clients is None else min(clients, config.num_clients)))
    cohort = cohort_members(config)
    masks, rows = [], []
    for pid in pids:
        mask = calibrator.client_mask(pid)
        masks.append(mask)
        labels = calibrator.resources.client_data(pid)[1]
        rows.append(
            {
                "client": pid,
                "examples": len(labels),
                "classes": len(torch.unique(labels)),
                "density": mask_stats(mask)["density"],
                "jaccard": jaccard(mask, aggregated),
                "in_cohort": pid in cohort,
            }
        )
    pooled = len(calibrator.pooled_samples(1))
    size = min(config.fisher_samples, pooled)
    # a pool of one client's size leaves nothing out to compare a subset with: no floor
    floor = [
        floor_row(s, size, *calibrator.subset_masks(s, size), aggregated)
        for s in range(subsets if pooled > size else 0)
    ]
    floor_mean, floor_std, _ = mean_std([r["jaccard"] for r in floor])
    record: dict[str, Any] = {
        "run": run_dir.name,
        "mask_rule": config.mask_rule,
        "sparsity": config.sparsity,
        "calibration_rounds": config.calibration_rounds,
        "partitioning": config.partitioning,
        "classes_per_client": config.classes_per_client if config.partitioning == "noniid" else None,
        "clients_requested": clients,
        "weights": source,
        "aggregated_density": aggregated_density,
        **client_summary(rows),
        "pairwise_jaccard": mean_pairwise_jaccard(masks),
        "chance_jaccard": chance_jaccard(aggregated_density, aggregated_density),
        "noise_floor_jaccard": floor_mean,
        "noise_floor_std": floor_std,
        "clients": rows,
        "noise_floor": floor,
    }
    if check:
        reproduced = calibrator.federated_mask()
        record["reproduced_jaccard"] = jaccard(reproduced, aggregated)
        record["reproduced_exactly"] = all(torch.equal(reproduced[k], aggregated[k].bool()) for k in aggregated)
    _write_outputs(run_dir, record)
    return record


def _write_outputs(run_dir: Path, record: dict[str, Any]) -> None:
    (run_dir / "analysis").mkdir(exist_ok=True)
    atomic_write_bytes(run_dir / OUTPUT_JSON, json.dumps(record, indent=1).encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(record["clients"][0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(record["clients"])
    atomic_write_bytes(run_dir / OUTPUT_CSV, buffer.getvalue().encode())
    if record["noise_floor"]:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(record["noise_floor"][0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(record["noise_floor"])
        atomic_write_bytes(run_dir / OUTPUT_FLOOR_CSV, buffer.getvalue().encode())
    from fedtalos.study.mask_figures import plot_client_agreement

    plot_client_agreement(record, run_dir / OUTPUT_PNG)
