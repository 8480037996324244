"""Redis killed mid-test: no 500, 503 for /token and admin, per-process limits for
prediction, readiness reports it, and everything recovers when Redis is back."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import (
    LIMIT,
    LIMITED_PASSWORD,
    LIMITED_USERS,
    PASSWORDS,
    ROW,
    RedisServer,
    Server,
    bearer,
    limited_overrides,
    make_deployment,
)
from signed_models import SigningKeys


@pytest.fixture(scope="module")
def outage(
    tmp_path_factory: pytest.TempPathFactory, trained_models: Path, model_keys: SigningKeys
) -> Iterator[tuple[Server, RedisServer]]:
    redis = RedisServer(tmp_path_factory.mktemp("redis-outage"), "outage-redis-password-123")
    redis.start()
    d = make_deployment(
        tmp_path_factory.mktemp("outage"),
        redis,
        trained_models,
        model_keys,
        {"ML_SERVICE_USER_RATE_LIMITS": limited_overrides()},
    )
    server = Server(d, workers=2)
    server.start()
    yield server, redis
    server.stop()
    redis.stop()


def _wait_ready_status(client: httpx.Client, status: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        # several calls: each worker answers for itself
        bodies = [client.get("/health/ready").json() for _ in range(10)]
        if all(b["status"] == status for b in bodies):
            return bodies[0]
        body = bodies[-1]
        time.sleep(0.2)
    raise AssertionError(f"readiness never became {status!r}: {body}")


def test_redis_outage_and_recovery(outage: tuple[Server, RedisServer]) -> None:
    server, redis = outage
    admin = server.token("alice-admin")
    predictor = server.token("paul-predictor")
    limited = server.token(LIMITED_USERS[0], LIMITED_PASSWORD)
    doomed = server.token("vera-viewer")
    seen: Counter[int] = Counter()
    # No keep-alive: every request is a new connection, so both workers take their share.
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.url, timeout=10, limits=no_keepalive) as c:

        def call(method: str, path: str, **kw: object) -> httpx.Response:
            r = c.request(method, path, **kw)  # type: ignore[arg-type]
            seen[r.status_code] += 1
            assert r.status_code != 500, f"{method} {path}: {r.text}"
            assert r.headers["content-type"].startswith(("application/json", "text/plain"))
            return r

        assert call("POST", "/token/revoke", headers=bearer(doomed)).status_code == 200
        time.sleep(1.0)  # the workers mirror the denylist on their next probe
        assert (
            call("POST", "/predict", json={"features": ROW}, headers=bearer(predictor)).status_code
            == 200
        )

        redis.stop()  # SIGKILL

        # The first requests after the kill already get the documented answers.
        r = call("POST", "/predict", json={"features": ROW}, headers=bearer(predictor))
        assert r.status_code == 200
        body = _wait_ready_status(c, "degraded")
        assert body["redis"] == "down" and body["model_loaded"] is True
        assert call("GET", "/v2/health/ready").status_code == 200

        for _ in range(4):  # both workers
            r = call(
                "POST",
                "/token",
                data={"username": "paul-predictor", "password": PASSWORDS["paul-predictor"]},
            )
            assert r.status_code == 503 and "retry-after" in r.headers
            assert r.json()["error"]["code"] == "unavailable"
            assert call("GET", "/admin/models", headers=bearer(admin)).status_code == 503
            assert call("POST", "/admin/models/rollback", headers=bearer(admin)).status_code == 503
            assert call("POST", "/token/revoke", headers=bearer(predictor)).status_code == 503
            r = call(
                "POST",
                "/feedback",
                json={"request_id": "a" * 32, "true_class": 0},
                headers=bearer(predictor),
            )
            assert r.status_code == 503
            assert (
                call(
                    "POST", "/predict", json={"features": ROW}, headers=bearer(predictor)
                ).status_code
                == 200
            )
            assert call("GET", "/model/info", headers=bearer(predictor)).status_code == 200
            assert (
                call("GET", "/model/info", headers=bearer(doomed)).status_code == 401
            )  # still revoked
            infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
            assert (
                call(
                    "POST", "/v2/models/iris/infer", json=infer, headers=bearer(predictor)
                ).status_code
                == 200
            )

        # Per-process fallback limit: each of the 2 workers allows LIMIT.
        limited_statuses = Counter(
            call("POST", "/predict", json={"features": ROW}, headers=bearer(limited)).status_code
            for _ in range(40)
        )
        assert LIMIT <= limited_statuses[200] <= 2 * LIMIT, limited_statuses
        assert limited_statuses[429] == 40 - limited_statuses[200]

        metrics = call("GET", "/metrics", headers=bearer(server.deployment.metrics_token)).text
        assert "ml_api_redis_up 0.0" in metrics

        redis.start()  # same port and password
        _wait_ready_status(c, "ready")
        r = call(
            "POST",
            "/token",
            data={"username": "paul-predictor", "password": PASSWORDS["paul-predictor"]},
        )
        assert r.status_code == 200
        assert call("GET", "/admin/models", headers=bearer(admin)).status_code == 200
        fresh = r.json()["access_token"]
        assert (
            call("POST", "/predict", json={"features": ROW}, headers=bearer(fresh)).status_code
            == 200
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = call("GET", "/metrics", headers=bearer(server.deployment.metrics_token)).text
            if "ml_api_redis_up 1.0" in text:
                break
            time.sleep(0.2)
        assert "ml_api_redis_up 1.0" in text
    assert 500 not in seen
