"""Forged and bad tokens: every one is answered 401 with a JSON error."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from service_support import (
    PASSWORDS,
    ROW,
    Deployment,
    Server,
    bearer,
    login_on_every_worker,
    run_cli,
)
from waiting import wait_until
from workers import every_worker, fresh, until_every_worker

from ml_service.tokens import key_id

ISS = "https://api.localhost"
AUD = "ml-api"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "paul-predictor",
        "role": "predictor",
        "jti": secrets.token_urlsafe(12),
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signing(deployment: Deployment) -> tuple[str, str]:
    pem = deployment.signing_key.read_text()
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return pem, key_id(key.public_key())  # type: ignore[arg-type]


def mint(deployment: Deployment, payload: dict[str, object], **header: object) -> str:
    pem, kid = signing(deployment)
    return jwt.encode(payload, pem, algorithm="ES256", headers={"kid": kid, **header})


def hs256(payload: dict[str, object], secret: bytes, kid: str) -> str:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def assert_401(client: httpx.Client, token: str) -> None:
    r = client.get("/model/info", headers=bearer(token))
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["code"] == "unauthorized"
    assert err["request_id"] == r.headers["x-request-id"]
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_a_correctly_minted_token_is_accepted(client: httpx.Client, deployment: Deployment) -> None:
    # The control: the forging helpers produce tokens the service accepts when nothing is wrong.
    r = client.get("/model/info", headers=bearer(mint(deployment, claims())))
    assert r.status_code == 200, r.text


def _forgeries(deployment: Deployment) -> dict[str, str]:
    pem, kid = signing(deployment)
    good = mint(deployment, claims())
    head, body, sig = good.split(".")
    public_pem = (deployment.jwt_dir / f"{kid}.pub").read_bytes()
    tampered_body = b64(json.dumps(claims(role="admin", sub="alice-admin")).encode())
    other = ec.generate_private_key(ec.SECP256R1())
    other_pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    now = int(time.time())
    return {
        "alg_none": b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        + f".{body}.",
        "stripped_signature": f"{head}.{body}.",
        "hs256_with_public_key": hs256(claims(), public_pem, kid),
        "hs256_with_wrong_key": hs256(claims(), secrets.token_bytes(32), kid),
        "tampered_payload": f"{head}.{tampered_body}.{sig}",
        "expired": mint(deployment, claims(iat=now - 4000, nbf=now - 4000, exp=now - 3600)),
        "nbf_in_future": mint(deployment, claims(nbf=now + 3600, exp=now + 7200)),
        "wrong_issuer": mint(deployment, claims(iss="https://evil.example")),
        "wrong_audience": mint(deployment, claims(aud="another-api")),
        "missing_exp": mint(deployment, claims(exp=None)),
        "missing_jti": mint(deployment, claims(jti=None)),
        "unknown_role": mint(deployment, claims(role="root")),
        "unknown_kid": jwt.encode(
            claims(), other_pem, algorithm="ES256", headers={"kid": key_id(other.public_key())}
        ),
        "kid_of_trusted_key_signed_by_other": jwt.encode(
            claims(), other_pem, algorithm="ES256", headers={"kid": kid}
        ),
        "no_kid": jwt.encode(claims(), pem, algorithm="ES256"),
        "malformed_base64": "eyJhbGciOi!!!.@@@.###",
        "not_a_jwt": "hello",
        "oversized": mint(deployment, claims(pad="x" * 6000)),
    }


CASES = [
    "alg_none",
    "stripped_signature",
    "hs256_with_public_key",
    "hs256_with_wrong_key",
    "tampered_payload",
    "expired",
    "nbf_in_future",
    "wrong_issuer",
    "wrong_audience",
    "missing_exp",
    "missing_jti",
    "unknown_role",
    "unknown_kid",
    "kid_of_trusted_key_signed_by_other",
    "no_kid",
    "malformed_base64",
    "not_a_jwt",
    "oversized",
]


@pytest.mark.parametrize("case", CASES)
def test_forged_or_bad_token_is_refused(
    client: httpx.Client, deployment: Deployment, case: str
) -> None:
    assert_401(client, _forgeries(deployment)[case])


def test_missing_and_non_bearer_credentials(client: httpx.Client, tokens: dict[str, str]) -> None:
    assert client.get("/model/info").status_code == 401
    r = client.get("/model/info", headers={"Authorization": f"Basic {tokens['predictor']}"})
    assert r.status_code == 401


def _refused_by_every_worker(server: Server, token: str) -> None:
    """Each worker (a fresh connection per request, until every worker has answered) refuses
    the token on a read and on a predict route."""

    def check(r: httpx.Response) -> None:
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")

    every_worker(lambda: fresh("GET", server.url + "/model/info", headers=bearer(token)),
                 server.workers, check)  # fmt: skip
    every_worker(
        lambda: fresh(
            "POST", server.url + "/predict", json={"features": ROW}, headers=bearer(token)
        ),
        server.workers,
        check,
    )


def _accepted_by_every_worker(server: Server, token: str, what: str) -> None:
    until_every_worker(
        lambda: fresh("GET", server.url + "/model/info", headers=bearer(token)),
        server.workers,
        lambda r: r.status_code == 200,
        what,
    )


def test_revoked_token_is_refused(server: Server) -> None:
    token = server.token("paul-predictor")
    _accepted_by_every_worker(server, token, "the token works before it is revoked")
    r = fresh("POST", server.url + "/token/revoke", headers=bearer(token))
    assert r.status_code == 200 and r.json() == {"revoked": True}
    # Immediately, on the worker that revoked it and on every other one.
    _refused_by_every_worker(server, token)


def test_token_of_deleted_user_is_refused(server: Server, deployment: Deployment) -> None:
    deployment.add_user("short-lived", "predictor", "short lived password 1")
    token = login_on_every_worker(server, "short-lived", "short lived password 1")
    result = run_cli("users", "--file", str(deployment.users_file), "remove", "short-lived")
    assert result.returncode == 0, result.stderr
    # Each worker notices the removal within its reload interval ...
    until_every_worker(
        lambda: fresh("GET", server.url + "/model/info", headers=bearer(token)),
        server.workers,
        lambda r: r.status_code == 401,
        "every worker refuses the deleted user's token",
    )
    # ... and from then on refuses it everywhere.
    _refused_by_every_worker(server, token)


def test_password_change_invalidates_older_tokens(server: Server, deployment: Deployment) -> None:
    deployment.add_user("changer", "viewer", "first password 12345")
    old = login_on_every_worker(server, "changer", "first password 12345")
    issued = int(jwt.decode(old, options={"verify_signature": False})["iat"])
    # iat has second resolution: a change within the same second could not tell them apart.
    wait_until(lambda: int(time.time()) > issued, "the clock passes the token's iat second")
    result = run_cli(
        "users",
        "--file",
        str(deployment.users_file),
        "passwd",
        "changer",
        "--password-stdin",
        stdin="second password 12345\n",
    )
    assert result.returncode == 0, result.stderr
    new = login_on_every_worker(server, "changer", "second password 12345")
    until_every_worker(
        lambda: fresh("GET", server.url + "/model/info", headers=bearer(old)),
        server.workers,
        lambda r: r.status_code == 401,
        "every worker refuses the token issued before the password change",
    )
    _refused_by_every_worker(server, old)
    _accepted_by_every_worker(server, new, "the new password's token works")


def _auth_failures(server: Server, deployment: Deployment) -> dict[str, float]:
    text = fresh("GET", server.url + "/metrics", headers=bearer(deployment.metrics_token)).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ml_api_auth_failures_total{"):
            labels, value = line.rsplit(" ", 1)
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(value)
    return counts


def test_auth_failure_reasons_are_counted(server: Server, deployment: Deployment) -> None:
    forged = _forgeries(deployment)
    cases = {
        "expired": "expired",
        "unknown_kid": "unknown_kid",
        "alg_none": "bad_algorithm",
        "wrong_audience": "bad_audience",
        "oversized": "oversized",
    }
    before = _auth_failures(server, deployment)
    for case in cases:
        r = fresh("GET", server.url + "/model/info", headers=bearer(forged[case]))
        assert r.status_code == 401, r.text
    after = _auth_failures(server, deployment)
    # Exactly one more per reason: nothing else sends requests while this test runs.
    increments = {reason: after.get(reason, 0.0) - before.get(reason, 0.0) for reason in after}
    assert {r: increments.get(r) for r in cases.values()} == dict.fromkeys(cases.values(), 1.0)
    assert sum(increments.values()) == len(cases), increments


def test_token_endpoint_issues_es256_with_kid_and_claims(
    client: httpx.Client, deployment: Deployment
) -> None:
    r = client.post(
        "/token", data={"username": "vera-viewer", "password": PASSWORDS["vera-viewer"]}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256"
    assert Path(deployment.jwt_dir / f"{header['kid']}.pub").exists()
    payload = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"exp", "iat", "nbf", "iss", "aud", "sub", "role", "jti"} <= payload.keys()
    assert payload["role"] == "viewer" and payload["sub"] == "vera-viewer"
