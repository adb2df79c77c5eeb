"""Where a fresh run starts: the built weights, or with ``mask-path`` the mask file's head over them and its mask."""

from __future__ import annotations

import torch

from fedtalos.editing.mask_file import MaskFile
from fedtalos.task.resources import Resources


def start_weights(
    resources: Resources, mask_file: MaskFile | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(weights, mask) of a fresh run: copies, so that training never writes into the cached built weights.

    The weights are the built ones (not the cached model's, which an earlier run in this process may have trained);
    a mask file replaces the head with its own and brings the mask: step 0 and calibration were done elsewhere.
    """
    assert resources.initial_weights is not None, "get_resources(..., pretrained=True) keeps them"
    weights = {k: v.clone() for k, v in resources.initial_weights.items()}
    if mask_file is None:
        return weights, None
    weights.update({k: v.clone() for k, v in mask_file.head.items()})
    return weights, {k: m.clone() for k, m in mask_file.mask.items()}
