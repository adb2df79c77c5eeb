"""Bad input is refused before any compute, with one message naming the key, the value and what is allowed, and
no run directory is created, renamed or touched. Every case goes through both entry points: the ServerApp's
``main`` (what ``flwr run`` executes) and ``fedtalos run --check`` (the local launcher)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from safetensors.torch import save_file

from fedtalos.cli import run as run_command
from fedtalos.config import ConfigError
from fedtalos.task.model import DINO_VIT_S16, TINY_TEST_VIT, build_model, expected_backbone_shapes
from tests.support.fakegrid import FakeGrid, run_server

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _tiny_weights(tmp: Path) -> Path:
    path = tmp / "tiny-vit.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(TINY_TEST_VIT).state_dict().items()}, str(path))
    return path


def _dino_vit_s16_shapes(tmp: Path) -> Path:
    """A .pth with DINO ViT-S/16's tensor names and shapes (meta tensors: nothing to write but the header)."""
    path = tmp / "dino-vit-s16.pth"
    torch.save({k: torch.empty(s, device="meta") for k, s in expected_backbone_shapes(DINO_VIT_S16).items()}, path)
    return path


def _file_parent(tmp: Path) -> str:
    (tmp / "a-file").write_text("not a directory")
    return str(tmp / "a-file" / "runs")


# name: (overrides, or a function of the test's tmp dir giving them; fragments the message must contain)
Overrides = dict[str, Any] | Callable[[Path], dict[str, Any]]
CASES: dict[str, tuple[Overrides, list[str]]] = {
    "C zero": ({"fraction-train": 0.0}, ["fraction-train = 0.0", "must be in (0.0, 1.0]"]),
    "C above 1": ({"fraction-train": 1.5}, ["fraction-train = 1.5", "must be in (0.0, 1.0]"]),
    "C NaN": ({"fraction-train": math.nan}, ["fraction-train = nan", "finite number in (0.0, 1.0]"]),
    "J zero": ({"local-steps": 0}, ["local-steps = 0", "must be in [1, inf]"]),
    "J as a string": ({"local-steps": "4"}, ["local-steps = '4'", "must be an integer, got a string"]),
    "J as a float": ({"local-steps": 4.0}, ["local-steps = 4.0", "must be an integer, got a number"]),
    "Nc zero": ({"classes-per-client": 0}, ["classes-per-client = 0", "must be in [1, 100]"]),
    "Nc above 100": ({"classes-per-client": 101}, ["classes-per-client = 101", "must be in [1, 100]"]),
    "sparsity 1": ({"sparsity": 1.0}, ["sparsity = 1.0", "must be in [0.0, 1.0)"]),
    "sparsity negative": ({"sparsity": -0.1}, ["sparsity = -0.1", "must be in [0.0, 1.0)"]),
    "lr negative": ({"lr": -0.01}, ["lr = -0.01", "must be in (0.0, inf]"]),
    "num-clients as bool": ({"num-clients": True}, ["num-clients = True", "must be an integer, got true/false"]),
    "unknown strategy": ({"strategy": "fedsgd"}, ["strategy = 'fedsgd'", "must be one of 'fedavg', 'fedavgm'"]),
    "unknown mask rule": ({"mask-rule": "biggest"}, ["mask-rule = 'biggest'", "'least-sensitive', 'most-sensitive'"]),
    "unknown lr schedule": ({"lr-schedule": "linear"}, ["lr-schedule = 'linear'", "must be one of 'constant'"]),
    "plateau in FL": ({"lr-schedule": "plateau"}, ["lr-schedule = 'plateau'", "federated runs allow 'constant'"]),
    "misspelt key": ({"local-step": 4}, ["unknown key 'local-step'", "did you mean 'local-steps'"]),
    "min clients above cohort": ({"min-train-clients": 4}, ["min-train-clients = 4", "larger than the 3 clients"]),
    "run-name escapes the root": ({"run-name": ".."}, ["run-name = '..'", "must be a plain directory name"]),
    "run-name with a slash": ({"run-name": "a/b"}, ["run-name = 'a/b'", "must be a plain directory name"]),
    "relative output root": ({"output-root": "runs"}, ["output-root = 'runs'", "must be an absolute path"]),
    "output root under a file": (
        lambda tmp: {"output-root": _file_parent(tmp)},
        ["output-root = ", "a-file/runs'", "not writable", "is not a directory"],
    ),
    "output root not writable": (
        {"output-root": "/sys/fedtalos-runs"},
        ["output-root = '/sys/fedtalos-runs'", "not writable", "cannot write in /sys"],
    ),
    "dataset missing": (
        lambda tmp: {"dataset-root": str(tmp)},
        ["CIFAR-100 was not found in", "dataset-download is off", "dataset-root", "cifar-100-python.tar.gz"],
    ),
    "weights of another architecture": (
        lambda tmp: {"model": DINO_VIT_S16, "image-size": 32, "weights-path": str(_tiny_weights(tmp))},
        ["weights-path = ", "tiny-vit.safetensors'", "does not hold DINO ViT-S/16", "tensors missing"],
    ),
    "weights of another backbone": (
        lambda tmp: {
            "model": "vit_small_patch14_dinov2.lvd142m",
            "image-size": 28,
            "weights-path": str(_dino_vit_s16_shapes(tmp)),
        },
        ["weights-path = ", "does not hold DINOv2 ViT-S/14 (vit_small_patch14_dinov2.lvd142m)", "24 tensors missing"],
    ),
    "weights file missing": (
        lambda tmp: {"model": DINO_VIT_S16, "image-size": 32, "weights-path": str(tmp / "nope.pth")},
        ["weights-path = ", "nope.pth'", "does not exist"],
    ),
    "no validation images": ({"val-fraction": 1e-5}, ["val-fraction = 1e-05", "no validation image", "at least"]),
    "more clients than images": (
        {"num-clients": 2000, "fraction-train": 0.01},
        ["num-clients = 2000", "cannot give 2000 clients at least one sample", "lower num-clients"],
    ),
    "non-iid shards impossible": (
        {"num-clients": 20, "partitioning": "noniid", "classes-per-client": 100},
        ["num-clients = 20", "classes-per-client = 100", "can only form", "lower num-clients or classes-per-client"],
    ),
    "image size not a multiple of the patch size": (
        {"image-size": 20},
        ["image-size = 20", "multiple of vit-tiny-test's patch size 8", "e.g. 16 or 24"],
    ),
    "image size not a multiple of DINOv2's patch 14": (
        {"model": "vit_small_patch14_dinov2.lvd142m", "image-size": 32},
        ["image-size = 32", "patch size 14", "e.g. 28 or 42"],
    ),
    "unknown model": (
        {"model": "vit_large_patch16_224"},
        ["model = 'vit_large_patch16_224'", "vit_base_patch16_224.dino"],
    ),
    "CUDA requested without CUDA": ({"device": "cuda"}, ["device = 'cuda'", "CUDA is not available"]),
}


