"""Refusal to start on missing or weak configuration; the users and keys CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from service_support import REPO, Deployment, run_cli


def check(env: dict[str, str], command: str = "check-config") -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ML_SERVICE_")}
    result = subprocess.run(
        [sys.executable, "-m", "ml_service", command],
        env={**clean, **env},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


def test_valid_configuration_is_accepted(deployment: Deployment) -> None:
    code, out = check(deployment.env())
    assert code == 0, out


def test_nothing_configured(deployment: Deployment) -> None:
    code, out = check({})
    assert code == 2
    for var in (
        "ML_SERVICE_MODEL_DIR",
        "ML_SERVICE_USERS_FILE",
        "ML_SERVICE_JWT_SIGNING_KEY_FILE",
        "ML_SERVICE_REDIS_PASSWORD_FILE",
        "ML_SERVICE_AUDIT_LOG",
    ):
        assert f"{var}: is required" in out, out


def _weak(tmp_path: Path, value: str) -> str:
    path = tmp_path / "weak"
    path.write_text(value)
    path.chmod(0o600)  # weak, but not also readable by others (a refusal of its own)
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ML_SERVICE_REDIS_PASSWORD_FILE": "WEAK:short"}, "too weak"),
        ({"ML_SERVICE_REDIS_PASSWORD_FILE": "WEAK:aaaaaaaaaaaaaaaaaaaaaaaa"}, "too weak"),
        ({"ML_SERVICE_REDIS_PASSWORD_FILE": "/nonexistent/secret"}, "cannot read"),
        ({"ML_SERVICE_METRICS_TOKEN_FILE": "WEAK:only-twenty-chars-x"}, "too weak"),
        ({"ML_SERVICE_JWT_SIGNING_KEY_FILE": "WEAK:not a key"}, "not a readable"),
        ({"ML_SERVICE_JWT_SIGNING_KEY_FILE": "P384"}, "EC P-256"),
        ({"ML_SERVICE_USERS_FILE": "/nonexistent/users.json"}, "users add"),
        ({"ML_SERVICE_REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0"}, "not the URL"),
        ({"ML_SERVICE_ACCESS_TOKEN_TTL_SECONDS": "86400"}, "ACCESS_TOKEN_TTL_SECONDS"),
        ({"ML_SERVICE_FEATURE_RANGES": '[{"min": 0, "max": 1}]'}, "exactly 4"),
        ({"ML_SERVICE_RATE_LIMITS": '{"viewer": {"read": {"limit": 0}}}'}, "RATE_LIMITS"),
    ],
)
def test_bad_configuration_is_refused(
    deployment: Deployment, tmp_path: Path, change: dict, message: str
) -> None:
    env = deployment.env()
    for key, value in change.items():
        if value.startswith("WEAK:"):
            value = _weak(tmp_path, value[5:])
        elif value == "P384":
            key_path = tmp_path / "p384.key"
            key_path.write_bytes(
                ec.generate_private_key(ec.SECP384R1()).private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            key_path.chmod(0o600)
            value = str(key_path)
        env[key] = value
    code, out = check(env)
    assert code == 2, out
    assert message in out, out
    assert "Traceback" not in out


def test_serve_refuses_to_start(deployment: Deployment, tmp_path: Path) -> None:
    env = {**deployment.env(), "ML_SERVICE_REDIS_PASSWORD_FILE": _weak(tmp_path, "short")}
    code, out = check(env, "serve")
    assert code == 2
    assert "refusing to start" in out and "too weak" in out
    assert "Traceback" not in out


def test_users_cli(tmp_path: Path) -> None:
    users = tmp_path / "users.json"

    def cli(*args: str, stdin: str | None = None) -> tuple[int, str]:
        r = run_cli("users", "--file", str(users), *args, stdin=stdin)
        return r.returncode, r.stdout + r.stderr

    assert (
        cli("add", "ann", "--role", "viewer", "--password-stdin", stdin="a good long password\n")[0]
        == 0
    )
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    data = json.loads(users.read_text())
    assert data["users"]["ann"]["password_hash"].startswith("$argon2id$")
    assert "a good long password" not in users.read_text()
    code, out = cli("list")
    assert code == 0 and "ann\tviewer" in out
    # refusals
    assert (
        cli("add", "ann", "--role", "viewer", "--password-stdin", stdin="a good long password\n")[0]
        == 1
    )
    code, out = cli("add", "bob", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert code == 1 and "at least 12" in out
    code, out = cli(
        "add", "Bad Name", "--role", "viewer", "--password-stdin", stdin="a good long password\n"
    )
    assert code == 1 and "user names" in out
    assert (
        cli("add", "bob", "--role", "root", "--password-stdin", stdin="a good long password\n")[0]
        == 2
    )
    code, out = cli("add", "bob", "--role", "viewer")  # no terminal for a prompt
    assert code == 2 and "--password-stdin" in out
    # passwd and remove
    old_hash = data["users"]["ann"]["password_hash"]
    assert cli("passwd", "ann", "--password-stdin", stdin="another long password\n")[0] == 0
    assert json.loads(users.read_text())["users"]["ann"]["password_hash"] != old_hash
    assert cli("remove", "ann")[0] == 0
    assert cli("remove", "ann")[0] == 1
    assert cli("list")[1].strip() == ""


def test_keys_generate(tmp_path: Path) -> None:
    r = run_cli("keys", "generate", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    keys = list((tmp_path / "k").glob("*.key"))
    pubs = list((tmp_path / "k").glob("*.pub"))
    assert len(keys) == 1 and len(pubs) == 1 and keys[0].stem == pubs[0].stem
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600


def test_acl_user_name_in_redis_url_is_accepted(deployment: Deployment) -> None:
    env = {**deployment.env(), "ML_SERVICE_REDIS_URL": "redis://ml-api@127.0.0.1:6379/0"}
    code, out = check(env)
    assert code == 0, out
