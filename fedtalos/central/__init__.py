"""The centralized baseline: one process fine-tunes the model on the whole train split (``fedtalos-central``).

``state`` holds where a run stands and how it is checkpointed, ``schedules`` the per-step learning-rate
schedulers, ``editing`` the step-0 head and mask calibration of the TaLoS pipeline, ``trainer`` the phases and
the epoch loop. The command line is :mod:`fedtalos.cli.central`, the search :mod:`fedtalos.study.search`.
"""
