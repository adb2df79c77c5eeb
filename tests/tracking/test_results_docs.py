"""docs/results.md's snippet that loads a run's fine-tuned weights into ``timm.create_model``, run as written on a
run directory whose checkpoints hold known weights (a final and an earlier, better one)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fedtalos.config import RunConfig
from fedtalos.run.codec import state_tensors
from fedtalos.task.model import build_model
from fedtalos.tracking.rundir import open_run_dir

DOC = Path(__file__).parents[2] / "docs" / "results.md"
MODEL = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def snippet() -> str:
    section = DOC.read_text().split("## Loading the fine-tuned weights into timm", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_loading_snippet_gives_the_runs_model(tmp_path: Path):
    config = RunConfig.from_mapping({"output-root": str(tmp_path), "model": MODEL, "image-size": 32})
    states = []
    with open_run_dir(config, "centralized") as run_dir:
        for step, score in ((1, 0.9), (2, 0.5)):  # the best checkpoint first, the final one last
            torch.manual_seed(step)
            weights = build_model(MODEL, image_size=32, pretrained=False).state_dict()
            mask = {"blocks.0.mlp.fc1.weight": torch.ones(768, 192, dtype=torch.bool)}
            run_dir.checkpoints.save(step, state_tensors(weights, mask=mask), {"phase": "train"}, score=score)
            states.append(weights)
    code = snippet().replace('"~/fedtalos/runs/central-full-cosine-lr0.01-seed0-ae6f55"', repr(str(run_dir.path)))
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)
    loaded = scope["model"].state_dict()
    assert loaded.keys() == states[1].keys()
    assert all(torch.equal(loaded[k], states[1][k]) for k in loaded), "the final model"
    assert scope["best"].name == "ckpt-000000001.json", "the best validation is named"
    assert not scope["model"].training
