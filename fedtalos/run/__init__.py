"""A run's life cycle, written once for the federated server and the centralized trainer.

- :mod:`~fedtalos.run.phases`: its phases, its position in them, its evaluation cadence, what trains (no torch)
- :mod:`~fedtalos.run.preflight`: will this run start? (output root, data, weights, mask file, splits, shards)
- :mod:`~fedtalos.run.start`: the starting weights and mask, with or without a mask file
- :mod:`~fedtalos.run.codec`: a run's state ↔ its checkpoint tensors; the analysis reads checkpoints through it
- :mod:`~fedtalos.run.finish`: the end of a run (summary, mask totals and report, mask file, plots)
"""
