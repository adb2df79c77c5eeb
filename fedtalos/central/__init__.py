"""The centralized baseline: one process fine-tunes the model on the whole train split (``fedtalos central``).

``trainer`` runs the phases (head, calibration, train) of :mod:`fedtalos.run.phases` in its epoch loop; ``state`` is
where a run stands and how it is checkpointed; ``schedulers`` the per-step learning-rate schedulers;
``head_and_mask`` the step-0 head and the mask calibration of the editing pipeline. The command line is
:mod:`fedtalos.cli.central`, the hyper-parameter search :mod:`fedtalos.study.search`.
"""
