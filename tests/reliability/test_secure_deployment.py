"""Secure deployment on loopback: TLS with generated certificates and SuperNode authentication."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.deployment import deployment, make_node_key, run_and_wait, tiny_overrides

pytestmark = pytest.mark.e2e


def test_tls_and_node_auth_refuse_unregistered_and_train_registered(fake_cifar_root: Path, tmp_path: Path):
    keys = tmp_path / "keys"
    registered, registered_pub = make_node_key(keys, "registered")
    stranger, _ = make_node_key(keys, "stranger")
    with deployment(tmp_path / "deploy", tls=True, node_auth=True) as deploy:
        added = deploy.flwr("supernode", "register", str(registered_pub), "deploy")
        assert added.returncode == 0, added.stdout + added.stderr
        deploy.start_supernode(0, 1, key=registered)
        stranger_log = deploy.start_supernode(0, 1, key=stranger)
        status = run_and_wait(deploy, tiny_overrides(fake_cifar_root, tmp_path / "runs", 1))
        assert status == "finished:completed", "the registered SuperNode trains over TLS"
        refused = stranger_log.read_text()
        logs = [p.read_text(errors="replace") for p in deploy.logs]
    # Flower refuses the unregistered key at activation; that SuperNode exits (code 305) without training
    assert "failed to activate supernode" in refused.lower() and "exit code: 305" in refused.lower(), refused[-2000:]
    assert "Receiving: train" not in refused
    # no secret (the SuperNodes' private keys, the server's TLS key) in any log or in the run directory
    secrets = [registered.read_text(), stranger.read_text(), (tmp_path / "deploy" / "tls" / "server.key").read_text()]
    bodies = ["".join(s.strip().splitlines()[1:-1])[:60] for s in secrets]
    run_files = [
        p.read_text(errors="replace")
        for p in (tmp_path / "runs").rglob("*")
        if p.is_file() and p.suffix in (".json", ".jsonl", ".csv")
    ]
    for body in bodies:
        assert all(body not in text.replace("\n", "") for text in logs + run_files)
