"""Real processes for the service tests and the benchmark: redis-server, the API under uvicorn."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from workers import EXPOSE_WORKER_ENV, every_worker, fresh, until_every_worker

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {
    "alice-admin": "correct horse battery admin",
    "paul-predictor": "correct horse battery predictor",
    "vera-viewer": "correct horse battery viewer",
}
ROLES = {"alice-admin": "admin", "paul-predictor": "predictor", "vera-viewer": "viewer"}
# Users with tiny per-user limits (rate-limiter tests).
LIMITED_USERS = ("limited-a", "limited-b")
LIMITED_PASSWORD = "limited user password 123"
LIMIT = 5
ROW = [5.1, 3.5, 1.4, 0.2]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class RedisServer:
    directory: Path
    password: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # Persistence lines of redis.conf; the default keeps nothing (tests that need it say so).
    persistence: str = 'save ""\nappendonly no\n'

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\nrequirepass {self.password}\n"
            f"{self.persistence}protected-mode yes\n"
        )
        self.proc = subprocess.Popen(
            ["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), "--no-auth-warning", "-a", self.password, *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout


def write_secret(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def python() -> str:
    return sys.executable


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python(), "-m", "ml_service", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=60,
    )


@dataclass
class Deployment:
    """Files of one service instance: keys, users, model, audit log, secrets."""

    root: Path
    redis: RedisServer
    model_dir: Path
    trusted_keys_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.jwt_dir = self.root / "jwt"
        if not self.jwt_dir.exists():
            result = run_cli("keys", "generate", str(self.jwt_dir))
            assert result.returncode == 0, result.stderr
        self.signing_key = next(self.jwt_dir.glob("*.key"))
        self.users_file = self.root / "users.json"
        self.audit_log = self.root / "log" / "audit.log"
        self.audit_log.parent.mkdir(exist_ok=True)
        self.redis_password_file = write_secret(self.root / "redis-password", self.redis.password)
        self.metrics_token = secrets.token_urlsafe(32)
        self.metrics_token_file = write_secret(self.root / "metrics-token", self.metrics_token)

    def env(self) -> dict[str, str]:
        env = {
            "ML_SERVICE_MODEL_DIR": str(self.model_dir),
            "ML_SERVICE_TRUSTED_KEYS_DIR": str(self.trusted_keys_dir),
            "ML_SERVICE_USERS_FILE": str(self.users_file),
            "ML_SERVICE_JWT_SIGNING_KEY_FILE": str(self.signing_key),
            "ML_SERVICE_JWT_VERIFY_KEYS_DIR": str(self.jwt_dir),
            "ML_SERVICE_REDIS_URL": f"redis://127.0.0.1:{self.redis.port}/0",
            "ML_SERVICE_REDIS_PASSWORD_FILE": str(self.redis_password_file),
            "ML_SERVICE_METRICS_TOKEN_FILE": str(self.metrics_token_file),
            "ML_SERVICE_AUDIT_LOG": str(self.audit_log),
            "ML_SERVICE_MODEL_REFRESH_SECONDS": "1",
            "ML_SERVICE_REDIS_PROBE_SECONDS": "0.5",
        }
        env.update(self.extra_env)
        return env

    def add_user(self, name: str, role: str, password: str) -> None:
        result = run_cli(
            "users",
            "--file",
            str(self.users_file),
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            stdin=password + "\n",
        )
        assert result.returncode == 0, result.stderr


@dataclass
class Server:
    deployment: Deployment
    workers: int = 1
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    worker_ids: set[str] = field(default_factory=set)
    # The tree whose ml_service runs (``python -m`` imports from its working directory): the
    # serving benchmark's --against runs an earlier revision's next to this one.
    source: Path = REPO

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        env = {
            **os.environ,
            **self.deployment.env(),
            "ML_SERVICE_PORT": str(self.port),
            "ML_SERVICE_WORKERS": str(self.workers),
            **EXPOSE_WORKER_ENV,
            "PROMETHEUS_MULTIPROC_DIR": str(self.deployment.root / f"metrics-{self.port}"),
        }
        self.log_path = self.deployment.root / f"server-{self.port}.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [python(), "-m", "ml_service", "serve"],
            env=env,
            cwd=self.source,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}"
                )
            try:
                r = httpx.get(self.url + "/health/ready", timeout=1)
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if r.status_code == 200:
                break
            time.sleep(0.1)
        else:
            raise TimeoutError(f"server not ready: {self.log_path.read_text()[-3000:]}")
        # uvicorn starts its workers in parallel: ready only when each one has answered.
        self.worker_ids = set(
            every_worker(
                lambda: fresh("GET", self.url + "/health/ready", timeout=5),
                self.workers,
                lambda r: None,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def token(self, user: str, password: str | None = None) -> str:
        r = httpx.post(
            self.url + "/token",
            data={"username": user, "password": password or PASSWORDS[user]},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])


def login_on_every_worker(server: Server, user: str, password: str) -> str:
    """Wait until every worker has re-read the users file (at most once a second) and lets
    ``user`` log in; return a token."""
    tokens: list[str] = []

    def login() -> httpx.Response:
        r = fresh("POST", server.url + "/token", data={"username": user, "password": password})
        if r.status_code == 200:
            tokens.append(str(r.json()["access_token"]))
        return r

    until_every_worker(login, server.workers, lambda r: r.status_code == 200, f"{user} logs in")
    return tokens[-1]


def worker_cpu_seconds(server: Server) -> float:
    """CPU time (user + system, all threads) the server's workers have used so far."""
    total = 0
    for pid in server.worker_ids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def copy_models(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def limited_overrides() -> str:
    limit = {"limit": LIMIT, "period_seconds": 3600}
    return json.dumps({u: {"predict": limit} for u in LIMITED_USERS})


_users_template: Path | None = None


def _users_file_template(directory: Path) -> Path:
    """All test users, hashed once per session (argon2 is deliberately slow)."""
    global _users_template
    if _users_template is None or not _users_template.exists():
        path = directory / "users-template.json"
        # A setup cut short (a timeout) leaves some users behind: start from scratch.
        path.unlink(missing_ok=True)
        users = [(u, ROLES[u], p) for u, p in PASSWORDS.items()]
        users += [(u, "predictor", LIMITED_PASSWORD) for u in LIMITED_USERS]
        for name, role, password in users:
            r = run_cli(
                "users",
                "--file",
                str(path),
                "add",
                name,
                "--role",
                role,
                "--password-stdin",
                stdin=password + "\n",
            )
            assert r.returncode == 0, r.stderr
        _users_template = path
    return _users_template


def make_deployment(
    root: Path, redis: RedisServer, trained: Path, keys: Any, extra: dict[str, str] | None = None
) -> Deployment:
    """A deployment with its own copy of the models and the users admin, predictor, viewer
    and the rate-limited predictors."""
    d = Deployment(
        root, redis, copy_models(trained, root / "models"), keys.trusted_dir, dict(extra or {})
    )
    shutil.copy(_users_file_template(root.parent), d.users_file)
    d.users_file.chmod(0o600)
    return d


# The type of conftest's new_deployment fixture: (name, extra environment) -> Deployment.
NewDeployment = Callable[[str, dict[str, str]], Deployment]


@contextmanager
def running(deployment: Deployment, workers: int = 2, timeout: float = 90.0) -> Iterator[Server]:
    """The API of ``deployment`` under uvicorn for the ``with`` block."""
    server = Server(deployment, workers=workers)
    server.start(timeout=timeout)
    try:
        yield server
    finally:
        server.stop()
