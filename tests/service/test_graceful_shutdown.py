"""SIGTERM under load, sent to every process of the service at once (as systemd does with
KillMode=control-group): requests in flight complete, no accepted request is dropped, the
service exits cleanly, and every request it answered has its audit record, once, in a chain
that still verifies (the records of concurrent requests are written in batches: none of a
batch may be lost or cut when the workers stop).

Known and tolerated here (counted, not failed): connections still waiting in the listen
backlog when uvicorn closes its listener are reset by the kernel before any worker reads
them (seen as "Connection reset by peer" on the first read). Only a listening socket that
outlives the service (systemd socket activation) avoids that; a worker that drops a request
it accepted shows up instead as a disconnect without a response, which fails the test."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from service_support import (
    PASSWORDS,
    ROW,
    RedisServer,
    Server,
    bearer,
    limited_overrides,
    make_deployment,
    run_cli,
)
from signed_models import SigningKeys
from waiting import wait_until

CLIENTS = 12
# Keep-alive clients on top: many predictions in flight at once, so audit records are written
# in batches when the signal comes. A keep-alive connection that the server closes at shutdown
# may see its next request refused without an answer (HTTP's keep-alive race; clients retry):
# such a request was never answered, so only answered ones are counted for it.
KEEPALIVE_CLIENTS = 16


def test_sigterm_under_load_completes_in_flight_requests(
    tmp_path: Path, redis_server: RedisServer, trained_models: Path, model_keys: SigningKeys
) -> None:
    d = make_deployment(
        tmp_path / "d",
        redis_server,
        trained_models,
        model_keys,
        {"ML_SERVICE_KEY_PREFIX": "term", "ML_SERVICE_USER_RATE_LIMITS": limited_overrides()},
    )
    server = Server(d, workers=2)
    server.start()
    try:
        headers = {**bearer(server.token("paul-predictor")), "Connection": "close"}
        credentials = {"username": "paul-predictor", "password": PASSWORDS["paul-predictor"]}
        served: list[tuple[float, float, str]] = []  # (sent, answered, request id)
        problems: list[str] = []
        backlog_resets: list[str] = []
        refused = threading.Event()
        lock = threading.Lock()
        in_flight = [0]  # requests sent and not yet answered (or failed)

        def client(i: int) -> None:
            # A new connection per request: after the signal the listener closes, and a new
            # connection is then refused (the expected end), never reset mid-request. A third
            # of the clients log in: argon2 makes each login a request that is long in flight.
            # Fewer than the per-name limit of attempts at once: the throttle reserves an
            # attempt before hashing, so more concurrent logins of one name would get 429.
            login = i % 3 == 0
            while not refused.is_set():
                sent = time.monotonic()
                with lock:
                    in_flight[0] += 1
                try:
                    if login:
                        r = httpx.post(server.url + "/token", data=credentials, timeout=30)
                    else:
                        r = httpx.post(server.url + "/predict", json={"features": ROW},
                                       headers=headers, timeout=30)  # fmt: skip
                except httpx.ConnectError:
                    refused.set()
                    return
                except httpx.ReadError as exc:
                    if "reset by peer" not in str(exc):
                        problems.append(f"{type(exc).__name__}: {exc}")
                    backlog_resets.append(str(exc))
                    refused.set()
                    return
                except httpx.HTTPError as exc:
                    problems.append(f"{type(exc).__name__}: {exc}")
                    return
                finally:
                    with lock:
                        in_flight[0] -= 1
                if r.status_code != 200:
                    problems.append(f"{r.status_code} {r.text[:200]}")
                    return
                with lock:
                    served.append((sent, time.monotonic(), r.headers["x-request-id"]))

        def keepalive_client() -> None:
            with httpx.Client(base_url=server.url, headers=headers_keepalive, timeout=30) as c:
                while not refused.is_set():
                    sent = time.monotonic()
                    try:
                        r = c.post("/predict", json={"features": ROW})
                    except httpx.HTTPError:
                        return  # the connection was closed by the shutdown: see above
                    if r.status_code != 200:
                        problems.append(f"keep-alive {r.status_code} {r.text[:200]}")
                        return
                    with lock:
                        served.append((sent, time.monotonic(), r.headers["x-request-id"]))

        headers_keepalive = {k: v for k, v in headers.items() if k != "Connection"}
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        threads += [threading.Thread(target=keepalive_client) for _ in range(KEEPALIVE_CLIENTS)]
        for t in threads:
            t.start()
        wait_until(lambda: len(served) >= 30 or problems, "30 requests served", timeout=120)
        # Signal while several requests are in flight (on a loaded machine the client threads
        # can all be between requests at one instant, and the test would then show nothing).
        wait_until(lambda: in_flight[0] >= 3 or problems, "3 requests in flight", timeout=60)
        assert server.proc is not None
        signalled = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert server.proc.wait(60) == 0, server.log_path.read_text()[-3000:]  # type: ignore[union-attr]
    finally:
        server.stop()
    assert problems == [], problems[:5]
    assert refused.is_set(), "no client saw the listener close"
    across = [rid for sent, answered, rid in served if sent < signalled < answered]
    assert across, "no request was in flight when the signal came: the test showed nothing"
    records = [json.loads(x) for x in d.audit_log.read_text().splitlines()]
    audited = Counter(x["request_id"] for x in records if x["action"] in ("predict", "auth.login"))
    missing = [rid for _, _, rid in served if rid not in audited]
    assert missing == [], f"{len(missing)} of {len(served)} served requests have no audit record"
    twice = [rid for rid, n in audited.items() if n > 1]
    assert twice == [], f"{len(twice)} requests have more than one audit record"
    verified = run_cli("audit", "verify", str(d.audit_log))
    assert verified.returncode == 0, verified.stdout + verified.stderr


pytestmark = pytest.mark.timeout(300)


def test_a_request_sent_just_after_the_signal_on_an_accepted_connection_is_answered(
    tmp_path: Path, redis_server: RedisServer, trained_models: Path, model_keys: SigningKeys
) -> None:
    """The client connected before the signal and its request arrives after it: the server
    accepted the connection, so it answers (with Connection: close) instead of dropping it."""
    d = make_deployment(
        tmp_path / "d", redis_server, trained_models, model_keys, {"ML_SERVICE_KEY_PREFIX": "late"}
    )
    server = Server(d, workers=2)
    server.start()
    try:
        token = server.token("paul-predictor")
        body = json.dumps({"features": ROW}).encode()
        request = (
            f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        # Several connections, so that each worker holds some of them (checked below).
        conns = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(6)]

        # Accepted: each of them is a file descriptor of a worker (not queued in the kernel).
        def accepted() -> list[int | None] | None:
            holders = _holders(server.port)
            return holders if len(holders) == len(conns) and None not in holders else None

        holders = wait_until(accepted, "the workers accepted every connection")
        assert server.proc is not None and server.log_path is not None
        os.killpg(server.proc.pid, signal.SIGTERM)
        # A worker logs this after it has shut down its connections, if it holds any.
        wait_until(
            lambda: (
                server.log_path.read_text().count("Waiting for connections to close")  # type: ignore[union-attr]
                == len(set(holders))
            ),
            "every worker holding a connection has shut it down",
        )
        answers = []
        for c in conns:
            c.settimeout(30)
            c.sendall(request)
            answers.append(b"".join(iter(lambda c=c: c.recv(65536), b"")))
            c.close()
        assert server.proc.wait(60) == 0, server.log_path.read_text()[-3000:]  # type: ignore[union-attr]
    finally:
        server.stop()
    heads = [a.partition(b"\r\n\r\n")[0].decode().lower() for a in answers]
    assert all(h.startswith("http/1.1 200") and "connection: close" in h for h in heads), heads
    ids = {line.split(": ", 1)[1] for h in heads for line in h.split("\r\n")
           if line.startswith("x-request-id: ")}  # fmt: skip
    audited = {json.loads(x)["request_id"] for x in d.audit_log.read_text().splitlines()}
    assert len(ids) == len(conns) and ids <= audited, (ids, audited)


def _holders(port: int) -> list[int | None]:
    """For each connection the server holds on the port, the pid of the process whose file it
    is; None while the kernel still queues it for accept."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"sport = :{port}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pids = [re.search(r"pid=(\d+)", line) for line in out.stdout.splitlines()]
    return [int(m.group(1)) if m else None for m in pids]
