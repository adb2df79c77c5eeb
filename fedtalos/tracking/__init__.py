"""Run directories, checkpoints, metric logs and plots."""
