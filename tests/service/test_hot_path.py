"""POST /predict answers the same through its hot path (``application/json`` bodies that parse
and validate; ml_service/hot_path.py) as through FastAPI's stack (any other content type that
FastAPI reads as JSON): same status, headers that matter, and body but for the request id."""

from __future__ import annotations

import json

import httpx
import pytest
from service_support import LIMIT, LIMITED_PASSWORD, LIMITED_USERS, ROW, RedisServer, Server, bearer

HOT = "application/json"
FRAMEWORK = "application/json; charset=utf-8"  # JSON for FastAPI, not taken by the hot path
HEADERS = ("content-type", "www-authenticate", "retry-after", "cache-control",
           "x-content-type-options", "ratelimit-limit", "ratelimit-policy")  # fmt: skip


def _post(
    client: httpx.Client, content_type: str, body: object, token: str | None
) -> httpx.Response:
    headers = {"Content-Type": content_type, **(bearer(token) if token else {})}
    return client.post("/predict", content=json.dumps(body), headers=headers)


def _comparable(r: httpx.Response) -> tuple[int, dict[str, str | None], object]:
    body = r.json()
    inner = body.get("error", body)
    assert inner.pop("request_id") == r.headers["x-request-id"]
    return r.status_code, {h: r.headers.get(h) for h in HEADERS}, body


@pytest.mark.parametrize(
    "who, body",
    [
        ("predictor", {"features": ROW}),
        ("predictor", {"instances": [ROW, [6.1, 2.8, 4.7, 1.2]]}),
        ("admin", {"features": ROW}),
        ("viewer", {"features": ROW}),  # 403: no predict permission
        ("nobody", {"features": ROW}),  # 401: no token
        ("forged", {"features": ROW}),  # 401: not a token
    ],
)
def test_same_answer_on_both_paths(
    client: httpx.Client, tokens: dict[str, str], who: str, body: object
) -> None:
    token = {"nobody": None, "forged": "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"}.get(who, tokens.get(who))
    hot, framework = (_comparable(_post(client, ct, body, token)) for ct in (HOT, FRAMEWORK))
    assert hot == framework


def test_one_rate_limit_hit_per_request_on_either_path(
    server: Server, redis_server: RedisServer
) -> None:
    """Alternating paths, a limited user (5 an hour) passes exactly 5 times, counting down."""
    user = LIMITED_USERS[1]
    redis_server.cli("DEL", f"ml:rl:{user}:predict")
    token = server.token(user, LIMITED_PASSWORD)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        answers = [_post(c, (HOT, FRAMEWORK)[i % 2], {"features": ROW}, token) for i in range(8)]
    assert [r.status_code for r in answers] == [200] * LIMIT + [429] * (8 - LIMIT)
    remaining = [int(r.headers["ratelimit-remaining"]) for r in answers[:LIMIT]]
    assert remaining == list(range(LIMIT - 1, -1, -1))
