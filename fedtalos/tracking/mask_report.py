"""A run's mask and what it looks like per layer: ``mask.safetensors``, a density table (CSV) and a figure (PNG).

Every run that edits writes this report through :func:`write_mask_report`; the mask is in the one file format of
masks (:func:`fedtalos.editing.mask_file.write_mask`), read back by :func:`read_run_mask` (which also reads the
``mask.npz`` of run directories written before that format), and the study reads the table back through
:func:`read_density_rows`: one format, ``mask_density.csv`` with the columns of :data:`DENSITY_COLUMNS`.
Density = the trainable fraction (mask True); sparsity = 1 − density, the fraction frozen (the project's
convention, ``docs/editing.md``). Layers are the transformer blocks (``blocks.<i>``) and the top-level modules
(``patch_embed``, ``cls_token``, ``pos_embed``, ``norm``); :func:`layer_of` is the package's one mapping from a
tensor name to its layer.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor

from fedtalos.config import RunConfig
from fedtalos.editing.mask_file import MaskFile, read_mask, read_npz_mask, write_mask
from fedtalos.editing.masks import Mask
from fedtalos.fsutil import atomic_write_bytes
from fedtalos.tracking.plots import save_figure, style_axes

MASK_FILE = "mask.safetensors"
NPZ_MASK_FILE = "mask.npz"  # the run directory's mask before it had the format of mask files
DENSITY_FILE = "mask_density.csv"
DENSITY_PLOT = "mask_density.png"
DENSITY_COLUMNS = ("tensor", "layer", "shape", "numel", "trainable", "density")
_BLOCK = re.compile(r"^(blocks\.(\d+))\.(.+)$")
# Weight matrices shown as their own lines in the figure; everything else of a block is summed as "other".
_KINDS = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")


class TensorLayer(NamedTuple):
    """Where a tensor sits in the model: its layer, the block index (None outside the blocks), the rest."""

    layer: str
    block: int | None
    within: str


def layer_of(name: str) -> TensorLayer:
    """The layer of a parameter: ``blocks.3.attn.qkv.weight`` → (``blocks.3``, 3, ``attn.qkv.weight``),
    ``patch_embed.proj.weight`` → (``patch_embed``, None, ``proj.weight``), ``cls_token`` → (``cls_token``, None,
    ``cls_token``)."""
    m = _BLOCK.match(name)
    if m:
        return TensorLayer(m.group(1), int(m.group(2)), m.group(3))
    head, _, rest = name.partition(".")
    return TensorLayer(head, None, rest or head)


def density_rows(mask: Mapping[str, Tensor]) -> list[dict[str, object]]:
    """One row per masked tensor, in the mask's order, with the columns of :data:`DENSITY_COLUMNS`: the tensor's
    name, its layer (:func:`layer_of`), its shape (``384x1152``), its entry count, how many of them are trainable,
    and that fraction (NaN for an empty tensor)."""
    rows = []
    for name, m in mask.items():
        trainable, numel = int(m.sum()), m.numel()
        rows.append(
            {
                "tensor": name,
                "layer": layer_of(name).layer,
                "shape": "x".join(str(d) for d in m.shape),
                "numel": numel,
                "trainable": trainable,
                "density": trainable / numel if numel else float("nan"),
            }
        )
    return rows


def read_density_rows(path: Path) -> list[dict[str, object]]:
    """The rows of a ``mask_density.csv`` written by :func:`write_mask_report`, typed as :func:`density_rows`
    returns them (numel and trainable int, density float); columns are read by name."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(DENSITY_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a mask density table (missing columns: {', '.join(sorted(missing))})")
        return [
            {
                "tensor": r["tensor"],
                "layer": r["layer"],
                "shape": r["shape"],
                "numel": int(r["numel"]),
                "trainable": int(r["trainable"]),
                "density": float(r["density"]),
            }
            for r in reader
        ]


