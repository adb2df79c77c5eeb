"""``fedtalos demo``: the whole tool once, in minutes, on a CPU, with nothing downloaded.

    fedtalos demo [--out DIR] [--app DIR]

It writes stand-in data in CIFAR-100's on-disk format (generated images, NOT CIFAR-100), then runs, through the
real commands: a tiny federated run (``fedtalos run``), a centralized editing run that calibrates a mask
(``fedtalos central``), a sweep of two configurations (``fedtalos sweep``) and ``fedtalos summarize``. The model is
the random-init 2-block test ViT at 32 px, so every accuracy is near chance level on purpose: the demo shows the
commands and what they leave on disk, not a result. Each step's config is a file under ``DIR/configs/`` that the
printed command reads, so any step can be re-run or changed by hand.

Heavy modules are imported when the command runs, not when the ``fedtalos`` command lists its subcommands.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROG = "fedtalos demo"
HELP = "a few-minute CPU tour on generated stand-in data (not CIFAR): federated run, editing run, sweep, summary"
DEFAULT_OUT = "~/fedtalos/demo"
# The file that marks a directory as a demo's own, so that a second demo may replace it (and nothing else).
MARKER = ".fedtalos-demo"
DATA_FOLDER = "stand-in-data-NOT-CIFAR"
NOT_CIFAR = (
    "These images are GENERATED, NOT CIFAR-100: one random colour pattern per class, shifted and noised\n"
    "(fedtalos/testing/synthetic.py). Only the file format is CIFAR-100's, so that the real code paths read them.\n"
)
CHANCE_NOTE = (
    "The numbers above are not results, on purpose: a random-init 2-block test ViT, trained for seconds on generated "
    "images that are NOT CIFAR-100, stays near chance level (1 % for 100 classes); the editing run's closed-form "
    "ridge head may do a little better because it fits the generated classes' colour patterns. The demo shows that "
    "every step runs and what it writes; what the method reaches on CIFAR-100 is in docs/study.md."
)

# What every step shares: the tiny test ViT on the CPU at 32 px, the generated data, and little data per step.
TINY = {
    "model": "vit-tiny-test",
    "pretrained": False,
    "image-size": 32,
    "device": "cpu",
    "dataset-download": False,
    "dataset-verify": False,
    "batch-size": 16,
    "eval-batch-size": 250,
    "eval-every": 1,
    "progress": False,
}
FEDERATED = {"num-clients": 4, "fraction-train": 0.5, "local-steps": 2, "num-server-rounds": 3, "lr": 0.05}
EDITING = {
    "epochs": 2,
    "head": "ridge",
    "mask-rule": "least-sensitive",
    "sparsity": 0.9,
    "calibration-rounds": 2,
    "fisher-samples": 8,
}
SWEEP_GRID = """\
# Two configurations of a centralized run (the learning-rate schedule), one seed.
[sweep]
kind = "centralized"
family = "demo"
seeds = [0]

[base]
{base}
epochs = 2

[grid]
lr-schedule = ["constant", "cosine"]
"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write stand-in data in CIFAR-100's file format (generated images, NOT CIFAR-100), then run a "
        "tiny federated run, a centralized editing run, a sweep of two configurations and `fedtalos summarize` "
        "through the real commands, on the CPU, in a few minutes. The model is the random-init test ViT, so every "
        "accuracy is near chance level on purpose.",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"where the data, configs, runs and figures go (default: {DEFAULT_OUT}); a directory that is not "
        "empty is refused unless an earlier demo made it, which is then replaced",
    )
    parser.add_argument(
        "--app", metavar="DIR", help="the Flower app directory (default: this checkout of fedtalos, else .)"
    )
    return parser


class DemoError(Exception):
    """Bad input to the demo (the output directory, the app), found before anything runs."""


def prepare_out(out: Path) -> Path:
    """``out``, absolute and empty, with the demo's marker; an earlier demo's directory is replaced.

    Raises DemoError for a file, or a directory that holds anything and no marker: it is not ours to delete.
    """
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out}: is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DemoError(
                f"--out {out}: this directory is not empty and was not made by `fedtalos demo`; "
                "give an empty or new directory"
            )
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("made by `fedtalos demo`; a later demo with the same --out replaces this directory\n")
    except OSError as e:
        raise DemoError(f"--out {out}: cannot write there ({e.strerror})") from None
    return out


