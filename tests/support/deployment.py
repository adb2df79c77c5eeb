"""A Flower Deployment Engine on loopback for tests: one SuperLink, SuperNodes, optional TLS and node auth.

Certificates and SuperNode keys are generated here (``cryptography``), never committed. Every process started is
killed (with its children) on exit.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedtalos.testing.processes import kill_process_trees
from tests.support.tiny import offline_tiny

APP = Path(__file__).resolve().parents[2]  # the repository: the Flower app

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it (PEM files)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtalos test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.crt", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def make_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """An EC (NIST P-384) key pair in OpenSSH format, as `flwr supernode register` expects."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / name, directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return private, public


@dataclass
class Deployment:
    """A running SuperLink with its `flwr` connection named ``deploy``."""

    root: Path
    port: int
    env: dict[str, str]
    tls: dict[str, Path] | None
    logs: list[Path] = field(default_factory=list)

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start_supernode(self, pid: int, num_partitions: int, key: Path | None = None) -> Path:
        """Start a SuperNode holding partition ``pid``; returns its log file."""
        log = self.root / f"supernode-{len(self.logs)}-partition-{pid}.log"
        command = [
            str(BIN / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={pid} num-partitions={num_partitions}",
        ]
        command += ["--root-certificates", str(self.tls["ca"])] if self.tls else ["--insecure"]
        if key is not None:
            command += ["--auth-supernode-private-key", str(key)]
        with open(log, "wb") as out:
            subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root
            )
        self.logs.append(log)
        return log


@contextmanager
def deployment(root: Path, tls: bool = False, node_auth: bool = False) -> Iterator[Deployment]:
    """Start a SuperLink on a free loopback port (TLS with generated certificates, SuperNode auth if asked)."""
    root.mkdir(parents=True, exist_ok=True)
    home = root / "flwr-home"
    home.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    certificates = make_tls(root / "tls") if tls else None
    connection = f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{port}"\n'
    connection += f'root-certificates = "{certificates["ca"]}"\n' if certificates else "insecure = true\n"
    (home / "config.toml").write_text(connection)
    command = [
        str(BIN / "flower-superlink"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(root / "state.db"),
        "--disable-runtime-dependency-installation",
    ]
    if certificates:
        command += [
            "--ssl-ca-certfile",
            str(certificates["ca"]),
            "--ssl-certfile",
            str(certificates["cert"]),
            "--ssl-keyfile",
            str(certificates["key"]),
        ]
    else:
        command.append("--insecure")
    if node_auth:
        command.append("--enable-supernode-auth")
    log = root / "superlink.log"
    with open(log, "wb") as out:
        subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    deploy = Deployment(root=root, port=port, env=env, tls=certificates, logs=[log])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"SuperLink did not start: {log.read_text()[-2000:]}")
        yield deploy
    finally:
        kill_process_trees(str(root / "state.db"))  # the SuperLink and the ServerApp processes it started
        kill_process_trees(f"127.0.0.1:{port}")  # the SuperNodes and their ClientApp processes


def tiny_overrides(data: Path, out: Path, clients: int) -> dict:
    values = {"num-clients": clients, "fraction-train": 1.0, "local-steps": 1, "batch-size": 16, "num-server-rounds": 1}
    return offline_tiny(data, out, {**values, "run-name": "deployed", "round-timeout": 300.0})


def run_and_wait(deploy, overrides: dict, timeout: float = 420) -> str:
    """`flwr run . deploy --stream`, then the run's final status from `flwr ls`."""
    config = deploy.root / "run.toml"
    config.write_text(tomli_w.dumps(overrides))
    started = deploy.flwr("run", str(APP), "deploy", "--run-config", str(config), "--stream", timeout=timeout)
    run_id = next(
        (line.split()[-1] for line in started.stdout.splitlines() if "Successfully started run" in line), None
    )
    assert run_id, started.stdout[-3000:] + started.stderr[-2000:]
    listed = json.loads(deploy.flwr("ls", "--run-id", run_id, "--format", "json").stdout)
    return listed["runs"][0]["status"]
