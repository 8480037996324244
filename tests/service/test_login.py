"""POST /token: no user enumeration, throttling per (user name, client address) and per address
(the per-name delay and the known addresses: test_login_throttle.py)."""

from __future__ import annotations

import os
import statistics

import httpx
from service_support import PASSWORDS, Deployment, Server, login_on_every_worker, worker_cpu_seconds


def login(server: Server, user: str, password: str, ip: str) -> httpx.Response:
    # The test server trusts X-Forwarded-For from 127.0.0.1 (as it would trust Traefik).
    return httpx.post(
        server.url + "/token",
        data={"username": user, "password": password},
        headers={"X-Forwarded-For": ip},
        timeout=10,
    )


def _shape(r: httpx.Response) -> tuple[int, dict, list[str]]:
    body = r.json()
    body["error"].pop("request_id")
    return (
        r.status_code,
        body,
        sorted(k for k in r.headers if k not in ("date", "x-request-id", "content-length")),
    )


def test_unknown_user_and_wrong_password_look_the_same(server: Server) -> None:
    unknown, wrong = [], []
    cpu_unknown, cpu_wrong = [], []
    # CPU time the workers spend, not wall-clock time: a loaded machine stretches the latter.
    for i in range(4):
        before = worker_cpu_seconds(server)
        unknown.append(login(server, f"nobody-{i}", "whatever password", "198.51.100.1"))
        cpu_unknown.append(worker_cpu_seconds(server) - before)
        before = worker_cpu_seconds(server)
        wrong.append(login(server, "vera-viewer", f"wrong password {i}", "198.51.100.2"))
        cpu_wrong.append(worker_cpu_seconds(server) - before)
    shapes = {str(_shape(r)) for r in unknown + wrong}
    assert len(shapes) == 1, shapes
    assert unknown[0].status_code == 401
    assert unknown[0].json()["error"]["message"] == "invalid user name or password"
    # Both paths pay for one argon2 verification (a dummy hash for unknown users): tens of
    # milliseconds of CPU each, against well under one for a lookup that stops early.
    tick = 1 / os.sysconf("SC_CLK_TCK")
    ratio = max(statistics.median(cpu_unknown), tick) / max(statistics.median(cpu_wrong), tick)
    assert 0.5 < ratio < 2.0, (cpu_unknown, cpu_wrong)
    # clear the failure counter of the real user
    assert login(server, "vera-viewer", PASSWORDS["vera-viewer"], "198.51.100.2").status_code == 200


def test_throttled_per_user_name_from_one_address(server: Server, deployment: Deployment) -> None:
    deployment.add_user("victim", "viewer", "the victims password")
    login_on_every_worker(server, "victim", "the victims password")
    for i in range(5):  # ML_SERVICE_LOGIN_MAX_FAILURES_PER_USER: 5 per name from one address
        assert login(server, "victim", f"guess {i}", "192.0.2.10").status_code == 401
    r = login(server, "victim", "the victims password", "192.0.2.10")  # even the right one
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 800
    assert r.json()["error"]["code"] == "rate_limited"
    # Not locked out everywhere: the name from another address, and other users, log in.
    assert login(server, "victim", "the victims password", "192.0.2.99").status_code == 200
    assert login(server, "vera-viewer", PASSWORDS["vera-viewer"], "192.0.2.10").status_code == 200
    # Guesses from other addresses are not refused either: 5 + 4 failures of the name from
    # addresses not known to be good for it stay under the name's delay (after 10).
    for i in range(4):
        assert login(server, "victim", f"spread {i}", f"192.0.2.{20 + i}").status_code == 401
    assert login(server, "victim", "the victims password", "192.0.2.99").status_code == 200


def test_throttled_per_client_ip(server: Server) -> None:
    ip = "203.0.113.77"
    for i in range(20):  # the test deployment sets 20 failures per IP
        assert login(server, f"spray-{i}", "password123456", ip).status_code == 401
    assert login(server, "paul-predictor", PASSWORDS["paul-predictor"], ip).status_code == 429
    assert (
        login(server, "paul-predictor", PASSWORDS["paul-predictor"], "203.0.113.78").status_code
        == 200
    )


def test_token_form_validation(server: Server) -> None:
    r = httpx.post(server.url + "/token", data={"username": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = httpx.post(server.url + "/token", json={"username": "x", "password": "y"})
    assert r.status_code == 422
