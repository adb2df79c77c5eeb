"""Starting federated runs as processes, for the CLI and the sweep: ``flwr_run`` runs ``flwr run`` and reads
Flower's final status; ``superlink`` starts a private simulation SuperLink (its own port, FLWR_HOME and
environment), killed with the process that started it."""