def _overrides(case: str, base: dict[str, Any], tmp: Path) -> dict[str, Any]:
    overrides, _ = CASES[case]
    return dict(base, **(overrides(tmp) if callable(overrides) else overrides))


def _skip_if_not_applicable(case: str) -> None:
    if case == "output root not writable" and not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    if case == "CUDA requested without CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")


def _no_run_directory(config: dict[str, Any], tmp: Path) -> None:
    root = Path(config["output-root"]) if Path(config["output-root"]).is_absolute() else tmp / "runs"
    assert not root.exists() or not any(root.iterdir()), f"something was created in {root}"
    assert not (tmp / "runs").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_server_refuses_bad_input_before_any_compute(case: str, tiny_run_config: dict[str, Any], tmp_path: Path):
    _skip_if_not_applicable(case)
    config = _overrides(case, tiny_run_config, tmp_path)
    grid = FakeGrid(10, config)
    with pytest.raises((ConfigError, OSError, RuntimeError)) as e:
        run_server(config, grid)
    message = str(e.value)
    for fragment in CASES[case][1]:
        assert fragment in message, f"{fragment!r} not in: {message}"
    if isinstance(e.value, ConfigError):
        assert len(e.value.problems) == 1, "one message for one problem"
    assert not grid.sent, "no client was contacted"
    _no_run_directory(config, tmp_path)


@pytest.mark.parametrize("case", list(CASES))
def test_launcher_check_refuses_bad_input(
    case: str, tiny_run_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
):
    _skip_if_not_applicable(case)
    if case == "relative output root":
        pytest.skip("made absolute here: tests/cli/test_settings.py::test_relative_paths_become_absolute")
    config = _overrides(case, tiny_run_config, tmp_path)
    toml = tmp_path / "overrides.toml"
    toml.write_bytes(tomli_w.dumps(config).encode())
    assert run_command.main([".", "--run-config", str(toml), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedtalos run: ")
    for fragment in CASES[case][1]:
        assert fragment in err, f"{fragment!r} not in: {err}"
    _no_run_directory(config, tmp_path)


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "case", ["lr negative", "dataset missing", "no validation images", "run-name escapes the root"]
)
def test_bad_input_leaves_an_existing_run_directory_untouched(
    case: str, tiny_run_config: dict[str, Any], tmp_path: Path
):
    # resume = false would rename the existing directory aside: it must not get that far
    good = dict(tiny_run_config, **{"num-server-rounds": 1, "eval-every": 100})
    run_dir, _ = run_server(good)
    before = _snapshot(run_dir.parent)
    bad = dict(_overrides(case, good, tmp_path), resume=False)
    with pytest.raises((ConfigError, OSError, RuntimeError)):
        run_server(bad, FakeGrid(10, bad))
    assert _snapshot(run_dir.parent) == before
    assert [p.name for p in run_dir.parent.iterdir()] == ["tiny"], "nothing renamed aside"
