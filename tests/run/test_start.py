"""Where a fresh run starts: the built weights, or a mask file's head over them with its mask; always copies."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from fedtalos.run.start import start_weights

BUILT = {"blocks.0.w": torch.ones(2, 2), "head.weight": torch.zeros(3, 2), "head.bias": torch.zeros(3)}


def resources() -> Any:
    return SimpleNamespace(initial_weights={k: v.clone() for k, v in BUILT.items()})


def test_a_fresh_run_starts_from_copies_of_the_built_weights_and_no_mask():
    built = resources()
    weights, mask = start_weights(built, None)
    assert mask is None and list(weights) == list(BUILT)
    weights["blocks.0.w"].add_(1.0)
    assert torch.equal(built.initial_weights["blocks.0.w"], BUILT["blocks.0.w"]), "the cached weights untouched"


def test_a_mask_file_brings_its_head_and_its_mask():
    head = {"head.weight": torch.full((3, 2), 2.0), "head.bias": torch.ones(3)}
    file_mask = {"blocks.0.w": torch.tensor([[True, False], [False, True]])}
    found: Any = SimpleNamespace(head=head, mask=file_mask)
    weights, mask = start_weights(resources(), found)
    assert torch.equal(weights["head.weight"], head["head.weight"]) and torch.equal(
        weights["head.bias"], head["head.bias"]
    )
    assert torch.equal(weights["blocks.0.w"], BUILT["blocks.0.w"]) and list(weights) == list(BUILT)
    assert mask is not None and torch.equal(mask["blocks.0.w"], file_mask["blocks.0.w"])
    mask["blocks.0.w"].fill_(False)
    weights["head.bias"].add_(1.0)
    assert file_mask["blocks.0.w"].any() and torch.equal(head["head.bias"], torch.ones(3)), (
        "the file's tensors untouched"
    )
