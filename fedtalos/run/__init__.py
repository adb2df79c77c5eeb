"""How a run of either kind starts, saves and ends, written once for the federated server and the centralized trainer.

- :mod:`~fedtalos.run.preflight`: will this run start? (output root, data, weights, mask file, splits, shards)
- :mod:`~fedtalos.run.start`: the starting weights and mask, with or without a mask file
- :mod:`~fedtalos.run.codec`: a run's state ↔ its checkpoint tensors; the analysis reads checkpoints through it
- :mod:`~fedtalos.run.finish`: the end of a run (summary, mask totals and report, mask file, plots)

A run's phases, its position in them, its evaluation cadence and what trains live in :mod:`fedtalos.lifecycle`.
"""
