"""Real processes for the smoke-test client tests and the /predict benchmark:
redis-server, `python -m ml_service serve` (HTTP) and the same app under uvicorn with TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from signed_models import make_keys, make_signed_model

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "smoke-test", "smoke test password 0123456789"
ADMIN, ADMIN_PASSWORD = "smoke-admin", "smoke admin password 0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode}: {log.read_text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing on port {port}: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ml_service_cli(*args: str, stdin: str | None = None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ml_service", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def write_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for api.localhost, signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smoke-test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("api.localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


class Stack:
    def __init__(
        self,
        root: Path,
        *,
        tls: bool = True,
        n_estimators: int = 10,
        n_versions: int = 1,
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.n_versions = n_versions
        self.workers = workers
        self.root = root
        self.tls = tls
        self.n_estimators = n_estimators
        self.extra_env = dict(extra_env or {})
        self.procs: list[subprocess.Popen] = []
        self.redis_port = free_port()
        self.redis_password = secrets.token_urlsafe(24)

    def popen(self, cmd: list[str], env: dict[str, str], name: str, port: int) -> None:
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=REPO,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        wait_port(port, proc, log)

    def start(self) -> None:
        redis_dir = self.root / "redis"
        redis_dir.mkdir()
        conf = redis_dir / "redis.conf"
        conf.write_text(
            f"port {self.redis_port}\nbind 127.0.0.1\ndir {redis_dir}\n"
            f'requirepass {self.redis_password}\nsave ""\nappendonly no\n'
        )
        self.popen(["redis-server", str(conf)], dict(os.environ), "redis", self.redis_port)
        keys = make_keys(self.root / "model-keys")
        self.versions = [
            make_signed_model(
                self.root / "models", keys, n_estimators=self.n_estimators, random_state=i
            ).name
            for i in range(self.n_versions)
        ]
        ml_service_cli("keys", "generate", str(self.root / "jwt"))
        users = self.root / "users.json"
        ml_service_cli(
            "users", "--file", str(users), "add", USER, "--role", "predictor",
            "--password-stdin", stdin=PASSWORD + "\n",
        )  # fmt: skip
        ml_service_cli(
            "users", "--file", str(users), "add", ADMIN, "--role", "admin",
            "--password-stdin", stdin=ADMIN_PASSWORD + "\n",
        )  # fmt: skip
        secret = self.root / "redis-password"
        secret.write_text(self.redis_password + "\n")
        secret.chmod(0o600)
        self.env = {
            **os.environ,
            "ML_SERVICE_MODEL_DIR": str(self.root / "models"),
            "ML_SERVICE_TRUSTED_KEYS_DIR": str(keys.trusted_dir),
            "ML_SERVICE_USERS_FILE": str(users),
            "ML_SERVICE_JWT_SIGNING_KEY_FILE": str(next((self.root / "jwt").glob("*.key"))),
            "ML_SERVICE_JWT_VERIFY_KEYS_DIR": str(self.root / "jwt"),
            "ML_SERVICE_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "ML_SERVICE_REDIS_PASSWORD_FILE": str(secret),
            "ML_SERVICE_AUDIT_LOG": str(self.root / "audit.log"),
            **self.extra_env,
        }
        self.http_port = free_port()
        self.popen(
            [sys.executable, "-m", "ml_service", "serve"],
            {
                **self.env,
                "ML_SERVICE_PORT": str(self.http_port),
                "ML_SERVICE_WORKERS": str(self.workers),
                "PROMETHEUS_MULTIPROC_DIR": str(self.root / "prom-http"),
            },
            "serve",
            self.http_port,
        )
        if not self.tls:
            return
        self.ca_file, cert, key = write_tls(self.root)
        self.https_port = free_port()
        (self.root / "prom-https").mkdir()
        self.popen(
            [
                sys.executable, "-m", "uvicorn", "--factory", "ml_service.app:create_app",
                "--host", "127.0.0.1", "--port", str(self.https_port),
                "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            ],
            {**self.env, "PROMETHEUS_MULTIPROC_DIR": str(self.root / "prom-https")},
            "uvicorn-tls",
            self.https_port,
        )  # fmt: skip

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