def find_app(app: str | None) -> Path:
    """The Flower app: ``app`` if given, else the checkout this package was imported from, else the current
    directory; it must hold a ``pyproject.toml`` with a ``[tool.flwr.app]`` table."""
    import fedtalos

    candidates = [Path(app)] if app else [Path(fedtalos.__file__).resolve().parents[1], Path.cwd()]
    for candidate in candidates:
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and "[tool.flwr.app]" in pyproject.read_text():
            return candidate.absolute()
    where = candidates[0] if app else "this checkout or the current directory"
    raise DemoError(f"no Flower app (a pyproject.toml with [tool.flwr.app]) in {where}; pass --app DIR")


def write_toml(path: Path, values: Mapping[str, Any]) -> Path:
    path.write_text(toml_lines(values) + "\n")
    return path


def toml_lines(values: Mapping[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(dict(values)).rstrip("\n")


def step(title: str, argv: Sequence[str]) -> None:
    """Announce a step with the command a user would type for it."""
    import shlex

    print(f"\n=== {title}\n$ fedtalos {shlex.join(argv)}", flush=True)


def run_demo(out: Path, app: Path) -> int:
    """Every step in order; 0, or the exit status of the first step that failed."""
    from fedtalos.cli import central, run, summarize, sweep
    from fedtalos.testing.synthetic import write_fake_cifar100

    started = time.monotonic()
    data = out / DATA_FOLDER
    runs = out / "runs"
    configs = out / "configs"
    configs.mkdir()
    print(f"=== stand-in data (NOT CIFAR-100: generated images in its file format) -> {data}", flush=True)
    write_fake_cifar100(data, train_per_class=10, test_per_class=5)
    (data / "NOT-CIFAR-100.txt").write_text(NOT_CIFAR)
    base = {**TINY, "dataset-root": str(data), "output-root": str(runs)}

    federated = write_toml(configs / "federated.toml", {**base, **FEDERATED})
    argv = [str(app), "-c", str(federated)]
    step("1/4 a federated run: FedAvg, K = 4 clients, 2 per round, J = 2 local steps, 3 rounds", ["run", *argv])
    if status := run.main(argv, prog="fedtalos run"):
        return status

    editing = write_toml(configs / "editing.toml", {**base, **EDITING})
    argv = ["--config", str(editing)]
    step(
        "2/4 an editing run, centralized: ridge head, a least-sensitive mask freezing 90 % of the backbone",
        ["central", *argv],
    )
    if status := central.main(argv, prog="fedtalos central"):
        return status

    grid = configs / "sweep.toml"
    grid.write_text(SWEEP_GRID.format(base=toml_lines(base)))
    argv = [str(grid)]
    step("3/4 a sweep of two configurations (constant vs cosine learning rate)", ["sweep", *argv])
    if status := sweep.main(argv, prog="fedtalos sweep"):
        return status

    argv = [str(runs)]
    step("4/4 the table and figures of every run above", ["summarize", *argv])
    if status := summarize.main(argv, prog="fedtalos summarize"):
        return status
    print(f"\n{CHANCE_NOTE}")
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s")
    print(f"\nfigures: {runs / 'summary' / 'figures'}")
    print(f"runs:    {runs}  (one directory per run: config.json, metrics.csv, summary.json, plots/)")
    print("next:    `make run` is the real job (GPU, CIFAR-100 and the DINO weights downloaded): see README.md")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Prepare ``--out``, then run every step; 0 only if all of them succeeded."""
    from fedtalos.cli.options import fail

    args = build_parser(prog).parse_args(argv)
    try:
        app = find_app(args.app)
        out = prepare_out(Path(args.out))
    except DemoError as e:
        return fail(prog, str(e))
    status = run_demo(out, app)
    if status:
        print(f"{prog}: a step failed (exit status {status}); its output is above", file=sys.stderr)
    return status
