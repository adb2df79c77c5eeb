"""What a study step needs on disk before it can run, and the command that makes it: a search's ``best.toml`` for
``--base``, a mask file for ``mask-path``. The sweep refuses a plan (even ``--dry-run``) that needs a file nobody
makes, naming the command that writes it."""

from __future__ import annotations

from pathlib import Path

from fedtalos.config import RunConfig


def missing_base_file(path: Path) -> str:
    """The problem of a ``--base`` file that is not there, with the command that writes a search's ``best.toml``."""
    study = path.expanduser().parent.name
    space = study.removeprefix("search-") if study.startswith("search-") else "central"
    return (
        f"--base {path}: no such file. A search's best.toml is written by step 0 of the study: "
        f"`fedtalos search configs/search/{space}.toml --trials 20 --output-root {path.expanduser().parent.parent}` "
        f"writes {path.expanduser().parent.parent}/search-{space}/best.toml; run it first"
    )


def missing_mask_file(config: RunConfig) -> str:
    """The problem of a ``mask-path`` that no ``[[edit]]`` step of the family writes and that is not on disk."""
    return (
        f"mask-path = {config.mask_path!r}: no such file, and this family does not write it. Write it first "
        f"(`fedtalos edit --out {config.mask_path} --sparsity {config.sparsity:g}`, with the grid file's settings), "
        "or let the grid file write it: an [[edit]] step and `mask-from` (configs/masks.toml)"
    )