def _layer_density(rows: list[dict[str, object]], kind: str | None = None) -> dict[str, float]:
    """Layer → density over its tensors (of one kind within the block, "other" for the rest, None for all)."""
    sums: dict[str, list[int]] = {}
    for r in rows:
        place = layer_of(str(r["tensor"]))
        if kind is not None:
            if place.block is None:
                continue
            if (kind != "other" and place.within != kind) or (kind == "other" and place.within in _KINDS):
                continue
        acc = sums.setdefault(place.layer, [0, 0])
        acc[0] += int(r["trainable"])  # type: ignore[call-overload]
        acc[1] += int(r["numel"])  # type: ignore[call-overload]
    return {layer: t / n for layer, (t, n) in sums.items() if n}


def plot_density(rows: list[dict[str, object]], out: Path, title: str = "") -> Path:
    """Left: density of each layer (all its tensors); right: per block, the density of each weight matrix kind."""
    layers = _layer_density(rows)
    fig, (ax_all, ax_kind) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    names = list(layers)
    ax_all.bar(range(len(names)), [100 * layers[n] for n in names], color="tab:blue")
    ax_all.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    style_axes(ax_all, "", "trainable entries (%)")
    ax_all.set_title("density per layer (mask 1 = trainable)")
    block_of = {place.layer: place.block for place in (layer_of(str(r["tensor"])) for r in rows)}
    blocks = [n for n in names if block_of[n] is not None]
    for kind in (*_KINDS, "other"):
        values = _layer_density(rows, kind)
        xs = [i for i, b in enumerate(blocks) if b in values]
        if xs:
            ax_kind.plot(xs, [100 * values[blocks[i]] for i in xs], marker="o", ms=3, label=kind)
    ax_kind.set_xticks(range(len(blocks)), [str(block_of[b]) for b in blocks])
    style_axes(ax_kind, "transformer block", "trainable entries (%)")
    ax_kind.set_title("density per block and weight kind")
    ax_kind.legend(fontsize=8, frameon=False)
    total = sum(int(r["numel"]) for r in rows)  # type: ignore[call-overload]
    kept = sum(int(r["trainable"]) for r in rows)  # type: ignore[call-overload]
    fig.suptitle(f"{title} density {100 * kept / max(total, 1):.2f} % ({kept:,} of {total:,} scored entries)".strip())
    return save_figure(fig, out)


def write_mask_report(run_dir: Path, mask: Mapping[str, Tensor], title: str = "") -> list[Path]:
    """Write ``mask.safetensors``, ``mask_density.csv`` and ``plots/mask_density.png`` into ``run_dir``; returns the
    paths."""
    run_dir = Path(run_dir)
    write_mask(run_dir / MASK_FILE, mask)
    rows = density_rows(mask)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=DENSITY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(run_dir / DENSITY_FILE, buffer.getvalue().encode())
    plot = plot_density(rows, run_dir / "plots" / DENSITY_PLOT, title)
    return [run_dir / MASK_FILE, run_dir / DENSITY_FILE, plot]


def run_mask_path(run_dir: Path) -> Path | None:
    """The file of a run directory's mask: ``mask.safetensors``, else the ``mask.npz`` of an older run, else None."""
    for name in (MASK_FILE, NPZ_MASK_FILE):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def read_run_mask(run_dir: Path) -> Mask:
    """A run directory's mask (:func:`run_mask_path`): name → CPU bool tensor, True = trainable.

    Raises:
        FileNotFoundError: the run directory holds no mask (a dense run, or one that has not calibrated yet).
    """
    path = run_mask_path(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} holds no mask ({MASK_FILE})")
    return read_mask(path) if path.name == MASK_FILE else read_npz_mask(path)


def mask_title(config: RunConfig, source: MaskFile | None = None) -> str:
    """The report's title for a run's mask: rule, sparsity (fraction frozen) and threshold scope; ``source``: the
    :class:`~fedtalos.editing.mask_file.MaskFile` of a run with ``mask-path`` (its values, not the config's)."""
    if source is not None:
        return (
            f"{source.rule}, sparsity {source.sparsity:g} (fraction frozen), {source.scope} threshold, "
            f"from a {source.calibrated} mask file,"
        )
    return f"{config.mask_rule}, sparsity {config.sparsity:g} (fraction frozen), {config.mask_scope} threshold,"
