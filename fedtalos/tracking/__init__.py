"""What a run leaves on disk: its directory (``rundir``), checkpoints, metric logs and sinks, plots, the mask report,
the round callbacks that write them (``callbacks``), and the logging setup (``log_setup``)."""
