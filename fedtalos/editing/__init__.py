"""Model editing in pure PyTorch (no Flower): sparse SGD, Fisher sensitivity scores, masks, the ridge head.

Conventions: mask True = trainable; sparsity = the fraction of scored weights frozen. ``docs/editing.md`` describes
the algorithm these modules implement, its conventions, and the tests that show each of its guarantees. Modules:
``optim`` SparseSGDM; ``fisher``, ``persample`` and ``scoring`` the sensitivity scores; ``masks`` the schedule, the
threshold and each rule's mask; ``calibration`` the rounds and the rule dispatch; ``head`` the step-0 ridge head;
``sparse`` bit-packing and the trainable entries as one vector; ``mask_file`` the file format of a mask.
"""

from fedtalos.editing.optim import SparseSGDM  # central/trainer.py imports it from here

__all__ = ["SparseSGDM"]
