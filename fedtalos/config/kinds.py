"""What a run of one kind reads of a config: a centralized run never reads the federated-only keys
(``KeyFacts.scope``), so they take no part in its identity (run name, result hash, ``config.json``)."""

from __future__ import annotations

from fedtalos.config import Kind, RunConfig


def for_kind(config: RunConfig, kind: Kind) -> RunConfig:
    """``config`` as a run of ``kind`` reads it: for a centralized run, its federated-only keys at their defaults
    (``central --local-steps 8`` is the run of ``central`` alone); a federated config as it is. A config whose
    federated-only keys are at their defaults is returned equal, so existing run directories keep their names
    (``tests/cli/test_central.py::test_federated_only_keys_do_not_name_a_centralized_run``)."""
    defaults, facts = RunConfig.defaults(), RunConfig.facts()
    federated = {k: defaults[k] for k in facts if kind == "centralized" and facts[k].scope == "federated"}
    return config.replace(**federated) if federated else config
