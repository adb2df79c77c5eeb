"""What a run of one kind reads of a config: a centralized run never reads the federated-only keys
(``KeyFacts.scope``), so they take no part in its identity (run name, result hash, ``config.json``)."""

from __future__ import annotations

from fedtalos.config import Kind, RunConfig


def keys_read_by(kind: str) -> frozenset[str]:
    """The keys a run of ``kind`` reads: those of its scope and of both."""
    return frozenset(k for k, facts in RunConfig.facts().items() if facts.scope in ("both", kind))


def for_kind(config: RunConfig, kind: Kind) -> RunConfig:
    """``config`` as a run of ``kind`` reads it: for a centralized run, its federated-only keys at their defaults
    (``central --local-steps 8`` is the run of ``central`` alone); a federated config as it is. A config whose
    federated-only keys are at their defaults is returned equal, so existing run directories keep their names
    (``tests/cli/test_central.py::test_federated_only_keys_do_not_name_a_centralized_run``)."""
    defaults, read = RunConfig.defaults(), keys_read_by(kind)
    unread = {k: v for k, v in defaults.items() if k not in read}
    return config.replace(**unread) if unread else config
