"""The study: grid files → planned runs → sweeps, the centralized search, result tables, figures and analyses.

Reads what runs wrote (run directories); nothing in the app imports this package. Modules, in data-flow order:

- ``grid``: the grid-file format (parse and check); ``plan``: grid → named, validated runs, and their state on disk;
- ``sweep``: runs the planned runs through the real commands (skip, resume, progress), on one or more ``slots``
  (``--parallel``, ``--gpus``, ``--shard``), with ``claims`` splitting an output root between sweep workers;
- ``search`` / ``search_space``: the centralized hyper-parameter search;
- ``results``: run directories → configurations (mean ± std over seeds); ``tables``: ``fedtalos summarize``
  (summary.csv, summary.md and the figures);
- ``figures`` (training) and ``mask_figures`` (sparse fine-tuning), on ``figure_common``;
- ``agreement``: the mask-agreement analysis of an editing run.
"""
